"""The `cdcf` command line: each command builds the settings, calls one library function, reports."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import typer

from cdcf.errors import PipelineError
from cdcf.settings import PROJECT_ROOT, Settings, default_home, ensure_secrets, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Streaming CDC feature pipeline.")


def _run(action: Callable[[Settings], object], *, new_secrets: bool = False) -> object:
    """Build the settings and run ``action``; our errors become one red line and exit code 1."""
    try:
        if new_secrets:
            ensure_secrets(default_home())
        return action(load_settings())
    except PipelineError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc


def _with_metrics(job: str, action: Callable[[Settings], object]) -> Callable[[Settings], object]:
    """``action`` with the process's Prometheus endpoint up, announced to the local Prometheus as ``job``."""
    def run(settings: Settings) -> object:
        from cdcf import exporter

        if settings.metrics_enabled:
            exporter.serve(settings, job)
        return action(settings)
    return run


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def up() -> None:
    """Start the local stack (Postgres, Redis, Kafka, Connect) and apply the Feast repo."""
    from cdcf import stack

    _run(lambda s: stack.up(s, step=typer.echo), new_secrets=True)


@app.command()
def down(purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data (not the jar cache).")) -> None:
    """Stop the processes of the local stack (only ours, by pid)."""
    from cdcf import stack

    # a stack from before a secret existed still stops (its new secrets are written as `up` would)
    _run(lambda s: (stack.purge if purge else stack.down)(s, step=typer.echo), new_secrets=True)


@app.command()
def status(watch: bool = typer.Option(False, "--watch", help="Refresh every --interval seconds, with throughput, "
                                       "freshness and lag from Prometheus, until Ctrl-C."),
           interval: float = typer.Option(1.0, help="Seconds between refreshes (--watch)."),
           count: int | None = typer.Option(None, help="Stop after this many refreshes (--watch).")) -> None:
    """One line per component; exits 1 when any is unhealthy."""
    import time

    from cdcf import stack
    from cdcf.stack import monitoring

    frames = 0
    while True:
        report = _run(stack.status)
        lines = [h.line() for h in report] + (_run(monitoring.summary) if watch else [])
        if watch:
            typer.echo(f"\x1b[H\x1b[2J{datetime.now(UTC):%H:%M:%S} UTC (every {interval:g} s; Ctrl-C stops)", nl=True)
        typer.echo("\n".join(lines))
        frames += 1
        if not watch or frames == count:
            break
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            break
    if not all(h.healthy for h in report):
        raise typer.Exit(code=1)


@app.command()
def apply() -> None:
    """Create the offline tables and `feast apply` the feature repo against the configured registry."""
    from cdcf import stack

    _run(stack.apply_feature_repo)


@app.command("compose-secrets")
def compose_secrets(folder: Path = typer.Option(PROJECT_ROOT / "secrets", help="Where docker-compose.yml reads them."),
                    gid: int = typer.Option(..., help="Group that may read them: the containers join it "
                                            "(HOMELAB_SECRETS_GID).")) -> None:
    """Write the Docker secrets of docker-compose.yml from this stack's settings (those missing only)."""
    from cdcf.stack import compose_secrets as secrets_files

    def run(settings: Settings) -> None:
        written = secrets_files.write(settings, folder, gid)
        typer.echo(f"{folder}: wrote {', '.join(written) if written else 'nothing (every file is there)'}")

    _run(run, new_secrets=True)


@app.command()
def jars() -> None:
    """Resolve the JVM jars into the cache and build the window engine's (what `up` does first); used when
    building images."""
    from cdcf.engine import engine_jar
    from cdcf.stack import jars as stack_jars

    _run(stack_jars.ensure_jars)
    _run(lambda s: engine_jar(s.paths.cache / "engine", s.javac))


@app.command("serve-features")
def serve_features(port: int = typer.Option(6566, help="HTTP port of the Feast feature server."),
                   bind: str = typer.Option("127.0.0.1", help="Address to listen on."),
                   metrics: bool = typer.Option(False, help="Feast's Prometheus metrics on port 8000 of every "
                                                "interface (Feast's choice; compose scrapes it inside its network).")
                   ) -> None:
    """Write feature_store.yaml from the settings and run `feast serve` on it (replaces this process)."""
    from cdcf.feast_config import REPO_PATH, write_repo_config

    config = _run(write_repo_config)
    feast = str(Path(sys.executable).with_name("feast"))
    os.chdir(REPO_PATH)
    os.execv(feast, [feast, "-f", str(config), "serve", "-h", bind, "-p", str(port), *(["--metrics"] if metrics else [])])


@app.command()
def demo() -> None:
    """Bring the stack up, seed sample data, and read features through Feast."""
    from cdcf import demo as demo_run
    from cdcf import stack

    def run(settings: Settings) -> None:
        stack.up(settings, step=typer.echo)
        demo_run.run(settings, out=typer.echo)

    _run(run, new_secrets=True)


connector_app = typer.Typer(no_args_is_help=True, help="The Debezium connector, through Kafka Connect's REST API.")
app.add_typer(connector_app, name="connector")


def _connector(call: Callable[..., object], *args: object) -> None:
    """Run one REST call on the app connector and print its JSON answer."""
    import json

    from connectors.connect import ConnectClient, connector_config

    def action(settings: Settings) -> None:
        name, config = connector_config(settings)
        client = ConnectClient(settings)
        try:
            result = call(client, name, config, *args)
        finally:
            client.close()
        if result is not None:
            typer.echo(json.dumps(result, indent=2))

    _run(action)


@connector_app.command("apply")
def connector_apply(timeout: float = typer.Option(90, help="Seconds to wait for RUNNING.")) -> None:
    """Create the change and dead-letter topics, create or update the connector (idempotent), and wait until it
    and its task run."""
    from cdcf import stack

    _run(lambda s: stack.apply_connector(s, timeout_s=timeout))
    _connector(lambda c, name, _: c.status(name))


@connector_app.command("status")
def connector_status() -> None:
    """Connector and task states, with the trace of a failed task."""
    _connector(lambda c, name, _: c.status(name))


@connector_app.command("restart")
def connector_restart(all_tasks: bool = typer.Option(False, "--all", help="Restart running tasks too.")) -> None:
    """Restart the failed parts of the connector (or all of it with --all)."""
    _connector(lambda c, name, _: c.restart(name, only_failed=not all_tasks))


@connector_app.command("pause")
def connector_pause() -> None:
    _connector(lambda c, name, _: c.pause(name))


@connector_app.command("resume")
def connector_resume() -> None:
    _connector(lambda c, name, _: c.resume(name))


@connector_app.command("stop")
def connector_stop() -> None:
    """Stop the connector (its offsets stay; `resume` starts it again)."""
    _connector(lambda c, name, _: c.stop(name))


@connector_app.command("delete")
def connector_delete() -> None:
    """Delete the connector (its replication slot stays in PostgreSQL)."""
    _connector(lambda c, name, _: c.delete(name))


@connector_app.command("offsets")
def connector_offsets() -> None:
    """Show the connector's committed source offsets (LSNs)."""
    _connector(lambda c, name, _: c.offsets(name))


@connector_app.command("reset-offsets")
def connector_reset_offsets() -> None:
    """Stop the connector and delete its offsets; `resume` then snapshots again."""
    _connector(lambda c, name, _: c.reset_offsets(name))


@app.command()
def archive(status_file: Path | None = typer.Option(None, help="Where to report totals and lag."),
            idle_exit: float | None = typer.Option(None, help="Exit after this many idle seconds.")) -> None:
    """Run the changelog archiver in the foreground (`make up` runs it in the background)."""
    from connectors.archive import Archiver

    logging.getLogger("connectors").setLevel(logging.INFO)
    totals = _run(_with_metrics("archiver", lambda s: Archiver(s, status_file=status_file).run(idle_exit_s=idle_exit)))
    typer.echo(f"archived {totals['changes']} changes, skipped {totals['duplicates']} re-deliveries, "
               f"{totals['dead_letters']} dead letters")


@app.command()
def resnapshot() -> None:
    """Recover capture after a gap (its replication slot lost): snapshot every row again, and send deletes for rows
    removed meanwhile; features are exact again once the archiver and the streaming job catch up."""
    from connectors.resnapshot import resnapshot as run

    done = _run(lambda s: run(s, progress=typer.echo))
    typer.echo(f"resnapshot done in {done.seconds:.1f} s: {done.snapshot_rows} rows snapshotted, "
               f"{sum(done.deleted.values())} deletes sent for rows removed or moved to other owners during the gap")


@app.command("dead-letters")
def dead_letters(action: str = typer.Argument("list", help="list, or replay: send back what now decodes."),
                 dry_run: bool = typer.Option(False, "--dry-run", help="replay: only say what would be sent.")) -> None:
    """List the dead letters, or replay them through the pipeline once the contract that refused them is fixed."""
    from connectors import deadletters

    if action == "list":
        def show(settings: Settings) -> None:
            found = 0
            for found, letter in enumerate(deadletters.letters(settings), 1):
                at = letter.source
                typer.echo(f"{letter.offset}\t{letter.failed_at}\t{at.topic}[{at.partition}]@{at.offset}\t{letter.reason}")
            typer.echo(f"{found} dead letter(s) on {settings.dead_letter_topic}")

        _run(show)
    elif action == "replay":
        done = _run(lambda s: deadletters.replay(s, dry_run=dry_run))
        typer.echo(f"{'would send' if dry_run else 'sent'} {len(done.sent)} back to their topics; "
                   f"{len(done.archived)} already archived; {len(done.invalid)} still invalid; "
                   f"{len(done.gone)} gone from Kafka (past retention)")
        for letter, reason in done.invalid[:20]:
            typer.echo(f"  still invalid: {letter.source.topic}[{letter.source.partition}]@{letter.source.offset}: "
                       f"{reason}")
    else:
        typer.secho(f"error: unknown action {action!r}; use list or replay", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)


@app.command(hidden=True)
def supervise(name: str = typer.Argument(..., help="redis, kafka, connect, archiver or streaming")) -> None:
    """Run a process of the stack and start it again, with backoff, whenever it exits (`make up` runs this)."""
    from cdcf.stack import supervisor

    raise typer.Exit(code=_run(lambda s: supervisor.run(s.paths, name)))


@app.command()
def stream(status_file: Path | None = typer.Option(None, help="Where to report totals.")) -> None:
    """Run the streaming feature job in the foreground (`make up` runs it in the background)."""
    from streaming.job import StreamJob

    logging.getLogger("streaming").setLevel(logging.DEBUG)
    totals = _run(_with_metrics("streaming", lambda s: StreamJob(s, status_file=status_file).run()))
    typer.echo(f"{totals['batches']} batches, {totals['changes']} changes, {totals['rows_written']} feature rows")


@app.command()
def workload(rate: float = typer.Option(200, help="Changes per second."),
             duration: float = typer.Option(60, help="Seconds to run."),
             seed: int = typer.Option(1, help="Random seed (same seed, same sequence of changes)."),
             burst_every: float = typer.Option(15, help="A burst second every this many seconds (0: none)."),
             burst_factor: float = typer.Option(4, help="Rate multiplier during a burst.")) -> None:
    """Drive realistic changes into the source database at a target rate, with a progress line."""
    from cdcf.workload import Workload

    def show(elapsed: float, counts) -> None:
        total = sum(counts.values())
        typer.echo(f"\r{elapsed:5.0f} s  {total:8d} changes  {total / max(elapsed, 1e-9):7.0f}/s", nl=False)

    counts = _run(lambda s: Workload(s, seed=seed).run(rate, duration, burst_every_s=burst_every,
                                                        burst_factor=burst_factor, progress=show))
    typer.echo("\n" + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())))


