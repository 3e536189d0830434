"""`make demo`: the pipeline's story — source data seeded, changes streaming into live features that Feast
serves, with their as-of times and how fresh they are; a backfill of the offline store from the change history;
models trained on point-in-time sets and registered (fraud, segmentation, and the txn_next_7d network), scoring
the users' fresh features; every user's segment batch-scored into the offline and online stores."""

from __future__ import annotations

import time
from collections.abc import Callable

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.feast_config import feature_store
from cdcf.settings import Settings
from ops import sample_data, stack
from ops.workload import Workload

DEMO_USERS = (1, 2, 3)
TRANSACTION = {"amount": 1450.0, "merchant": "giftcardz"}  # one to score for fraud, as an account takeover spends
PROBE_USER = -(2**62)  # a fixed id outside the sample data, the workload and the ranges tests pick


def run(settings: Settings, out: Callable[[str], None], workload_s: float = 30) -> None:
    counts = sample_data.seed(settings)
    out("source database '{}': {}".format(settings.app_db, ", ".join(f"{n} {t}" for t, n in counts.items())))
    store = feature_store(settings)
    changes = Workload(settings, seed=int(time.time())).run(200, workload_s)
    out(
        f"workload: {sum(changes.values())} changes in {workload_s:.0f} s "
        f"({', '.join(f'{k}={n}' for k, n in sorted(changes.items()))})"
    )
    out(f"freshness: COMMIT -> get_online_features in {_probe(settings, store):.2f} s")
    for service in ("fraud_detection_v1", "product_ranking_v1"):
        keys = (
            [{"product_id": p} for p in DEMO_USERS]
            if service.startswith("product")
            else [{"user_id": u, **TRANSACTION} for u in DEMO_USERS]
        )  # with the transaction for the request features
        rows = store.get_online_features(features=store.get_feature_service(service), entity_rows=keys).to_dict()
        out(f"get_online_features({service}):")
        for i, key in enumerate(keys):
            values = ", ".join(
                f"{name}={_fmt(col[i])}"
                for name, col in sorted(rows.items())
                if name not in key and name not in TRANSACTION
            )
            out(f"  {key}: {values}")
    _backfill_and_score(settings, out)
    for health in stack.status(settings):
        out(health.line())


def _backfill_and_score(settings: Settings, out: Callable[[str], None]) -> None:
    from batch.backfill import run_backfill
    from cdcf.spark import spark_session
    from inference.service import ScoringService
    from inference.train import train_from_store

    spark = spark_session(settings, "cdcf-demo-backfill")
    spark.sparkContext.setLogLevel("ERROR")
    try:
        result = run_backfill(spark, settings, incremental=True, progress=lambda line: out(f"backfill: {line}"))
    finally:
        spark.stop()
    out(f"backfill: {result.changes} changes -> {sum(result.rows.values())} offline rows in {result.seconds:.0f} s")
    _models(settings, out)
    model, path = train_from_store(settings, rows=5000, epochs=5)
    out(
        f"model {path}: trained on {model.metrics['rows']} point-in-time rows on {model.metrics['device']}, "
        f"held-out AUC {model.metrics['held_out_auc']}"
    )
    answer = ScoringService.from_settings(settings).score(list(DEMO_USERS))
    for result in answer["results"]:
        out(
            f"  score(user {result['id']}) = {result['score']:.3f}, features as of "
            f"{min(t for t in result['as_of'].values() if t)}"
            if result["score"] is not None
            else f"  score(user {result['id']}): {result['reason']}"
        )
    out(f"scored {len(DEMO_USERS)} users on {answer['device']} in {answer['elapsed_ms']} ms")


def _models(settings: Settings, out: Callable[[str], None]) -> None:
    """Train and register the fraud, recommendation and segmentation models; score transactions of the demo users,
    recommend products to one, and show their segments once every user is batch-scored."""
    from datetime import UTC, datetime

    from inference import fraud, recommend, segments
    from inference.service import FraudScorer, Recommender, SegmentReader

    out(f"registered {fraud.train(settings).card.line()}")
    usual = {"amount": 42.0, "merchant": "acme"}
    answer = FraudScorer.from_settings(settings).score(
        [{"user_id": u, **t} for u in DEMO_USERS for t in (usual, TRANSACTION)]
    )
    for result in answer["results"]:
        out(
            f"  fraud score of user {result['user_id']} (transaction of {result.get('amount', '')}) = "
            f"{result['score']:.3f}"
            if result["score"] is not None
            else f"  user {result['user_id']}: {result['reason']}"
        )
    out(
        f"scored {len(answer['results'])} transactions with {answer['model']} v{answer['version']} in "
        f"{answer['elapsed_ms']} ms"
    )
    out(f"registered {recommend.train(settings).card.line()}")
    top = Recommender.from_settings(settings).recommend(DEMO_USERS[0], 5)
    out(
        f"  top 5 products for user {top['user_id']} of {top['candidates']} candidates: "
        + ", ".join(f"{item['product_id']} ({item['score']:.3f})" for item in top["items"])
        + f" in {top['elapsed_ms']} ms"
        if top["items"]
        else f"  user {top['user_id']}: {top.get('reason')}"
    )
    as_of = datetime.now(UTC)
    out(f"registered {segments.train(settings, as_of).card.line()}")
    done = segments.batch_score(settings, as_of, progress=False)
    out(
        f"batch-scored {done['users']} users as of {done['as_of']} in {done['seconds']:.1f} s: segment sizes "
        f"{done['segment_sizes']}"
    )
    reader = SegmentReader.from_settings(settings)
    for user in DEMO_USERS:
        got = reader.segment(user)
        out(
            f"  segment(user {user}) = {got['segment']} (v{got.get('version')}, as of "
            f"{got.get('as_of', {}).get(decl.USER_SEGMENT.name)})"
        )


def _probe(settings: Settings, store) -> float:
    """Commit a transaction of a probe user with an amount larger than any before it (the clock) and time until
    Feast serves it as the user's 24h maximum."""
    amount = round(time.time(), 2)
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO transactions VALUES (%s, %s, NULL, %s, 'demo probe', now(), now())",
            (-int(amount * 100), PROBE_USER, amount),
        )
    committed = time.monotonic()
    feature = f"{decl.TRANSACTION_RISK.name}:txn_amount_max_24h"
    while time.monotonic() - committed < 30:
        served = store.get_online_features(features=[feature], entity_rows=[{"user_id": PROBE_USER}]).to_dict()
        if served["txn_amount_max_24h"][0] == float(amount):
            break
        time.sleep(0.01)
    return time.monotonic() - committed


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)
