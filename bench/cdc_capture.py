"""CDC capture benchmark: COMMIT -> Kafka latency at a fixed rate, and sustained changes/s into Kafka and
into the changelog archive. Needs the local stack (`make up`). Writes bench/results/cdc_capture.json.

    .venv/bin/python bench/cdc_capture.py --rate 1000 --seconds 30 --bulk 200000
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import threading
import time
from decimal import Decimal
from pathlib import Path

from confluent_kafka import TopicPartition
from psycopg2.extras import execute_values

from cdcf import kafka_clients, pg_clients
from cdcf.contracts import change_topic
from cdcf.settings import load_settings
from ops.stack import proc
from ops.stack.background import ARCHIVER, STREAMING

OUT = Path(__file__).parent / "results" / "cdc_capture.json"


def latency_run(settings, rate: float, seconds: float) -> dict:
    """One INSERT transaction every 1/rate s; each commit's wall time against the time its event is consumed."""
    topic = change_topic(settings.topic_prefix, "transactions")
    consumer = kafka_clients.consumer(
        settings, "admin", f"bench-{time.time()}", **{"enable.auto.commit": False, "fetch.wait.max.ms": 5}
    )
    _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    consumer.assign([TopicPartition(topic, 0, high)])
    base = random.randrange(10**13, 10**14)
    committed: dict[int, float] = {}
    received: dict[int, float] = {}
    n = int(rate * seconds)

    def write() -> None:
        conn = pg_clients.connect(settings)
        cur = conn.cursor()
        start = time.monotonic()
        for i in range(n):
            time.sleep(max(0.0, start + i / rate - time.monotonic()))
            cur.execute("INSERT INTO transactions VALUES (%s, 1, 1, 9.99, 'bench', now(), now())", (base + i,))
            conn.commit()
            committed[base + i] = time.time()
        conn.close()

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + seconds + 60
    while len(received) < n and time.monotonic() < deadline:
        msg = consumer.poll(0.05)
        if msg is not None and not msg.error() and msg.value() is not None:
            key = json.loads(msg.key())["txn_id"]
            if base <= key < base + n:
                received.setdefault(key, time.time())
    writer.join()
    consumer.close()
    lat = sorted(received[k] - committed[k] for k in received if k in committed)
    return {
        "rate": rate,
        "changes": n,
        "received": len(lat),
        "commit_to_kafka_p50_ms": 1000 * statistics.median(lat),
        "commit_to_kafka_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "commit_to_archive": archive_latency(settings, base, base + n - 1),
    }


def archive_latency(settings, low: int, high: int) -> dict:
    """COMMIT (source commit time) -> row durable in the archive (its insert time), both on Postgres's clock."""
    sql = (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), percentile_cont(0.99) WITHIN GROUP "
        "(ORDER BY ms), count(*) FROM (SELECT extract(epoch FROM archived_at - commit_ts) * 1000 AS ms "
        "FROM cdc_changelog WHERE source_table = 'transactions' AND row_key BETWEEN %s AND %s) t"
    )
    deadline = time.monotonic() + 60
    while True:
        with pg_clients.offline_session(settings) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, (low, high))
                p50, p99, count = cur.fetchone()
        if count >= high - low + 1 or time.monotonic() > deadline:
            return {"p50_ms": p50, "p99_ms": p99, "rows": count}
        time.sleep(1)


def _capture(settings, changes: int) -> tuple[int, float, float]:
    """Commit ``changes`` inserts as fast as Postgres takes them; the first key, and the seconds until they were
    committed and until all were in Kafka."""
    topic = TopicPartition(change_topic(settings.topic_prefix, "transactions"), 0)
    probe = kafka_clients.consumer(settings, "admin", "bench-probe")
    _, start_high = probe.get_watermark_offsets(topic, timeout=10)
    base = random.randrange(10**13, 10**14)
    conn = pg_clients.connect(settings)
    started = time.monotonic()
    with conn.cursor() as cur:
        for chunk in range(0, changes, 5000):
            execute_values(
                cur,
                "INSERT INTO transactions VALUES %s",
                [
                    (base + i, base + i % 2000, base + i % 50, Decimal("9.99"), "bench", "2026-11-20T00:00:00Z", None)
                    for i in range(chunk, min(changes, chunk + 5000))
                ],
                page_size=5000,
            )
            conn.commit()
    committed_s = time.monotonic() - started
    conn.close()
    while probe.get_watermark_offsets(topic, timeout=10, cached=False)[1] - start_high < changes:
        time.sleep(0.05)
    probe.close()
    return base, committed_s, time.monotonic() - started


def _await_archive(settings, base: int, changes: int) -> float:
    """Wait until the ``changes`` from ``base`` on are archived; the seconds since the first of them was (on
    Postgres's clock: the archive's insert time is its batch's transaction start)."""
    offline = pg_clients.connect_offline(settings)
    try:
        while True:
            with offline, offline.cursor() as cur:
                cur.execute(
                    "SELECT count(*), extract(epoch FROM clock_timestamp() - min(archived_at)) FROM "
                    "cdc_changelog WHERE source_table = 'transactions' AND row_key BETWEEN %s AND %s",
                    (base, base + changes - 1),
                )
                count, since_first = cur.fetchone()
                if count >= changes:
                    return float(since_first)
            time.sleep(0.05)
    finally:
        offline.close()


def throughput_run(settings, changes: int) -> dict:
    """Commit ``changes`` inserts as fast as Postgres takes them; time until all are in Kafka and archived."""
    started = time.monotonic()
    base, committed_s, kafka_s = _capture(settings, changes)
    _await_archive(settings, base, changes)
    archive_s = time.monotonic() - started
    return {
        "changes": changes,
        "postgres_commit_s": committed_s,
        "into_kafka_s": kafka_s,
        "into_archive_s": archive_s,
        "kafka_changes_per_s": changes / kafka_s,
        "archive_changes_per_s": changes / archive_s,
    }


def await_stream(settings, timeout_s: float = 300) -> None:
    """Until the streaming job reports, after now, that it has read every change (so a run after this one does not
    share the cores with its catching up)."""
    status, since = STREAMING.status_file(settings), time.time()

    def caught_up() -> bool:
        state = json.loads(status.read_text()) if status.exists() else {}
        return state.get("at", 0) > since and state.get("behind") == 0

    proc.wait_until(caught_up, timeout_s=timeout_s, what="the streaming job to catch up")


def backlog_run(settings, changes: int) -> dict:
    """The archiver's own rate, which the run above cannot show (the archive cannot finish before Kafka has the
    changes): ``changes`` inserts captured while the archiver is stopped, then the seconds from its first write to
    its last, and apart from them its start (process, workers, group join)."""
    ARCHIVER.stop(settings)
    try:
        base, _, kafka_s = _capture(settings, changes)
    finally:
        started = time.monotonic()
        ARCHIVER.start(settings)
    writing_s = _await_archive(settings, base, changes)
    return {
        "changes": changes,
        "into_kafka_s": kafka_s,
        "start_s": time.monotonic() - started - writing_s,
        "writing_s": writing_s,
        "archive_changes_per_s": changes / writing_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--bulk", type=int, default=200_000)
    args = parser.parse_args()
    settings = load_settings()
    result = {
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores",
        "latency": latency_run(settings, args.rate, args.seconds),
        "throughput": throughput_run(settings, args.bulk),
    }
    await_stream(settings)
    result["archive_backlog"] = backlog_run(settings, args.bulk)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