@app.command()
def backfill(start: datetime | None = typer.Option(None, help="First as-of time to rebuild (default: all)."),
             end: datetime | None = typer.Option(None, help="As-of times before this (default: the archive's last "
                                                              "commit)."),
             incremental: bool = typer.Option(False, help="Continue from the last run: new as-of times, and the "
                                                          "entities touched by changes archived since.")) -> None:
    """Rebuild the offline feature tables from the changelog archive (Spark batch), with progress."""
    from batch.backfill import run_backfill
    from cdcf.spark import spark_session

    def run(settings: Settings):
        spark = spark_session(settings, "cdcf-backfill")
        spark.sparkContext.setLogLevel("ERROR")
        try:
            return run_backfill(spark, settings, _utc(start), _utc(end), incremental=incremental, progress=typer.echo)
        finally:
            spark.stop()

    result = _run(run)
    if result.rejects:
        typer.echo(f"{len(result.rejects)} changes broke their row contract; see table backfill_rejects")


@app.command("training-set")
def training_set(entities: str = typer.Argument(..., help="Entity rows: a .parquet or .csv file, or an offline-store "
                                                           "table, with the join key and event_timestamp."),
                 features: str = typer.Option(..., help="A feature service, or view:feature,view:feature..."),
                 out: Path = typer.Option(..., help="Parquet file to write."),
                 label: list[str] = typer.Option([], help="A label to join from the history (txn_next_7d).")) -> None:
    """Write a point-in-time training set (values as of each row's timestamp) to Parquet."""
    from batch.training import training_set as build

    wanted = features if "," not in features and ":" not in features else features.split(",")
    table = _run(lambda s: build(s, entities, wanted, labels=label, out=out))
    typer.echo(f"{table.num_rows} rows x {table.num_columns} columns -> {out}")


