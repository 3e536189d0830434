"""`cdcf` commands of the models: training, the registry, validation, batch and online scoring, and the model API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import typer

from cdcf.errors import PipelineError
from cdcf.settings import Settings
from ops.cli.app import app, invoke, utc

MODELS = ("fraud_detection_v1", "recommendation_v1", "customer_segmentation_v1", "txn_next_7d")
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command("train-model")
def train_model(
    model: str = typer.Option("fraud_detection_v1", help=f"One of {', '.join(MODELS)}."),
    rows: int = typer.Option(
        20_000,
        help="Point-in-time rows to train on (fraud: transactions; recommendation: purchases; segmentation: users).",
    ),
    epochs: int = typer.Option(20, help="Passes over the training rows (txn_next_7d)."),
    as_of: datetime | None = typer.Option(
        None, help="Segmentation: the users' features as of this time (UTC; default now)."
    ),
    if_missing: bool = typer.Option(False, "--if-missing", help="Only when the registry has no version of it yet."),
) -> None:
    """Train a model on point-in-time sets from the offline store and register it (CUDA when present)."""
    if model not in MODELS:
        raise typer.BadParameter(f"unknown model {model!r}; one of {', '.join(MODELS)}")

    def run(settings: Settings) -> str:
        from inference import registry

        if if_missing and registry.versions(settings, model):
            return f"kept {registry.card(settings, model).line()}"
        if model == "fraud_detection_v1":
            from inference import fraud

            return fraud.train(settings, rows=rows).card.line()
        if model == "recommendation_v1":
            from inference import recommend

            return recommend.train(settings, rows=rows).card.line()
        if model == "customer_segmentation_v1":
            from inference import segments

            return segments.train(settings, utc(as_of), sample=rows).card.line()
        from inference.train import train_from_store

        trained, path = train_from_store(settings, rows=rows, epochs=epochs)
        return f"saved {path}: {trained.metrics}"

    typer.echo(invoke(run))


@models_app.command("list")
def models_list() -> None:
    """Every registered version of every model: features, training range and rows, metrics, code revision."""
    from inference import registry

    cards = invoke(registry.cards)
    for card in cards:
        typer.echo(card.line())
    if not cards:
        typer.echo("no models registered: `cdcf train-model --model fraud_detection_v1` trains one")


@app.command()
def validate(
    sample: int = typer.Option(1000, help="Entities per feature view."),
    min_match: float = typer.Option(1.0, help="Exit non-zero below this match fraction."),
) -> None:
    """Online/offline consistency: a sample of online values, each against the offline row at its as-of time."""
    import json

    from inference.consistency import validate as check

    report = invoke(lambda settings: check(settings, sample))
    for mismatch in report.mismatches[:20]:
        typer.echo(json.dumps(mismatch))
    typer.echo(
        f"{report.matched} of {report.compared} online values equal their offline rows: match "
        f"{report.match if report.match is not None else '-'}"
    )
    if report.match is not None and report.match < min_match:
        raise typer.Exit(1)


@app.command("batch-score")
def batch_score(
    model: str = typer.Option("customer_segmentation_v1", help="The model (customer_segmentation_v1)."),
    as_of: datetime | None = typer.Option(None, help="Score every user as of this time (UTC; default now)."),
    version: int | None = typer.Option(None, help="Pin a model version (default: the newest)."),
) -> None:
    """Score every user as of a time through the offline store's point-in-time path into the offline table
    user_segments and the online view user_segment_features."""
    if model != "customer_segmentation_v1":
        raise typer.BadParameter("batch scoring serves customer_segmentation_v1")
    from inference import segments

    done = invoke(lambda s: segments.batch_score(s, utc(as_of) or datetime.now(UTC), version))
    typer.echo(
        f"{done['users']} users scored by {model} v{done['version']} as of {done['as_of']} in "
        f"{done['seconds']:.1f} s ({done['users_per_s']}/s); segment sizes {done['segment_sizes']}"
    )


def _answer(ask: Callable[[Settings], dict], items: str = "results") -> dict:
    """Run a model API call as the CLI: its results as JSON lines, a bad request as a clear error."""
    import json

    from inference.registry import ModelNotFound
    from inference.service import ScoringError

    def run(settings: Settings) -> dict:
        try:
            return ask(settings)
        except (ScoringError, ModelNotFound) as exc:
            raise PipelineError(str(exc)) from exc

    answer = invoke(run)
    for result in answer.get(items, [answer]):
        typer.echo(json.dumps(result))
    return answer


@app.command()
def score(
    ids: list[int] = typer.Argument(..., help="Entity ids to score."),
    model: Path | None = typer.Option(None, help="Model file (default: the stack's trained model)."),
) -> None:
    """txn_next_7d: fetch fresh features from Redis and score them; one JSON line per entity."""
    from inference.service import ScoringService

    answer = _answer(lambda s: ScoringService.from_settings(s, model).score(list(ids)))
    typer.echo(f"{len(ids)} scored on {answer['device']} in {answer['elapsed_ms']} ms", err=True)


@app.command("score-fraud")
def score_fraud(
    transactions: list[str] = typer.Argument(..., help="USER_ID:AMOUNT[:MERCHANT], one per transaction."),
    version: int | None = typer.Option(None, help="Pin a model version (default: the newest)."),
) -> None:
    """fraud_detection_v1 on transactions, with their users' fresh features; one JSON line per transaction."""
    from inference.service import FraudScorer

    parsed = []
    for text in transactions:
        user, _, rest = text.partition(":")
        amount, _, merchant = rest.partition(":")
        try:
            parsed.append({"user_id": int(user), "amount": float(amount), "merchant": merchant or None})
        except ValueError as exc:
            raise typer.BadParameter(f"{text!r}: write USER_ID:AMOUNT[:MERCHANT], e.g. 17:42.50:acme") from exc
    answer = _answer(lambda s: FraudScorer.from_settings(s, version).score(parsed))
    typer.echo(f"{len(parsed)} scored by {answer['model']} v{answer['version']} in {answer['elapsed_ms']} ms", err=True)


