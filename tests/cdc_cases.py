"""Debezium envelopes for tests: a faithful good event, and the catalogue of bad inputs with their reasons."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "cdc"
TOPIC = f"{PREFIX}.public.transactions"


def row(**changes: Any) -> dict[str, Any]:
    base = {"txn_id": 7, "user_id": 5, "product_id": 3, "amount": "12.50", "merchant": "acme",
            "created_at": "2026-11-27T17:16:42.146637Z", "updated_at": "2026-11-27T17:21:42.146637Z"}
    return {**base, **changes}


def envelope(op: str = "c", before: dict | None = None, after: dict | None = None, **source: Any) -> dict:
    """A Debezium 3.6 pgoutput envelope as the JSON converter writes it with schemas disabled."""
    return {
        "before": before, "after": after if after is not None or op == "d" else row(),
        "source": {"version": "3.6.1.Final", "connector": "postgresql", "name": PREFIX,
                   "ts_ms": 1795800102151, "snapshot": "false", "db": "app", "ts_us": 1795800102151809,
                   "schema": "public", "table": "transactions", "txId": 869, "lsn": 35841752, "xmin": None,
                   **source},
        "transaction": None, "op": op, "ts_ms": 1795800102404,
    }


def encoded(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _with(path: tuple[str, ...], value: Any, op: str = "c") -> bytes:
    doc = envelope(op, before=row() if op in "ud" else None, after=None if op == "d" else row())
    target = doc
    for key in path[:-1]:
        target = target[key]
    if value is _DROP:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return encoded(doc)


_DROP = object()

# (name, topic, raw value, fragment of the reason)
BAD_INPUTS: list[tuple[str, str, bytes, str]] = [
    ("malformed JSON", TOPIC, b'{"before": null, "after": {', "malformed JSON"),
    ("not UTF-8", TOPIC, b"\xff\xfe\x00garbage", "malformed JSON"),
    ("JSON array", TOPIC, b"[1, 2, 3]", "not a Debezium change event"),
    ("foreign producer, plain object", TOPIC, encoded({"id": 1, "amount": 5}), "not a Debezium change event"),
    ("foreign connector", TOPIC, _with(("source", "connector"), "mysql"), "foreign producer"),
    ("other topic prefix", TOPIC, _with(("source", "name"), "elsewhere"), "foreign producer"),
    ("source table mismatch", TOPIC, _with(("source", "table"), "reviews"), "does not match the topic"),
    ("missing op", TOPIC, _with(("op",), _DROP), "not a Debezium change event"),
    ("unknown op", TOPIC, _with(("op",), "x"), "unsupported op 'x'"),
    ("truncate event", TOPIC, _with(("op",), "t"), "unsupported op 't'"),
    ("missing lsn", TOPIC, _with(("source", "lsn"), _DROP), "source.lsn missing"),
    ("no commit time", TOPIC, encoded({**envelope(), "source": {
        k: v for k, v in envelope()["source"].items() if k not in ("ts_ms", "ts_us")}}), "no commit time"),
    ("create without after", TOPIC, encoded({**envelope(), "after": None}), "without an 'after' image"),
    ("update without before", TOPIC, _with(("before",), None, op="u"), "REPLICA IDENTITY FULL"),
    ("delete without before", TOPIC, encoded(envelope("d", before=None, after=None)), "without a 'before'"),
    ("wrong type, integer as string", TOPIC, _with(("after", "user_id"), "5"), "expected an integer"),
    ("wrong type, boolean amount", TOPIC, _with(("after", "amount"), True), "expected a decimal string"),
    ("not a decimal", TOPIC, _with(("after", "amount"), "12,50"), "is not a decimal"),
    ("decimal overflow", TOPIC, _with(("after", "amount"), "12345678901.00"), "exceeds NUMERIC(12,2)"),
    ("too many decimal places", TOPIC, _with(("after", "amount"), "1.234"), "more than 2 decimal places"),
    ("integer out of range", TOPIC, _with(("after", "user_id"), 2**70), "out of range"),
    ("missing field", TOPIC, _with(("after", "created_at"), _DROP), "missing column(s) created_at"),
    ("unexpected field", TOPIC, _with(("after", "coupon"), "X1"), "unexpected column(s) coupon"),
    ("null in NOT NULL", TOPIC, _with(("after", "amount"), None), "null in NOT NULL column transactions.amount"),
    ("oversized text", TOPIC, _with(("after", "merchant"), "m" * 20_000), "oversized value"),
    ("naive timestamp", TOPIC, _with(("after", "created_at"), "2026-11-27T17:16:42"), "has no time zone"),
    ("garbled timestamp", TOPIC, _with(("after", "created_at"), "yesterday"), "is not an ISO-8601 timestamp"),
    ("unavailable TOAST value", TOPIC, _with(("after", "merchant"), "__debezium_unavailable_value"),
     "__debezium_unavailable_value"),
    ("unknown table", f"{PREFIX}.public.payments", encoded(envelope(table="payments")), "unknown table 'payments'"),
    ("oversized message", TOPIC, _with(("after", "merchant"), "m" * 600_000), "oversized message"),
]


def good_update() -> dict:
    return envelope("u", before=row(), after=row(amount="13.75", user_id=6))