@app.command("seed-online")
def seed_online() -> None:
    """Rebuild the online store (Redis) from the offline store's latest rows, e.g. after losing Redis."""
    from streaming.reseed import seed_online as seed

    written = _run(lambda s: seed(s, progress=typer.echo))
    typer.echo(f"{sum(written.values())} rows written")


def _utc(at: datetime | None) -> datetime | None:
    """Times given without a zone are UTC."""
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)


MODELS = ("fraud_detection_v1", "recommendation_v1", "customer_segmentation_v1", "txn_next_7d")
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@app.command("train-model")
def train_model(model: str = typer.Option("fraud_detection_v1", help=f"One of {', '.join(MODELS)}."),
                rows: int = typer.Option(20_000, help="Point-in-time rows to train on (fraud: transactions; "
                                                      "recommendation: purchases; segmentation: users)."),
                epochs: int = typer.Option(20, help="Passes over the training rows (txn_next_7d)."),
                as_of: datetime | None = typer.Option(None, help="Segmentation: the users' features as of this "
                                                                 "time (UTC; default now)."),
                if_missing: bool = typer.Option(False, "--if-missing", help="Only when the registry has no version "
                                                                           "of it yet.")) -> None:
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

            return segments.train(settings, _utc(as_of), sample=rows).card.line()
        from inference.train import train_from_store

        trained, path = train_from_store(settings, rows=rows, epochs=epochs)
        return f"saved {path}: {trained.metrics}"

    typer.echo(_run(run))


