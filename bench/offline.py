"""Batch benchmark: the Spark backfill of a synthetic history, and a point-in-time training set beside Feast's
get_historical_features on the same offline store. Runs in a scratch database (cdcf_bench) of the local stack's
Postgres, so the pipeline's own tables are untouched. Writes bench/results/offline.json.

    .venv/bin/python -m bench.offline --changes 1000000 --pit-rows 1000000 --feast-rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg2

from batch.backfill import run_backfill
from batch.training import training_set
from bench.history import fill
from cdcf.feast_config import create_offline_tables, feature_store
from cdcf.settings import load_settings
from cdcf.spark import spark_session
from cdcf.stack import postgres

OUT = Path(__file__).parent / "results" / "offline.json"
SERVICE = "fraud_detection_v1"


def entity_rows(settings, rows: int, seed: int = 1) -> pd.DataFrame:
    """Random users at random times within the history."""
    with psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user)) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT min(event_timestamp), max(event_timestamp), max(user_id) FROM user_activity_features")
            first, last, users = cur.fetchone()
    conn.close()
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp(first) + (pd.Timestamp(last) - pd.Timestamp(first)) * rng.random(rows)
    return pd.DataFrame({"user_id": rng.integers(1, users + 1, rows), "event_timestamp": stamps})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--products", type=int, default=2_000)
    parser.add_argument("--pit-rows", type=int, default=1_000_000)
    parser.add_argument("--feast-rows", type=int, default=10_000)
    parser.add_argument("--database", default="cdcf_bench")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    base = load_settings()
    postgres.ensure_database(base, args.database)
    settings = base.model_copy(update={"offline_db": args.database})
    create_offline_tables(settings)
    with psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user)) as conn:
        started = time.monotonic()
        changes = fill(conn, args.changes, args.users, args.products)
        generated_s = time.monotonic() - started
    conn.close()

    spark = spark_session(settings, "cdcf-bench-backfill")
    spark.sparkContext.setLogLevel("ERROR")
    backfill = run_backfill(spark, settings, progress=lambda line: print(line, flush=True))
    spark.stop()

    entities = entity_rows(settings, args.pit_rows)
    started = time.monotonic()
    training_set(settings, entities, SERVICE)
    pit_s = time.monotonic() - started

    store = feature_store(settings)
    sample = entities.head(args.feast_rows)
    started = time.monotonic()
    store.get_historical_features(entity_df=sample, features=store.get_feature_service(SERVICE)).to_df()
    feast_s = time.monotonic() - started
    started = time.monotonic()
    training_set(settings, sample, SERVICE)
    pit_same_rows_s = time.monotonic() - started

    result = {
        "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
        "workload": {"changes": changes, "days": 30, "users": args.users, "products": args.products,
                     "history_generated_s": round(generated_s, 1), "feature_service": SERVICE},
        "backfill_changes": changes, "backfill_s": round(backfill.seconds, 1),
        "backfill_rows_written": sum(backfill.rows.values()), "backfill_rejects": len(backfill.rejects),
        "pit_rows": len(entities), "pit_s": round(pit_s, 2),
        "pit_feast_rows": len(sample), "pit_feast_s": round(feast_s, 2), "pit_same_rows_s": round(pit_same_rows_s, 2),
    }
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