@app.command()
def recommend(
    user_id: int = typer.Argument(..., help="The user."),
    k: int = typer.Option(10, help="How many."),
    version: int | None = typer.Option(None, help="Pin a model version (default: the newest)."),
) -> None:
    """recommendation_v1: the top k of the candidate products for a user; one JSON line per product."""
    from inference.service import Recommender

    answer = _answer(lambda s: Recommender.from_settings(s, version).recommend(user_id, k), "items")
    typer.echo(
        f"{len(answer['items'])} of {answer.get('candidates', 0)} candidates by {answer['model']} "
        f"v{answer['version']}" + (f": {answer['reason']}" if "reason" in answer else ""),
        err=True,
    )


@app.command()
def segment(user_ids: list[int] = typer.Argument(..., help="Users.")) -> None:
    """customer_segmentation_v1: each user's segment as the last batch scoring wrote it; one JSON line each."""
    from inference.service import SegmentReader

    def ask(settings: Settings) -> dict:
        reader = SegmentReader.from_settings(settings)
        return {"results": [reader.segment(u) for u in user_ids]}

    _answer(ask)


@app.command("serve-scores")
def serve_scores(
    port: int = typer.Option(6570, help="HTTP port."),
    bind: str = typer.Option("127.0.0.1", help="Address to listen on."),
    cache_ttl: float = typer.Option(0.0, help="Seconds to cache an entity's features (0: off)."),
) -> None:
    """Serve the model API over HTTP (with the bearer token CDCF_SCORING_TOKEN): POST /score/fraud_detection_v1,
    POST /recommend, GET /segment/{user_id}, POST /score and GET /health, each model at its newest version."""
    import uvicorn

    from inference.model import frozen_heap, serving_threads
    from inference.service import create_app, loaded_models

    def run(settings: Settings) -> None:
        serving_threads()
        models = loaded_models(settings, cache_ttl)
        if not models:
            raise PipelineError("no model is trained: `cdcf train-model --model fraud_detection_v1` trains one")
        from cdcf import exporter

        exporter.announce(settings, "model-api", f"{'127.0.0.1' if bind == '0.0.0.0' else bind}:{port}")  # its /metrics
        with frozen_heap():
            uvicorn.run(
                create_app(settings.scoring_token.get_secret_value(), **models),
                host=bind,
                port=port,
                log_level="warning",
            )

    invoke(run)