@models_app.command("list")
def models_list() -> None:
    """Every registered version of every model: features, training range and rows, metrics, code revision."""
    from inference import registry

    cards = _run(registry.cards)
    for card in cards:
        typer.echo(card.line())
    if not cards:
        typer.echo("no models registered: `cdcf train-model --model fraud_detection_v1` trains one")


@app.command()
def validate(sample: int = typer.Option(1000, help="Entities per feature view."),
             min_match: float = typer.Option(1.0, help="Exit non-zero below this match fraction.")) -> None:
    """Online/offline consistency: a sample of online values, each against the offline row at its as-of time."""
    import json

    from inference.consistency import validate as check

    report = _run(lambda settings: check(settings, sample))
    for mismatch in report.mismatches[:20]:
        typer.echo(json.dumps(mismatch))
    typer.echo(f"{report.matched} of {report.compared} online values equal their offline rows: match "
               f"{report.match if report.match is not None else '-'}")
    if report.match is not None and report.match < min_match:
        raise typer.Exit(1)


@app.command("batch-score")
def batch_score(model: str = typer.Option("customer_segmentation_v1", help="The model (customer_segmentation_v1)."),
                as_of: datetime | None = typer.Option(None, help="Score every user as of this time (UTC; default now)."),
                version: int | None = typer.Option(None, help="Pin a model version (default: the newest).")) -> None:
    """Score every user as of a time through the offline store's point-in-time path into the offline table
    user_segments and the online view user_segment_features."""
    if model != "customer_segmentation_v1":
        raise typer.BadParameter("batch scoring serves customer_segmentation_v1")
    from inference import segments

    done = _run(lambda s: segments.batch_score(s, _utc(as_of) or datetime.now(UTC), version))
    typer.echo(f"{done['users']} users scored by {model} v{done['version']} as of {done['as_of']} in "
               f"{done['seconds']:.1f} s ({done['users_per_s']}/s); segment sizes {done['segment_sizes']}")


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

    answer = _run(run)
    for result in answer.get(items, [answer]):
        typer.echo(json.dumps(result))
    return answer


