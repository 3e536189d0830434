"""The streaming job's own capacity, with the source and Debezium idle: a pre-filled set of change topics (their
own prefix) replayed by the job's pipeline from a fresh checkpoint, once with two executor cores and once with one.

    .venv/bin/python -m bench.stream --changes 1000000 --users 100000 --products 10000

Keys: ``stream_drain_changes_per_s`` (two cores), ``stream_cpu_us_per_change`` (CPU of the job's processes, driver
JVM and Python workers, per change), ``stream_scaling_ratio`` (the drain with two cores over the drain with one),
``stream_state_bytes_per_entity`` (the state store's files over the entities), ``metrics_overhead_pct`` (how much
slower the drain runs with the metrics and feature checks than without them, in percent). The feature rows go to a
scratch offline database and to Redis on a fresh id range, as a real replay would write them; the live streaming job is
stopped meanwhile, so that the drain has the cores to itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cdcf import kafka_clients
from cdcf.contracts import change_topic
from cdcf.feast_config import create_offline_tables
from cdcf.settings import Settings, load_settings
from ops.stack import kafka, postgres
from ops.stack.background import STREAMING
from streaming.job import tables

SCRATCH_DB = "cdcf_bench_stream"
PARTITIONS = 2  # of each bench topic: the read is split between two tasks (and two cores)


def envelopes(prefix: str, changes: int, users: int, products: int, base: int, seed: int):
    """``changes`` Debezium events like the workload's: transactions (inserts, amount and owner updates, deletes),
    sessions, reviews and profile upserts, over ``users`` users and ``products`` products, commits over the last
    day and event times over the last 30 days. Yields (topic, key, value)."""
    rnd = random.Random(seed)
    now = datetime.now(UTC) - timedelta(days=1)
    live: dict[int, dict] = {}
    lsn = 10**9
    for n in range(changes):
        lsn += 8
        commit = now + timedelta(microseconds=int(86_400e6 * n / changes))
        pick = rnd.random()
        user, product = base + rnd.randrange(users), base + rnd.randrange(products)
        created = (commit - timedelta(seconds=rnd.randrange(30 * 86_400))).isoformat().replace("+00:00", "Z")
        if pick < 0.7:
            table, op, before = "transactions", "c", None
            if live and rnd.random() < 0.3:
                key = rnd.choice(list(live)) if len(live) < 64 else base + rnd.randrange(n)
                before = live.get(key)
            if before is not None:
                op = "d" if rnd.random() < 0.2 else "u"
                after = (
                    None
                    if op == "d"
                    else {
                        **before,
                        "amount": f"{rnd.randrange(100, 99999) / 100:.2f}",
                        "user_id": user if rnd.random() < 0.3 else before["user_id"],
                    }
                )
            else:
                key = base + n
                after = {
                    "txn_id": key,
                    "user_id": user,
                    "product_id": product,
                    "amount": f"{rnd.randrange(100, 99999) / 100:.2f}",
                    "merchant": "bench",
                    "created_at": created,
                    "updated_at": None,
                }
            if after is None:
                live.pop(key, None)
            else:
                live[key] = after
                if len(live) > 50_000:
                    live.pop(next(iter(live)))
        elif pick < 0.85:
            table, op, before, key = "sessions", "c", None, base + n
            after = {"session_id": key, "user_id": user, "started_at": created, "duration_s": rnd.randrange(1, 3600)}
        elif pick < 0.95:
            table, op, before, key = "reviews", "c", None, base + n
            after = {
                "review_id": key,
                "product_id": product,
                "user_id": user,
                "rating": rnd.randrange(1, 6),
                "created_at": created,
            }
        else:
            table, op, before, key = "users", "r", None, user
            after = {
                "user_id": user,
                "age": rnd.randrange(18, 90),
                "income": f"{rnd.randrange(10**6) / 100:.2f}",
                "account_status": "active",
                "signup_date": 19000,
                "updated_at": None,
            }
        source = {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": prefix,
            "db": "app",
            "ts_ms": int(commit.timestamp() * 1000),
            "ts_us": int(commit.timestamp() * 1e6),
            "schema": "public",
            "table": table,
            "txId": lsn // 8,
            "lsn": lsn,
        }
        yield (
            change_topic(prefix, table),
            json.dumps({f"{table}_key": key}).encode(),
            json.dumps({"before": before, "after": after, "source": source, "op": op}).encode(),
        )


def prefill(settings: Settings, prefix: str, changes: int, users: int, products: int, base: int, seed: int) -> dict:
    topics = [change_topic(prefix, t) for t in tables()]
    kafka.ensure_topics(settings, topics, partitions=PARTITIONS)
    producer = kafka_clients.producer(
        settings,
        "admin",
        **{
            "linger.ms": 50,
            "batch.size": 1 << 20,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        },
    )
    started = time.monotonic()
    for topic, key, value in envelopes(prefix, changes, users, products, base, seed):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.1)
    producer.flush()
    return {"prefill_s": round(time.monotonic() - started, 1)}


def drain(settings: Settings, prefix: str, cores: int, workdir: Path, metrics: bool = True) -> dict:
    """One replay in a process of its own (Spark's master is fixed per process): its JSON result. ``metrics``
    off: without the per-row feature checks and freshness counts (their cost is the difference)."""
    name = f"{cores}{'' if metrics else '-no-metrics'}"
    out = workdir / f"drain-{name}.json"
    env = {
        **os.environ,
        "CDCF_TOPIC_PREFIX": prefix,
        "CDCF_OFFLINE_DB": SCRATCH_DB,
        "CDCF_SPARK_MASTER": f"local[{cores}]",
        "CDCF_METRICS_ENABLED": str(metrics).lower(),
    }
    subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.stream",
            "--drain-into",
            str(out),
            "--checkpoint",
            str(workdir / f"checkpoint-{name}"),
            *(["--state-bytes"] if cores == 2 and metrics else []),
        ],
        env=env,
        check=True,
    )
    return json.loads(out.read_text())


def _process_tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of ``root`` and every live descendant (the driver JVM, Python workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, todo = 0.0, [root]
    tick = os.sysconf("SC_CLK_TCK")
    while todo:
        pid = todo.pop()
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        todo.extend(children.get(pid, []))
    return total


def run_drain(out: Path, checkpoint: Path, state_bytes: bool) -> None:
    """In the drain's own process: the job's query over everything in the topics (availableNow), timed; then, if
    ``state_bytes``, the size of its state (minutes: every state variable is read back)."""
    from streaming.job import StreamJob, build_stream, stream_session

    settings = load_settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = StreamJob(settings, guard_online=False)  # the drain times the engine, not the online store's recovery
    spark = stream_session(settings, "cdcf-bench-drain")
    spark.sparkContext.setLogLevel("ERROR")
    cpu_before, started = _process_tree_cpu_s(os.getpid()), time.monotonic()
    query = build_stream(
        spark, settings, job.write_batch, checkpoint=checkpoint, available_now=True, kafka_role="admin"
    )  # its scratch topics are no reader's
    query.awaitTermination()
    elapsed, cpu = time.monotonic() - started, _process_tree_cpu_s(os.getpid()) - cpu_before
    progress = query.recentProgress
    changes = sum(p["numInputRows"] for p in progress)
    state_bytes = _state_bytes(spark, checkpoint) if state_bytes else None
    out.write_text(
        json.dumps(
            {
                "cores": int(settings.spark_master.removeprefix("local[").removesuffix("]")),
                "changes": changes,
                "seconds": elapsed,
                "changes_per_s": changes / elapsed,
                "cpu_s": cpu,
                "batches": len(progress),
                "emits": job.totals["emits"],
                "feature_rows": job.totals["rows_written"],
                "state_files_bytes": state_bytes,
                "state_operator": progress[-1]["stateOperators"][0]
                if progress and progress[-1]["stateOperators"]
                else {},
            }
        )
    )
    spark.stop()


def _state_bytes(spark, checkpoint: Path) -> int:
    """Bytes of the engine's state after the drain: every key and value of every state variable (not Spark's timer
    index), read back with Spark's state data source (not the checkpoint's files, which also hold every batch's
    changelog)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    def sizes(column, kind) -> list:
        if isinstance(kind, T.StructType):
            return [s for f in kind.fields for s in sizes(column[f.name], f.dataType)]
        if isinstance(kind, T.BinaryType | T.StringType):
            return [F.coalesce(F.octet_length(column), F.lit(0))]
        return [F.lit(4 if isinstance(kind, T.IntegerType) else 1 if isinstance(kind, T.BooleanType) else 8)]

    variables = json.loads(spark.read.format("state-metadata").load(str(checkpoint)).first()["operatorProperties"])
    total = 0
    for variable in variables["stateVariables"]:
        if variable["stateName"].startswith("$"):  # Spark's own timer index (one timer per entity), unreadable here
            continue
        state = spark.read.format("statestore").option("stateVarName", variable["stateName"]).load(str(checkpoint))
        parts = [s for f in state.schema.fields if f.name != "partition_id" for s in sizes(F.col(f.name), f.dataType)]
        total += state.select(sum(parts[1:], parts[0]).alias("n")).agg(F.sum("n")).first()[0] or 0
    return total


