"""Streaming features benchmark: COMMIT -> value readable through get_online_features while the workload runs at
a fixed rate (freshness), and how fast the job drains a backlog (capacity). Needs the local stack (`make up`),
streaming job included. Writes bench/results/streaming.json.

    .venv/bin/python bench/streaming.py --rate 1000 --seconds 60 --backlog-seconds 60
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import threading
import time
from pathlib import Path

import psycopg2

from cdcf import features as decl
from cdcf.feast_config import feature_store
from cdcf.settings import load_settings
from cdcf.stack.background import STREAMING
from cdcf.workload import Workload

OUT = Path(__file__).parent / "results" / "streaming.json"


def freshness(settings, store, rate: float, seconds: float) -> dict:
    """While the workload runs at ``rate``, commit a probe change every 0.5 s and poll Feast until it serves it
    (after one untimed probe, so that the job's first, slow micro-batch is not measured)."""
    user, txn = random.randrange(10**13, 10**14), random.randrange(10**13, 10**14)
    conn = psycopg2.connect(settings.pg_dsn())
    cur = conn.cursor()
    cur.execute("INSERT INTO transactions VALUES (%s, %s, NULL, 0, 'probe', now(), now())", (txn, user))
    conn.commit()

    def probe(amount: int, timeout_s: float) -> float | None:
        cur.execute("UPDATE transactions SET amount = %s, created_at = now() WHERE txn_id = %s", (amount, txn))
        conn.commit()
        committed = time.monotonic()
        while time.monotonic() - committed < timeout_s:
            values = store.get_online_features(features=["transaction_risk_features:txn_amount_sum_1h"],
                                               entity_rows=[{"user_id": user}]).to_dict()
            if values["txn_amount_sum_1h"][0] == amount:
                return time.monotonic() - committed
            time.sleep(0.01)
        return None

    assert probe(10**6, 180) is not None, "the streaming job serves nothing; see .stack/logs/streaming.log"
    load = threading.Thread(target=lambda: Workload(settings, seed=7).run(rate, seconds, burst_every_s=0))
    load.start()
    latencies, probes, deadline = [], 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        probes += 1
        latency = probe(probes, 30)
        if latency is not None:
            latencies.append(latency)
        time.sleep(max(0.0, 0.5 - (latency or 0)))
    load.join()
    conn.close()
    q = statistics.quantiles(latencies, n=100)
    return {"freshness_p50_s": round(q[49], 3), "freshness_p99_s": round(q[98], 3), "freshness_probes": probes,
            "freshness_served": len(latencies), "freshness_rate_changes_per_s": rate}


def drain(settings, seconds: float) -> dict:
    """Stop the job, build a backlog with the workload at full speed, start the job and time the drain."""
    STREAMING.stop(settings)
    counts = Workload(settings, seed=11).run(100_000, seconds, burst_every_s=0)
    backlog = sum(counts.values())
    before = _status(settings)
    STREAMING.start(settings)  # resumes from its checkpoint: the whole backlog is ahead of it
    started, first = time.monotonic(), None
    while True:
        state = _status(settings)
        if state["changes"] > 0 and first is None:
            first = time.monotonic()
        if state["changes"] >= backlog:
            break
        time.sleep(0.2)
    done = time.monotonic()
    return {"backlog_changes": backlog, "workload_changes_per_s": round(backlog / seconds),
            "drain_s": round(done - (first or started), 1), "job_start_s": round((first or done) - started, 1),
            "capacity_changes_per_s": round(backlog / max(done - (first or started), 1e-9)),
            "capacity_method": "backlog drain rate after restart (first batch excluded from start-up time)",
            "status_before": before}


def _status(settings) -> dict:
    return json.loads(STREAMING.status_file(settings).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--backlog-seconds", type=float, default=60)
    args = parser.parse_args()
    settings = load_settings()
    store = feature_store(settings)
    store.get_online_features(features=[f"{decl.TRANSACTION_RISK.name}:txn_count_1h"], entity_rows=[{"user_id": 1}])
    result = {"machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
              "workload": {"rate": args.rate, "seconds": args.seconds, "backlog_seconds": args.backlog_seconds},
              **freshness(settings, store, args.rate, args.seconds), **drain(settings, args.backlog_seconds)}
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
