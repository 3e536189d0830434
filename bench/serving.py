"""Fetch + score benchmark, self-contained: it starts its own redis-server, fills it with features in Feast's
layout for a feature service's entities, and times the hot path (FeatureClient.fetch + model scoring, host/device
copies included) for batches of 1, 100 and 1,024 entities on the CPU and, when present, on CUDA; beside it a raw
Redis pipeline of the same keys (HGETALL, no decoding) as the baseline.

It needs only numpy, torch, redis, hiredis and mmh3, so it runs on a GPU host with no network and no Redis:
`scripts/prepare-gpu-bench.sh` packs a redis-server unpacked from Debian's packages and the small wheels.

    python -m bench.serving --redis-server /usr/bin/redis-server [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import socket
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import redis
import torch

from cdcf import features as decl
from cdcf import layout
from inference.model import Scorer, TrainedModel, frozen_heap
from online.client import FeatureClient

SERVICE = "fraud_detection_v1"
PROJECT = "homelab_ml_platform"


def start_redis(binary: str, libs: str | None) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    work = tempfile.mkdtemp(prefix="cdcf-bench-redis-")
    # argv[0] must be redis-server: Debian's binary is shared with redis-check-rdb and picks its role by name
    argv = [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        work,
    ]
    for env in [{}] + ([{"LD_LIBRARY_PATH": libs}] if libs else []):  # the host's libraries first, then ours
        process = subprocess.Popen(
            argv, executable=binary, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and process.poll() is None:
            try:
                redis.Redis(port=port).ping()
                return process, port
            except redis.ConnectionError:
                time.sleep(0.05)
        process.kill()
    raise RuntimeError(f"{binary} did not start: {process.stderr.read().decode()[-500:]}")


def fill(client: redis.Redis, features: list[tuple[str, str]], entities: int, seed: int = 3) -> None:
    """Every entity's hash, as the streaming job writes it: a value per feature (some null) and _ts per view."""
    rng = random.Random(seed)
    prefix, project = layout.key_prefix("user_id"), PROJECT.encode()
    views = list(dict.fromkeys(v for v, _ in features))
    kinds = {f.name: f.dtype for v in decl.FEATURE_VIEWS for f in v.features}
    now = datetime.now(UTC)
    with client.pipeline(transaction=False) as pipe:
        for i in range(1, entities + 1):
            mapping = {
                layout.ts_field(v): layout.encode_timestamp(now - timedelta(seconds=rng.random() * 60)) for v in views
            }
            for view, name in features:
                value = (
                    None
                    if rng.random() < 0.05
                    else (rng.randrange(0, 50) if kinds[name] == "int64" else round(rng.random() * 500, 2))
                )
                mapping[layout.field(view, name)] = layout.encode_value(value)
            pipe.hset(layout.entity_key(prefix, i, project), mapping=mapping)
            if i % 5000 == 0:
                pipe.execute()
        pipe.execute()


def _quantiles(samples: list[float]) -> dict:
    q = statistics.quantiles(samples, n=100)
    return {"p50_ms": round(q[49] * 1000, 3), "p99_ms": round(q[98] * 1000, 3)}


def measure(
    feature_client: FeatureClient,
    model: TrainedModel,
    entities: int,
    sizes=(1, 100, 1024),
    repeats: int = 300,
    seed: int = 4,
) -> dict:
    """p50/p99 of fetch + score per batch size, and of the raw pipeline baseline, on the model's device."""
    rng = random.Random(seed)
    raw = feature_client.client
    out = {}
    for size in sizes:
        total, fetch_only, baseline = [], [], []
        for n in range(repeats + 10):  # the first ten warm the connection, the allocator and CUDA
            ids = rng.sample(range(1, entities + 1), size)
            started = time.perf_counter()
            fetched = feature_client.fetch(ids)
            fetched_at = time.perf_counter()
            model.score(fetched.matrix())
            done = time.perf_counter()
            with raw.pipeline(transaction=False) as pipe:
                for i in ids:
                    pipe.hgetall(layout.entity_key(feature_client.prefix, i, feature_client.project))
                began = time.perf_counter()
                pipe.execute()
                raw_s = time.perf_counter() - began
            if n >= 10:
                total.append(done - started)
                fetch_only.append(fetched_at - started)
                baseline.append(raw_s)
        out[size] = {
            "fetch_and_score": _quantiles(total),
            "fetch": _quantiles(fetch_only),
            "raw_redis_pipeline": _quantiles(baseline),
        }
    return out


def run(
    redis_server: str = "redis-server", redis_libs: str | None = None, entities: int = 100_000, repeats: int = 300
) -> dict:
    (service,) = [s for s in decl.FEATURE_SERVICES if s.name == SERVICE]
    features = [(v.name, f.name) for v in service.views for f in v.features]
    server, port = start_redis(redis_server, redis_libs)
    try:
        client = redis.Redis(port=port)
        fill(client, features, entities)
        result = {
            "machine": f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}",
            "python": platform.python_version(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "entities_in_redis": entities,
            "feature_service": SERVICE,
            "features": len(features),
            "repeats": repeats,
        }
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for name in devices:
            n = len(features)
            model = TrainedModel(
                Scorer(n, np.zeros(n), np.ones(n)).to(name).eval(), SERVICE, features, "txn_next_7d", {}
            )
            feature_client = FeatureClient(client, PROJECT, "user_id", features)
            with frozen_heap():  # as the scoring service serves
                result[name] = measure(feature_client, model, entities, repeats=repeats)
        best = result[devices[-1]]
        result.update(
            {
                "infer_device": devices[-1],
                **{f"infer_{size}_p99_ms": best[size]["fetch_and_score"]["p99_ms"] for size in (1, 100, 1024)},
            }
        )
    finally:
        server.kill()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-server", default="redis-server")
    parser.add_argument("--redis-libs", default=None, help="LD_LIBRARY_PATH to try if the server needs libraries")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.redis_server, args.redis_libs, args.entities, args.repeats)
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
