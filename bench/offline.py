"""Batch benchmark: the Spark backfill of a synthetic history, and a point-in-time training set beside Feast's
get_historical_features on the same offline store, and a sample of backfilled rows against the SQL oracle. Runs
in a scratch database (cdcf_bench) of the local stack's Postgres, so the pipeline's own tables are untouched.
`python -m bench.run` runs it as part of the whole benchmark; alone it prints its figures:

    .venv/bin/python -m bench.offline --changes 1000000 --pit-rows 1000000 --feast-rows 10000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pandas as pd

from batch.backfill import run_backfill
from bench import exactness
from bench.synthetic_history import fill
from cdcf import features as decl
from cdcf.feast_config import create_offline_tables, feature_store
from cdcf.settings import load_settings
from cdcf.spark import spark_session
from offline.training import training_set
from ops.stack import postgres

SERVICE = "fraud_detection_v1"


def entity_rows(settings, rows: int, seed: int = 1) -> pd.DataFrame:
    """Random users at random times within the history."""
    with exactness.connect(settings) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT min(event_timestamp), max(event_timestamp), max(user_id) FROM user_activity_features")
            first, last, users = cur.fetchone()
    conn.close()
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp(first) + (pd.Timestamp(last) - pd.Timestamp(first)) * rng.random(rows)
    return pd.DataFrame({"user_id": rng.integers(1, users + 1, rows), "event_timestamp": stamps})


def copy_limit(settings) -> float:
    """The write limit the backfill is measured against: every row it wrote, COPYed from a file into a new table
    of the same shape and then indexed like it (what the backfill's own write does, without computing anything);
    the seconds of the COPYs and index builds."""
    seconds = 0.0
    with exactness.connect(settings) as conn, conn.cursor() as cur:
        for view in decl.FEATURE_VIEWS:
            with tempfile.TemporaryFile() as rows:
                cur.copy_expert(f"COPY {view.name} TO STDOUT WITH (FORMAT csv)", rows)
                rows.seek(0)
                cur.execute(f"DROP TABLE IF EXISTS copy_limit; CREATE TABLE copy_limit (LIKE {view.name})")
                conn.commit()
                started = time.monotonic()
                cur.copy_expert("COPY copy_limit FROM STDIN WITH (FORMAT csv)", rows)
                key = view.entity.join_key
                cur.execute(f"ALTER TABLE copy_limit ADD PRIMARY KEY ({key}, {decl.EVENT_TIMESTAMP})")
                conn.commit()
                seconds += time.monotonic() - started
        cur.execute("DROP TABLE copy_limit")
    conn.close()
    return seconds


def run(
    base,
    changes: int,
    users: int,
    products: int,
    pit_rows: int,
    feast_rows: int,
    oracle_rows: int,
    database: str = "cdcf_bench",
) -> dict:
    """Backfill a synthetic history of ``changes`` in the scratch ``database``, check ``oracle_rows`` random rows
    per view against the SQL oracle, and time point-in-time sets of ``pit_rows`` (ours) and ``feast_rows`` (Feast's
    and ours on the same rows)."""
    postgres.ensure_database(base, database)
    settings = base.model_copy(update={"offline_db": database})
    create_offline_tables(settings)
    with exactness.connect(settings) as conn:
        started = time.monotonic()
        written = fill(conn, changes, users, products)
        generated_s = time.monotonic() - started
    conn.close()

    spark = spark_session(settings, "cdcf-bench-backfill")
    spark.sparkContext.setLogLevel("ERROR")
    backfill = run_backfill(spark, settings, progress=lambda line: print(line, flush=True))
    spark.stop()
    copy_s = copy_limit(settings)
    with exactness.connect(settings) as conn:
        verdict = exactness.compare_offline(conn, oracle_rows)
    conn.close()

    entities = entity_rows(settings, pit_rows)
    started = time.monotonic()
    training_set(settings, entities, SERVICE)
    pit_s = time.monotonic() - started

    store = feature_store(settings)
    sample = entities.head(feast_rows)
    started = time.monotonic()
    store.get_historical_features(entity_df=sample, features=decl.feature_refs(SERVICE)).to_df()
    feast_s = time.monotonic() - started
    started = time.monotonic()
    training_set(settings, sample, SERVICE)
    pit_same_rows_s = time.monotonic() - started
    return {
        "offline_workload": {
            "changes": written,
            "days": 30,
            "users": users,
            "products": products,
            "history_generated_s": round(generated_s, 1),
            "feature_service": SERVICE,
        },
        "backfill_changes": written,
        "backfill_s": round(backfill.seconds, 1),
        "backfill_rows": sum(backfill.rows.values()),
        "backfill_rows_written": sum(backfill.rows.values()),
        "backfill_rejects": len(backfill.rejects),
        "backfill_copy_s": round(copy_s, 1),
        "backfill_vs_copy": round(backfill.seconds / copy_s, 2),
        "pit_rows": len(entities),
        "pit_s": round(pit_s, 2),
        "pit_feast_rows": len(sample),
        "pit_feast_s": round(feast_s, 2),
        "pit_same_rows_s": round(pit_same_rows_s, 2),
        "backfill_oracle": verdict,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--products", type=int, default=2_000)
    parser.add_argument("--pit-rows", type=int, default=1_000_000)
    parser.add_argument("--feast-rows", type=int, default=10_000)
    parser.add_argument("--oracle-rows", type=int, default=200)
    parser.add_argument("--database", default="cdcf_bench")
    args = parser.parse_args()
    result = run(
        load_settings(),
        args.changes,
        args.users,
        args.products,
        args.pit_rows,
        args.feast_rows,
        args.oracle_rows,
        args.database,
    )
    verdict = result.pop("backfill_oracle")
    result.update(oracle_offline_match=verdict.match, oracle_mismatches=verdict.mismatches)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
