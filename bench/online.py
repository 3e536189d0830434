"""Online reads and writes against their baselines on the stack's Redis. Reads: the project's read path
(`FeatureClient`, one feature service) against a raw Redis pipeline of the same keys (HGETALL, no decoding) and
Feast's `get_online_features`, for 1 and 100 entities. Writes: the streaming job's Redis writer against Feast's
`push(to=ONLINE)`, in feature-view rows (one entity's values of one view) per second.
"""

from __future__ import annotations

import random
import statistics
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
from feast.data_source import PushMode

from cdcf import features as decl
from cdcf import layout
from online.client import FeatureClient
from online.writer import OnlineWriter

SERVICE = "fraud_detection_v1"
SCRATCH_BASE = 9 * 10**15  # entity ids of the write benchmark, far from any real one; deleted afterwards


def _p(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q * 100) - 1] * 1000


def reads(settings, store, ids: list[int], sizes=(1, 100), repeats: int = 300, runs: int = 3) -> dict:
    """Per size: the median over ``runs`` of p50/p99 (ms) of each path, the three interleaved on the same ids."""
    client = FeatureClient.for_service(settings, SERVICE)
    service = decl.feature_refs(SERVICE)  # the stored features (the service's request-time ones need a transaction)
    rng = random.Random(5)
    out = {}
    for size in sizes:
        per_run: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": [], "feast": []}
        for _ in range(runs):
            times: dict[str, list[float]] = {"ours": [], "raw": [], "feast": []}
            for n in range(repeats + 10):
                batch = rng.sample(ids, size)
                keys = [layout.entity_key(client.prefix, i, client.project) for i in batch]
                started = time.perf_counter()
                client.fetch(batch)
                ours = time.perf_counter()
                with client.client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hgetall(key)
                    began = time.perf_counter()
                    pipe.execute()
                    raw = time.perf_counter() - began
                began = time.perf_counter()
                store.get_online_features(features=service, entity_rows=[{"user_id": i} for i in batch]).to_dict()
                feast = time.perf_counter() - began
                if n >= 10:  # warm-up
                    times["ours"].append(ours - started)
                    times["raw"].append(raw)
                    times["feast"].append(feast)
            for path, samples in times.items():
                per_run[path].append((_p(samples, 0.5), _p(samples, 0.99)))
        out[size] = {
            path: {
                "p50_ms": round(statistics.median(r[0] for r in runs_), 3),
                "p99_ms": round(statistics.median(r[1] for r in runs_), 3),
            }
            for path, runs_ in per_run.items()
        }
    client.close()
    return {
        "online_read_1_p50_ms": out[1]["ours"]["p50_ms"],
        "online_read_1_p99_ms": out[1]["ours"]["p99_ms"],
        "online_read_1_raw_p50_ms": out[1]["raw"]["p50_ms"],
        "online_read_1_feast_p50_ms": out[1]["feast"]["p50_ms"],
        "online_read_100_p50_ms": out[100]["ours"]["p50_ms"],
        "online_read_100_p99_ms": out[100]["ours"]["p99_ms"],
        "online_read_100_raw_p50_ms": out[100]["raw"]["p50_ms"],
        "online_read_100_feast_p50_ms": out[100]["feast"]["p50_ms"],
        "online_reads": {str(k): v for k, v in out.items()},
        "online_read_repeats": repeats,
        "online_read_runs": runs,
        "online_read_entities": len(ids),
        "online_read_service": SERVICE,
    }


def writes(settings, store, rows: int, feast_rows: int, runs: int = 3) -> dict:
    """Rows/s of each writer (median over ``runs``) for the transaction_risk view, on scratch entities."""
    view = decl.TRANSACTION_RISK
    rng = random.Random(6)
    now = datetime.now(UTC)

    def values() -> tuple:  # an as-of time (each entity its own, as in a streaming batch) and the view's values
        return (
            now - timedelta(microseconds=rng.randrange(60_000_000)),
            rng.randrange(50),
            round(rng.random() * 900, 2),
            round(rng.random() * 500, 2),
        )

    writer = OnlineWriter(settings)
    ours, feast = [], []
    for _ in range(runs):
        batch = [(SCRATCH_BASE + i, *values()) for i in range(rows)]
        started = time.perf_counter()
        writer.write(view, batch)
        ours.append(rows / (time.perf_counter() - started))
        frame = pd.DataFrame(
            [(SCRATCH_BASE + i, *values()) for i in range(feast_rows)],
            columns=[view.entity.join_key, decl.EVENT_TIMESTAMP, *(f.name for f in view.features)],
        )
        started = time.perf_counter()
        store.push(view.push_source, frame, to=PushMode.ONLINE)
        feast.append(feast_rows / (time.perf_counter() - started))
    prefix, project = layout.key_prefix(view.entity.join_key), settings.feast_project.encode()
    writer.client.delete(*[layout.entity_key(prefix, SCRATCH_BASE + i, project) for i in range(rows)])
    writer.close()
    return {
        "write_rows_per_s": round(statistics.median(ours)),
        "write_feast_push_rows_per_s": round(statistics.median(feast)),
        "write_rows": rows,
        "write_feast_rows": feast_rows,
        "write_runs": runs,
        "write_view": view.name,
    }