def stream_phase(settings: Settings, changes: int, users: int, products: int, seed: int) -> dict:
    """Prefill, then drain with two cores and with one; the section-6 keys and the runs behind them."""
    prefix = f"bench{seed}_{time.time_ns()}"  # topics of this run alone, deleted after it
    base = random.Random(seed).randrange(1, 9000) * 10**11 + 5 * 10**10
    _create_scratch(settings)
    workdir = Path(tempfile.mkdtemp(prefix="cdcf-drain-"))
    try:
        result = {
            "stream_workload": {
                "changes": changes,
                "users": users,
                "products": products,
                "entity_base": base,
                "topic_partitions": PARTITIONS,
                **prefill(settings, prefix, changes, users, products, base, seed),
            }
        }
        STREAMING.stop(settings)  # the live job would share the cores: the drain measures the job alone
        try:
            runs = {cores: drain(settings, prefix, cores, workdir) for cores in (2, 1)}
            runs["2, metrics off"] = drain(settings, prefix, 2, workdir, metrics=False)
        finally:
            STREAMING.start(settings)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        kafka.delete_topics(settings, [change_topic(prefix, t) for t in tables()])
    two, one = runs[2], runs[1]
    entities = users + products
    result.update(
        {
            "stream_drain_changes_per_s": round(two["changes_per_s"], 1),
            "stream_cpu_us_per_change": round(1e6 * two["cpu_s"] / two["changes"], 1),
            "stream_scaling_ratio": round(two["changes_per_s"] / one["changes_per_s"], 3),
            "stream_state_bytes_per_entity": round(two["state_files_bytes"] / entities, 1),
            # what the metrics (feature checks, freshness counts) cost the drain: the goal is under 3 %
            "metrics_overhead_pct": round(
                100 * (1 - two["changes_per_s"] / runs["2, metrics off"]["changes_per_s"]), 1
            ),
            "stream_drain_runs": runs,
        }
    )
    return result


def _create_scratch(settings: Settings) -> None:
    postgres.ensure_database(settings, SCRATCH_DB)
    create_offline_tables(settings.model_copy(update={"offline_db": SCRATCH_DB}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--drain-into", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--state-bytes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drain_into:
        run_drain(args.drain_into, args.checkpoint, args.state_bytes)
        return
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    print(json.dumps(stream_phase(load_settings(), args.changes, args.users, args.products, seed), indent=2))


if __name__ == "__main__":
    main()
