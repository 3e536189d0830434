"""Hostile input for the fault matrix's burst: messages on the change topics that no decoder should take, built
from real change events of each table so that they reach every branch of the contracts."""

from __future__ import annotations

import json
import random
import time

from confluent_kafka import TopicPartition

from cdcf.contracts import change_topic
from cdcf.kafka_clients import reader
from cdcf.settings import Settings

TABLES = ("users", "transactions", "sessions", "reviews")
OWNER = {"transactions": "user_id", "sessions": "user_id", "reviews": "product_id", "users": "user_id"}
VALUE = {"transactions": "amount", "sessions": "duration_s", "reviews": "rating", "users": "income"}
WHEN = {"transactions": "created_at", "sessions": "started_at", "reviews": "created_at", "users": "updated_at"}
TEXT = {"transactions": "merchant", "sessions": "user_id", "reviews": "user_id", "users": "account_status"}


def hostile_messages(settings: Settings, count: int) -> list[tuple[str, bytes]]:
    """``count`` messages over the change topics: deep nesting, invalid UTF-8, truncated JSON, random bytes, and
    real change events of each table with a value that overflows, a year-1 or NUL-bearing value, an LSN past
    BIGINT, a ts_us past any date, an unknown op, a missing or mistyped image."""
    rng = random.Random(7)
    samples = {t: _real_event(settings, t) for t in TABLES}

    def mutate(doc: dict, table: str, n: int) -> bytes:
        doc = json.loads(json.dumps(doc))
        after, source = doc.get("after") or {}, doc["source"]
        value = VALUE[table]
        [
            lambda: after.update({value: "1e30"}),
            lambda: after.update({value: 10**40}),
            lambda: after.update({WHEN[table]: "0001-01-01T00:00:00+05:00"}),
            lambda: source.update(ts_us=10**20, ts_ms=10**17),
            lambda: source.update(lsn=2**63),
            lambda: after.update({TEXT[table]: "a\x00b"}),
            lambda: doc.update(op="x"),
            lambda: doc.update(after=[1, 2]),
            lambda: after.pop(OWNER[table], None),
            lambda: source.update(ts_us=None, ts_ms="yesterday"),
        ][n % 10]()
        return json.dumps(doc).encode()

    shapes = [
        lambda t, n: b"[" * 200_000,
        lambda t, n: b"\xff\xfe" * 250_000,
        lambda t, n: b'{"before": null, "after": {',
        lambda t, n: rng.randbytes(rng.randint(1, 2000)),
    ]
    out = []
    for n in range(count):
        table = TABLES[n % len(TABLES)]
        topic = change_topic(settings.topic_prefix, table)
        out.append((topic, shapes[n % 4](table, n) if n % 14 < 4 else mutate(samples[table], table, n)))
    return out


def _real_event(settings: Settings, table: str) -> dict:
    """The last change event with an after image on ``table``'s topic."""
    topic = change_topic(settings.topic_prefix, table)
    consumer = reader(settings, "faults")
    try:
        end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        consumer.assign([TopicPartition(topic, 0, max(0, end - 1))])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is not None and not msg.error() and msg.value():
                doc = json.loads(msg.value())
                if doc.get("after"):
                    return doc
        raise RuntimeError(f"no change event to start from on {topic}")
    finally:
        consumer.close()