@app.command()
def score(ids: list[int] = typer.Argument(..., help="Entity ids to score."),
          model: Path | None = typer.Option(None, help="Model file (default: the stack's trained model).")) -> None:
    """txn_next_7d: fetch fresh features from Redis and score them; one JSON line per entity."""
    from inference.service import ScoringService

    answer = _answer(lambda s: ScoringService.from_settings(s, model).score(list(ids)))
    typer.echo(f"{len(ids)} scored on {answer['device']} in {answer['elapsed_ms']} ms", err=True)


@app.command("score-fraud")
def score_fraud(transactions: list[str] = typer.Argument(..., help="USER_ID:AMOUNT[:MERCHANT], one per transaction."),
                version: int | None = typer.Option(None, help="Pin a model version (default: the newest).")) -> None:
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
def recommend(user_id: int = typer.Argument(..., help="The user."), k: int = typer.Option(10, help="How many."),
              version: int | None = typer.Option(None, help="Pin a model version (default: the newest).")) -> None:
    """recommendation_v1: the top k of the candidate products for a user; one JSON line per product."""
    from inference.service import Recommender

    answer = _answer(lambda s: Recommender.from_settings(s, version).recommend(user_id, k), "items")
    typer.echo(f"{len(answer['items'])} of {answer.get('candidates', 0)} candidates by {answer['model']} "
               f"v{answer['version']}" + (f": {answer['reason']}" if "reason" in answer else ""), err=True)


@app.command()
def segment(user_ids: list[int] = typer.Argument(..., help="Users.")) -> None:
    """customer_segmentation_v1: each user's segment as the last batch scoring wrote it; one JSON line each."""
    from inference.service import SegmentReader

    def ask(settings: Settings) -> dict:
        reader = SegmentReader.from_settings(settings)
        return {"results": [reader.segment(u) for u in user_ids]}

    _answer(ask)


@app.command("serve-scores")
def serve_scores(port: int = typer.Option(6570, help="HTTP port."),
                 bind: str = typer.Option("127.0.0.1", help="Address to listen on."),
                 cache_ttl: float = typer.Option(0.0, help="Seconds to cache an entity's features (0: off).")) -> None:
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
            uvicorn.run(create_app(settings.scoring_token.get_secret_value(), **models), host=bind, port=port,
                        log_level="warning")

    _run(run)
