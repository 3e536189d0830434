"""The open benchmark (`make bench`): every key of docs/semantics.md#benchmark-keys measured on the local stack, each
beside its baseline in the same run, written to bench/results/latest.json with the machine, the versions and the
workload parameters, and rendered to BENCHMARKS.md with PNG plots.

    .venv/bin/python -m bench.run                      # the full run, about an hour on 2 cores
    .venv/bin/python -m bench.run --smoke --out /tmp/b # tiny sizes, a few minutes (the test suite runs this)

Parts, in order (``--only a,b`` runs some and merges their keys into the existing latest.json): the oracle (a
randomized workload on a fresh entity range, duplicates re-delivered through Kafka, then every online value and a
sample of offline values against a brute-force SQL computation); online reads; writes; freshness at a fixed rate;
the capacity sweep; the cost of a Prometheus scrape of each endpoint under load; capture (Debezium into Kafka at
the source's top commit rate); the streaming job's drain of a pre-filled topic (2 cores, then 1, then 2 without
metrics and feature checks); the batch backfill and point-in-time sets in a scratch database (with a sample
of backfilled rows against the same oracle); fetch + score on its own Redis; the fault matrix, on a side stack of its
own (bench/faults.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import signal
import sys
import time
from importlib import metadata
from pathlib import Path

from bench import (
    cdc_capture,
    exactness,
    faults,
    freshness,
    machine_state,
    models,
    offline,
    online,
    report,
    scrape,
    security,
    serving,
    stream,
)
from cdcf import pg_clients
from cdcf.feast_config import feature_store
from cdcf.redis_clients import redis_client
from cdcf.settings import PROJECT_ROOT, load_settings
from inference.consistency import validate
from ops.workload import Workload, redeliver, topic_end

RESULTS = PROJECT_ROOT / "bench" / "results"
SIZES = {
    "full": {
        "oracle_seconds": 60,
        "oracle_rate": 300,
        "oracle_users": 200,
        "oracle_products": 50,
        "oracle_duplicate_fraction": 0.1,
        "oracle_offline_rows": 300,
        "read_repeats": 300,
        "read_runs": 3,
        "write_rows": 50_000,
        "write_feast_rows": 5_000,
        "write_runs": 3,
        "load_users": 20_000,
        "load_products": 2_000,
        "freshness_rate": 1000,
        "freshness_seconds": 60,
        "freshness_runs": 3,
        "scrape_seconds": 30,
        "capacity_rates": [1000, 1500, 2000, 2500, 3000, 4000, 6000, 8000, 12000, 20000],
        "capacity_hold_s": 180,
        "capacity_bound_s": 10,
        "backfill_changes": 3_000_000,
        "backfill_users": 60_000,
        "backfill_products": 6_000,
        "pit_rows": 1_000_000,
        "pit_feast_rows": 10_000,
        "backfill_oracle_rows": 200,
        "infer_entities": 100_000,
        "infer_repeats": 300,
        "models_rate": 500,
        "models_seconds": 120,
        "models_users": 5_000,
        "models_products": 1_000,
        "models_repeats": 300,
        "models_train_rows": 40_000,
        "models_held_out": 200,
        "validate_sample": 2_000,
        "capture_changes": 200_000,
        "stream_changes": 1_000_000,
        "stream_users": 100_000,
        "stream_products": 10_000,
        "faults_rate": 500,
        "faults_before_s": 10,
        "faults_after_s": 20,
        "faults_timeout_s": 300,
        "faults_scenarios": None,
    },
    "smoke": {
        "oracle_seconds": 6,
        "oracle_rate": 100,
        "oracle_users": 120,
        "oracle_products": 8,
        "oracle_duplicate_fraction": 0.2,
        "oracle_offline_rows": 30,
        "read_repeats": 20,
        "read_runs": 2,
        "write_rows": 500,
        "write_feast_rows": 100,
        "write_runs": 2,
        "load_users": 200,
        "load_products": 20,
        "freshness_rate": 100,
        "freshness_seconds": 4,
        "freshness_runs": 2,
        "scrape_seconds": 4,
        "capacity_rates": [100, 200],
        "capacity_hold_s": 8,
        "capacity_bound_s": 6,
        "backfill_changes": 3_000,
        "backfill_users": 100,
        "backfill_products": 20,
        "pit_rows": 500,
        "pit_feast_rows": 100,
        "backfill_oracle_rows": 20,
        "infer_entities": 2_000,
        "infer_repeats": 20,
        "models_rate": 300,
        "models_seconds": 15,
        "models_users": 300,
        "models_products": 60,
        "models_repeats": 20,
        "models_train_rows": 4_000,
        "models_held_out": 50,
        "validate_sample": 200,
        "capture_changes": 2_000,
        "stream_changes": 5_000,
        "stream_users": 500,
        "stream_products": 50,
        "faults_rate": 100,
        "faults_before_s": 4,
        "faults_after_s": 6,
        "faults_timeout_s": 180,
        "faults_scenarios": ["kill_archiver", "hostile_burst_1000"],  # the driver kill: test_streaming.py
    },
}
TABLES = ("users", "transactions", "sessions", "reviews")


def machine(settings) -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        postgres_version = cur.fetchone()[0]
    r = redis_client(settings, "writer")
    jars = sorted(
        p.name for p in settings.paths.jars.rglob("*.jar") if re.match(r"(kafka_2|debezium-connector-postgres)", p.name)
    )
    return {
        "description": f"{platform.node()}: {os.cpu_count()} cores, {memory_kb // 1024**2} GiB, {platform.platform()}",
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024**2, 1),
        "python": platform.python_version(),
        "versions": {
            **{
                p: metadata.version(p)
                for p in ("feast", "pyspark", "redis", "confluent-kafka", "psycopg2-binary", "torch")
            },
            "postgres": postgres_version,
            "redis_server": r.info("server")["redis_version"],
            "jars": jars,
        },
    }


def oracle_phase(settings, store, size: dict, seed: int) -> dict:
    """A randomized workload on a fresh entity range, a fraction of its change events delivered again, then every
    online value of the range and a sample of its offline rows against the SQL oracle."""
    base = random.Random(seed).randrange(1, 9000) * 10**11
    ranges = {
        "user_id": (base + 1, base + size["oracle_users"]),
        "product_id": (base + 1, base + size["oracle_products"]),
    }
    starts = {t: topic_end(settings, t) for t in TABLES}
    workload = Workload(
        settings, seed=seed, users=size["oracle_users"], products=size["oracle_products"], entity_base=base
    )
    workload.run(size["oracle_rate"], size["oracle_seconds"], burst_every_s=5)
    rng = random.Random(seed)
    duplicates = sum(
        redeliver(settings, t, lambda _: rng.random() < size["oracle_duplicate_fraction"], starts[t]) for t in TABLES
    )
    prober = freshness.Prober(settings, store)  # a probe served after the duplicates: the job has read them
    caught_up = prober.run(1, 1, timeout_s=300).served
    prober.close()
    time.sleep(settings.stream_settle_s + 2)  # and the decay pass has run past the last change
    with exactness.connect(settings) as conn:
        online_verdict = exactness.compare_online(settings, conn, ranges)
        offline_verdict = exactness.compare_offline(conn, size["oracle_offline_rows"], ranges)
    conn.close()
    return {
        "oracle_workload": {
            "entity_base": base,
            "changes": dict(workload.counts),
            "duplicates_redelivered": duplicates,
            "caught_up": bool(caught_up),
        },
        "online": online_verdict,
        "offline": offline_verdict,
    }


PARTS = (
    "oracle",
    "reads",
    "writes",
    "freshness",
    "capacity",
    "scrape",
    "capture",
    "stream",
    "offline",
    "inference",
    "models",
    "faults",
    "security",
    "validate",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.json and the plots")
    parser.add_argument("--markdown", type=Path, default=None, help="default: BENCHMARKS.md (full), OUT (smoke)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run ({', '.join(PARTS)}); their keys are merged into the existing latest.json",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped: side stacks and scratch databases go too
    parts = args.only.split(",")
    if unknown := set(parts) - set(PARTS):
        parser.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    size = SIZES["smoke" if args.smoke else "full"]
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    settings = load_settings()
    store = feature_store(settings, "writer")  # the online part pushes through it
    previous = args.out / "latest.json"
    partial = set(parts) != set(PARTS) and previous.exists()
    result: dict = json.loads(previous.read_text()) if partial else {}
    states = result.get("machine", {}).get("state", {})  # each part's (SPEC 6), the parts not run again keep theirs
    result.update({"machine": machine(settings) | {"state": states}, "phase_s": result.get("phase_s", {})})
    if partial:  # the workload stays the full run's; the parts run again are recorded
        result["reruns"] = [
            *result.get("reruns", []),
            {
                "parts": parts,
                "seed": seed,
                "size": "smoke" if args.smoke else "full",
                "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            },
        ]
    else:
        result["workload"] = {"size": "smoke" if args.smoke else "full", "seed": seed, **size}

    ours = machine_state.marks(settings)

    def phase(name: str, fn):
        if name not in parts:
            return None
        print(f"bench: {name} ...", flush=True)
        started, before = time.monotonic(), machine_state.snapshot()
        out = fn()
        result["phase_s"][name] = round(time.monotonic() - started, 1)
        states[name] = machine_state.summary(before, machine_state.snapshot(), ours)
        print(f"bench: {name} done in {result['phase_s'][name]} s", flush=True)
        return out

    checked = phase("oracle", lambda: oracle_phase(settings, store, size, seed))
    if checked is not None:
        streamed = checked["offline"]
        result.update(
            {
                "oracle_online_match": checked["online"].match,
                "oracle_online_compared": checked["online"].compared,
                "oracle_online_mismatches": checked["online"].mismatches,
                "oracle_offline_streamed_compared": streamed.compared,
                "oracle_offline_streamed_mismatches": streamed.mismatches,
                "oracle_workload": checked["oracle_workload"],
            }
        )
    base = result.get("oracle_workload", {}).get("entity_base") or random.Random(seed).randrange(1, 9000) * 10**11
    users = list(range(base + 1, base + size["oracle_users"] + 1))
    result.update(
        phase(
            "reads", lambda: online.reads(settings, store, users, repeats=size["read_repeats"], runs=size["read_runs"])
        )
        or {}
    )
    result.update(
        phase(
            "writes",
            lambda: online.writes(settings, store, size["write_rows"], size["write_feast_rows"], size["write_runs"]),
        )
        or {}
    )
    # the load of freshness and capacity: a population of its own, as a platform of that rate would have (a small
    # one gives each entity an ever longer history to recompute, a cost of the workload, not of the rate)
    population = {
        "users": size["load_users"],
        "products": size["load_products"],
        "entity_base": random.Random(seed + 1).randrange(1, 9000) * 10**11 + 10**10,
    }
    if {"freshness", "capacity", "scrape"} & set(parts):
        result["workload"]["load_entity_base"] = population["entity_base"]
    result.update(
        phase(
            "freshness",
            lambda: freshness.freshness(
                settings,
                store,
                size["freshness_rate"],
                size["freshness_seconds"],
                size["freshness_runs"],
                population,
                seed,
            ),
        )
        or {}
    )
    result.update(
        phase(
            "capacity",
            lambda: freshness.capacity(
                settings,
                store,
                size["capacity_rates"],
                size["capacity_hold_s"],
                size["capacity_bound_s"],
                population,
                seed,
            ),
        )
        or {}
    )
    result.update(
        phase(
            "scrape",
            lambda: scrape.scrape_phase(settings, size["freshness_rate"], size["scrape_seconds"], population, seed),
        )
        or {}
    )
    result.update(phase("capture", lambda: capture(settings, size["capture_changes"])) or {})
    result.update(
        phase(
            "stream",
            lambda: stream.stream_phase(
                settings, size["stream_changes"], size["stream_users"], size["stream_products"], seed
            ),
        )
        or {}
    )
    batch = phase(
        "offline",
        lambda: offline.run(
            settings,
            size["backfill_changes"],
            size["backfill_users"],
            size["backfill_products"],
            size["pit_rows"],
            size["pit_feast_rows"],
            size["backfill_oracle_rows"],
            database="cdcf_bench_smoke" if args.smoke else "cdcf_bench",
        ),
    )
    if batch is not None:
        backfilled = batch.pop("backfill_oracle")
        result.update(batch)
        result.update(
            {
                "oracle_offline_backfilled_compared": backfilled.compared,
                "oracle_offline_backfilled_mismatches": backfilled.mismatches,
            }
        )
    inference = phase(
        "inference", lambda: serving.run("/usr/bin/redis-server", None, size["infer_entities"], size["infer_repeats"])
    )
    if inference is not None:
        result.update({k: inference.pop(k) for k in [k for k in inference if k.startswith("infer_")]})
        result["inference"] = inference
    args.out.mkdir(parents=True, exist_ok=True)
    trained = phase(
        "models",
        lambda: models.run(
            settings,
            args.out,
            seed,
            size["models_rate"],
            size["models_seconds"],
            size["models_users"],
            size["models_products"],
            size["models_repeats"],
            size["models_train_rows"],
            size["models_held_out"],
        ),
    )
    if trained is not None:
        result.update(trained)
    matrix = phase(
        "faults",
        lambda: faults.run(
            settings,
            size["faults_rate"],
            size["faults_before_s"],
            size["faults_after_s"],
            size["faults_timeout_s"],
            size["faults_scenarios"],
        ),
    )
    if matrix is not None:
        result.update(matrix)
        result["workload"].update({k: v for k, v in size.items() if k.startswith("faults_")})
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "faults.json").write_text(
            json.dumps(
                {"machine": result["machine"], "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **matrix},
                indent=2,
                default=str,
            )
            + "\n"
        )
    intrusions = phase("security", lambda: security.run(settings))
    if intrusions is not None:
        result.update({k: intrusions[k] for k in ("intrusions_tried", "intrusions_refused")})
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "security.json").write_text(
            json.dumps(
                {"machine": result["machine"], "at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **intrusions},
                indent=2,
            )
            + "\n"
        )
    consistency = phase("validate", lambda: validate(settings, size["validate_sample"], seed=seed))
    if consistency is not None:
        result.update(consistency.as_dict())
    _oracle_totals(result)
    gpu = RESULTS / "inference_gpu.json"
    if gpu.exists():
        result["gpu_inference"] = json.loads(gpu.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    markdown = args.markdown or (args.out / "BENCHMARKS.md" if args.smoke else PROJECT_ROOT / "BENCHMARKS.md")
    report.render(result, args.out, markdown)
    print(f"bench: wrote {args.out / 'latest.json'} and {markdown}")


def capture(settings, changes: int) -> dict:
    """Debezium into Kafka with the source committing as fast as it can (and the archive behind it); then the
    archiver's own rate on a backlog of as many changes."""
    run = cdc_capture.throughput_run(settings, changes)
    cdc_capture.await_stream(settings)
    backlog = cdc_capture.backlog_run(settings, changes)
    return {
        "capture_changes_per_s": round(run["kafka_changes_per_s"], 1),
        "archive_changes_per_s": round(backlog["archive_changes_per_s"], 1),
        "archive_behind_capture_s": round(run["into_archive_s"] - run["into_kafka_s"], 2),
        "capture_run": run,
        "archive_backlog_run": backlog,
    }


def _oracle_totals(result: dict) -> None:
    """The offline match over streamed and backfilled rows (each part may come from a different run)."""
    compared = result.get("oracle_offline_streamed_compared", 0) + result.get("oracle_offline_backfilled_compared", 0)
    mismatches = result.get("oracle_offline_streamed_mismatches", []) + result.get(
        "oracle_offline_backfilled_mismatches", []
    )
    result["oracle_offline_compared"] = compared
    result["oracle_offline_match"] = 1.0 if compared == 0 else 1 - len(mismatches) / compared
    result["oracle_mismatches"] = result.get("oracle_online_mismatches", []) + mismatches


if __name__ == "__main__":
    main()
