"""The open benchmark (`make bench`): every key of SPEC section 6 measured on the local stack, each beside its
baseline in the same run, written to bench/results/latest.json with the machine, the versions and the workload
parameters, and rendered to BENCHMARKS.md with PNG plots.

    .venv/bin/python -m bench.run                      # the full run, about an hour on 2 cores
    .venv/bin/python -m bench.run --smoke --out /tmp/b # tiny sizes, a few minutes (the test suite runs this)

Phases, in order: the oracle (a randomized workload on a fresh entity range, duplicates re-delivered through
Kafka, then every online value and a sample of offline values against a brute-force SQL computation); online
reads and writes; freshness at a fixed rate; the capacity sweep; the batch backfill and point-in-time sets in a
scratch database (with a sample of backfilled rows against the same oracle); fetch + score on its own Redis.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import time
from importlib import metadata
from pathlib import Path

import psycopg2
import redis

from bench import freshness, offline, online, oracle, report
from bench import inference as infer
from cdcf.feast_config import feature_store
from cdcf.settings import PROJECT_ROOT, load_settings
from cdcf.workload import Workload, redeliver, topic_end

RESULTS = PROJECT_ROOT / "bench" / "results"
SIZES = {
    "full": {
        "oracle_seconds": 60, "oracle_rate": 300, "oracle_users": 200, "oracle_products": 50,
        "oracle_duplicate_fraction": 0.1, "oracle_offline_rows": 300,
        "read_repeats": 300, "read_runs": 3, "write_rows": 50_000, "write_feast_rows": 5_000, "write_runs": 3,
        "load_users": 20_000, "load_products": 2_000, "freshness_rate": 1000, "freshness_seconds": 60,
        "freshness_runs": 3,
        "capacity_rates": [1000, 1500, 2000, 2500, 3000, 4000, 6000, 8000, 12000, 20000], "capacity_hold_s": 180,
        "capacity_bound_s": 10,
        "backfill_changes": 1_000_000, "backfill_users": 20_000, "backfill_products": 2_000, "pit_rows": 1_000_000,
        "pit_feast_rows": 10_000, "backfill_oracle_rows": 200,
        "infer_entities": 100_000, "infer_repeats": 300,
    },
    "smoke": {
        "oracle_seconds": 6, "oracle_rate": 100, "oracle_users": 120, "oracle_products": 8,
        "oracle_duplicate_fraction": 0.2, "oracle_offline_rows": 30,
        "read_repeats": 20, "read_runs": 2, "write_rows": 500, "write_feast_rows": 100, "write_runs": 2,
        "load_users": 200, "load_products": 20, "freshness_rate": 100, "freshness_seconds": 4, "freshness_runs": 2,
        "capacity_rates": [100, 200], "capacity_hold_s": 8, "capacity_bound_s": 6,
        "backfill_changes": 3_000, "backfill_users": 100, "backfill_products": 20, "pit_rows": 500,
        "pit_feast_rows": 100, "backfill_oracle_rows": 20,
        "infer_entities": 2_000, "infer_repeats": 20,
    },
}
TABLES = ("users", "transactions", "sessions", "reviews")


def machine(settings) -> dict:
    meminfo = Path("/proc/meminfo").read_text()
    memory_kb = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    with psycopg2.connect(settings.pg_dsn()) as conn, conn.cursor() as cur:
        cur.execute("SHOW server_version")
        postgres_version = cur.fetchone()[0]
    conn.close()
    r = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                    password=settings.redis_password.get_secret_value())
    jars = sorted(p.name for p in settings.paths.jars.rglob("*.jar")
                  if re.match(r"(kafka_2|debezium-connector-postgres)", p.name))
    return {
        "description": f"{platform.node()}: {os.cpu_count()} cores, {memory_kb // 1024**2} GiB, "
                       f"{platform.platform()}",
        "cpus": os.cpu_count(), "memory_gib": round(memory_kb / 1024**2, 1), "python": platform.python_version(),
        "versions": {**{p: metadata.version(p) for p in ("feast", "pyspark", "redis", "confluent-kafka",
                                                           "psycopg2-binary", "torch")},
                     "postgres": postgres_version, "redis_server": r.info("server")["redis_version"],
                     "jars": jars},
    }


def oracle_phase(settings, store, size: dict, seed: int) -> dict:
    """A randomized workload on a fresh entity range, a fraction of its change events delivered again, then every
    online value of the range and a sample of its offline rows against the SQL oracle."""
    base = random.Random(seed).randrange(1, 9000) * 10**11
    ranges = {"user_id": (base + 1, base + size["oracle_users"]),
              "product_id": (base + 1, base + size["oracle_products"])}
    starts = {t: topic_end(settings, t) for t in TABLES}
    workload = Workload(settings, seed=seed, users=size["oracle_users"], products=size["oracle_products"],
                        entity_base=base)
    workload.run(size["oracle_rate"], size["oracle_seconds"], burst_every_s=5)
    rng = random.Random(seed)
    duplicates = sum(redeliver(settings, t, lambda _: rng.random() < size["oracle_duplicate_fraction"], starts[t])
                     for t in TABLES)
    prober = freshness.Prober(settings, store)  # a probe served after the duplicates: the job has read them
    caught_up = prober.run(1, 1, timeout_s=300).served
    prober.close()
    time.sleep(settings.stream_settle_s + 2)  # and the decay pass has run past the last change
    with oracle.connect(settings) as conn:
        online_verdict = oracle.compare_online(settings, conn, ranges)
        offline_verdict = oracle.compare_offline(conn, size["oracle_offline_rows"], ranges)
    conn.close()
    return {"oracle_workload": {"entity_base": base, "changes": dict(workload.counts),
                                "duplicates_redelivered": duplicates, "caught_up": bool(caught_up)},
            "online": online_verdict, "offline": offline_verdict}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness, not the pipeline")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for latest.json and the plots")
    parser.add_argument("--markdown", type=Path, default=None, help="default: BENCHMARKS.md (full), OUT (smoke)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    size = SIZES["smoke" if args.smoke else "full"]
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    settings = load_settings()
    store = feature_store(settings)
    result: dict = {"machine": machine(settings), "workload": {"size": "smoke" if args.smoke else "full",
                                                                "seed": seed, **size}, "phase_s": {}}

    def phase(name: str, fn):
        print(f"bench: {name} ...", flush=True)
        started = time.monotonic()
        out = fn()
        result["phase_s"][name] = round(time.monotonic() - started, 1)
        print(f"bench: {name} done in {result['phase_s'][name]} s", flush=True)
        return out

    checked = phase("oracle", lambda: oracle_phase(settings, store, size, seed))
    users = range(checked["oracle_workload"]["entity_base"] + 1,
                  checked["oracle_workload"]["entity_base"] + size["oracle_users"] + 1)
    result.update(phase("online_reads", lambda: online.reads(settings, store, list(users), repeats=size[
        "read_repeats"], runs=size["read_runs"])))
    result.update(phase("writes", lambda: online.writes(settings, store, size["write_rows"], size["write_feast_rows"],
                                                        size["write_runs"])))
    # the load of freshness and capacity: a population of its own, as a platform of that rate would have (a small
    # one gives each entity an ever longer history to recompute, a cost of the workload, not of the rate)
    population = {"users": size["load_users"], "products": size["load_products"],
                  "entity_base": random.Random(seed + 1).randrange(1, 9000) * 10**11 + 10**10}
    result["workload"]["load_entity_base"] = population["entity_base"]
    result.update(phase("freshness", lambda: freshness.freshness(
        settings, store, size["freshness_rate"], size["freshness_seconds"], size["freshness_runs"], population, seed)))
    result.update(phase("capacity", lambda: freshness.capacity(
        settings, store, size["capacity_rates"], size["capacity_hold_s"], size["capacity_bound_s"], population,
        seed)))
    batch = phase("offline", lambda: offline.run(
        settings, size["backfill_changes"], size["backfill_users"], size["backfill_products"], size["pit_rows"],
        size["pit_feast_rows"], size["backfill_oracle_rows"],
        database="cdcf_bench_smoke" if args.smoke else "cdcf_bench"))
    backfilled = batch.pop("backfill_oracle")
    result.update(batch)
    inference = phase("inference", lambda: infer.run("/usr/bin/redis-server", None, size["infer_entities"],
                                                     size["infer_repeats"]))
    result.update({k: inference.pop(k) for k in [k for k in inference if k.startswith("infer_")]})
    result["inference"] = inference

    online_verdict, offline_verdict = checked["online"], checked["offline"].merge(backfilled)
    result.update({
        "oracle_online_match": online_verdict.match, "oracle_online_compared": online_verdict.compared,
        "oracle_offline_match": offline_verdict.match, "oracle_offline_compared": offline_verdict.compared,
        "oracle_offline_streamed_compared": checked["offline"].compared,
        "oracle_offline_backfilled_compared": backfilled.compared,
        "oracle_workload": checked["oracle_workload"],
        "oracle_mismatches": online_verdict.mismatches + offline_verdict.mismatches,
    })
    gpu = RESULTS / "inference_gpu.json"
    if gpu.exists():
        result["gpu_inference"] = json.loads(gpu.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    markdown = args.markdown or (args.out / "BENCHMARKS.md" if args.smoke else PROJECT_ROOT / "BENCHMARKS.md")
    report.render(result, args.out, markdown)
    print(f"bench: wrote {args.out / 'latest.json'} and {markdown}")


if __name__ == "__main__":
    main()
