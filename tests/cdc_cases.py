"""Debezium envelopes for tests: a faithful good event, and the catalogue of bad inputs with their reasons."""

from __future__ import annotations

import json
from typing import Any

PREFIX = "cdc"
TOPIC = f"{PREFIX}.public.transactions"


def row(**changes: Any) -> dict[str, Any]:
    base = {
        "txn_id": 7,
        "user_id": 5,
        "product_id": 3,
        "amount": "12.50",
        "merchant": "acme",
        "created_at": "2026-11-27T17:16:42.146637Z",
        "updated_at": "2026-11-27T17:21:42.146637Z",
    }
    return {**base, **changes}


def envelope(op: str = "c", before: dict | None = None, after: dict | None = None, **source: Any) -> dict:
    """A Debezium 3.6 pgoutput envelope as the JSON converter writes it with schemas disabled."""
    return {
        "before": before,
        "after": after if after is not None or op == "d" else row(),
        "source": {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": PREFIX,
            "ts_ms": 1795800102151,
            "snapshot": "false",
            "db": "app",
            "ts_us": 1795800102151809,
            "schema": "public",
            "table": "transactions",
            "txId": 869,
            "lsn": 35841752,
            "xmin": None,
            **source,
        },
        "transaction": None,
        "op": op,
        "ts_ms": 1795800102404,
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

# (name, topic, raw value, the reason): the archiver's decoder and the streaming job's Spark SQL decoder must
# both dead-letter each of these with exactly this reason
AMOUNT = "transactions.amount"
BAD_INPUTS: list[tuple[str, str, bytes, str]] = [
    ("malformed JSON", TOPIC, b'{"before": null, "after": {', "malformed JSON"),
    ("not UTF-8", TOPIC, b"\xff\xfe\x00garbage", "malformed JSON"),
    ("invalid UTF-8 inside a string", TOPIC, encoded(envelope()).replace(b"acme", b"ac\xc3\x28me"), "malformed JSON"),
    ("200,000 open brackets", TOPIC, b"[" * 200_000, "malformed JSON"),
    ("deeply nested value", TOPIC, encoded(envelope()).replace(b'"acme"', b"[" * 5000 + b"]" * 5000), "malformed JSON"),
    ("duplicate key", TOPIC, encoded(envelope()).replace(b'"op": "c"', b'"op": "c", "op": "u"'), "malformed JSON"),
    ("NaN", TOPIC, encoded(envelope()).replace(b'"txId": 869', b'"txId": NaN'), "malformed JSON"),
    (
        "number literal of 2,000 digits",
        TOPIC,
        encoded(envelope()).replace(b'"txId": 869', b'"txId": ' + b"9" * 2000),
        "malformed JSON",
    ),
    ("lone surrogate escape", TOPIC, encoded(envelope()).replace(b'"acme"', b'"ac\\ud800me"'), "malformed JSON"),
    ("JSON array", TOPIC, b"[1, 2, 3]", "not a Debezium change event: expected an object with 'op' and 'source'"),
    (
        "foreign producer, plain object",
        TOPIC,
        encoded({"id": 1, "amount": 5}),
        "not a Debezium change event: expected an object with 'op' and 'source'",
    ),
    (
        "foreign connector",
        TOPIC,
        _with(("source", "connector"), "mysql"),
        "foreign producer: source.connector and source.name are not postgresql and 'cdc'",
    ),
    (
        "other topic prefix",
        TOPIC,
        _with(("source", "name"), "elsewhere"),
        "foreign producer: source.connector and source.name are not postgresql and 'cdc'",
    ),
    ("source not an object", TOPIC, _with(("source",), [1]), "'source' is not an object"),
    (
        "source table mismatch",
        TOPIC,
        _with(("source", "table"), "reviews"),
        "source table does not match the topic's public.transactions",
    ),
    (
        "missing op",
        TOPIC,
        _with(("op",), _DROP),
        "not a Debezium change event: expected an object with 'op' and 'source'",
    ),
    ("unknown op", TOPIC, _with(("op",), "x"), "unsupported op: expected one of c, u, d, r"),
    ("op an object", TOPIC, _with(("op",), {"c": 1}), "unsupported op: expected one of c, u, d, r"),
    ("truncate event", TOPIC, _with(("op",), "t"), "unsupported op: expected one of c, u, d, r"),
    ("missing lsn", TOPIC, _with(("source", "lsn"), _DROP), "source.lsn missing or not an integer in 0 .. 2^63-1"),
    ("lsn of 2^63", TOPIC, _with(("source", "lsn"), 2**63), "source.lsn missing or not an integer in 0 .. 2^63-1"),
    (
        "snapshot read at lsn 0",
        TOPIC,
        encoded(envelope("r", snapshot="true", lsn=0)),
        "source.lsn of a snapshot read (op r) is 0: it must be at least 1",
    ),
    ("txId a string", TOPIC, _with(("source", "txId"), "869"), "source.txId is not an integer"),
    (
        "no commit time",
        TOPIC,
        encoded(
            {**envelope(), "source": {k: v for k, v in envelope()["source"].items() if k not in ("ts_ms", "ts_us")}}
        ),
        "source has no commit time (ts_us / ts_ms)",
    ),
    (
        "commit time of 2^62 us",
        TOPIC,
        _with(("source", "ts_us"), 2**62),
        "source commit time (ts_us / ts_ms) is out of range",
    ),
    (
        "commit time of 10^20 us and no ts_ms",
        TOPIC,
        encoded(
            {
                **envelope(),
                "source": {**{k: v for k, v in envelope()["source"].items() if k != "ts_ms"}, "ts_us": 10**20},
            }
        ),
        "source has no commit time (ts_us / ts_ms)",
    ),
    ("after not an object", TOPIC, _with(("after",), "row"), "'after' is not an object"),
    ("create without after", TOPIC, encoded({**envelope(), "after": None}), "op 'c' without an 'after' image"),
    (
        "update without before",
        TOPIC,
        _with(("before",), None, op="u"),
        "op 'u' without a 'before' image: is the table REPLICA IDENTITY FULL?",
    ),
    (
        "delete without before",
        TOPIC,
        encoded(envelope("d", before=None, after=None)),
        "op 'd' without a 'before' image",
    ),
    (
        "wrong type, integer as string",
        TOPIC,
        _with(("after", "user_id"), "5"),
        "wrong type for transactions.user_id: expected an integer, got a string",
    ),
    (
        "wrong type, boolean amount",
        TOPIC,
        _with(("after", "amount"), True),
        f"wrong type for {AMOUNT}: expected a decimal string, got a boolean",
    ),
    (
        "amount as a JSON number of 10^40",
        TOPIC,
        _with(("after", "amount"), 10**40),
        f"wrong type for {AMOUNT}: expected a decimal string, got a number",
    ),
    (
        "integer as a fraction",
        TOPIC,
        _with(("after", "user_id"), 5.0),
        "transactions.user_id is not an integer in the range of long",
    ),
    (
        "integer out of range",
        TOPIC,
        _with(("after", "user_id"), 2**70),
        "transactions.user_id is not an integer in the range of long",
    ),
    ("not a decimal", TOPIC, _with(("after", "amount"), "12,50"), f"{AMOUNT} is not a decimal"),
    ("decimal with an exponent", TOPIC, _with(("after", "amount"), "1e30"), f"{AMOUNT} is not a decimal"),
    ("decimal overflow", TOPIC, _with(("after", "amount"), "12345678901.00"), f"{AMOUNT} exceeds NUMERIC(12,2)"),
    ("too many decimal places", TOPIC, _with(("after", "amount"), "1.234"), f"{AMOUNT} has more than 2 decimal places"),
    (
        "missing field",
        TOPIC,
        _with(("after", "created_at"), _DROP),
        "schema drift in transactions.after: missing column(s) created_at (dropped or renamed upstream?)",
    ),
    ("null in NOT NULL", TOPIC, _with(("after", "amount"), None), f"null in NOT NULL column {AMOUNT}"),
    ("NUL in a string", TOPIC, _with(("after", "merchant"), "ac\x00me"), "NUL character in transactions.merchant"),
    (
        "oversized text",
        TOPIC,
        _with(("after", "merchant"), "m" * 20_000),
        "oversized value in transactions.merchant: more than 10000 characters",
    ),
    (
        "naive timestamp",
        TOPIC,
        _with(("after", "created_at"), "2026-11-27T17:16:42"),
        "transactions.created_at has no time zone",
    ),
    (
        "garbled timestamp",
        TOPIC,
        _with(("after", "created_at"), "yesterday"),
        "transactions.created_at is not an ISO-8601 timestamp",
    ),
    (
        "month 13",
        TOPIC,
        _with(("after", "created_at"), "2026-13-27T17:16:42Z"),
        "transactions.created_at is not an ISO-8601 timestamp",
    ),
    (
        "year 1 with an offset",
        TOPIC,
        _with(("after", "created_at"), "0001-01-01T00:00:00+05:00"),
        "transactions.created_at is out of range (years 1 to 9999 in UTC)",
    ),
    (
        "unavailable TOAST value",
        TOPIC,
        _with(("after", "merchant"), "__debezium_unavailable_value"),
        "transactions.merchant arrived as __debezium_unavailable_value (TOASTed value without REPLICA IDENTITY FULL)",
    ),
    (
        "unknown table",
        f"{PREFIX}.public.payments",
        encoded(envelope(table="payments")),
        "unknown table 'payments': no contract in schemas/",
    ),
    (
        "oversized message",
        TOPIC,
        _with(("after", "merchant"), "m" * 600_000),
        "oversized message: more than 512000 bytes",
    ),
    ("400 KB of invalid UTF-8", TOPIC, b"\xff" * 400_000, "malformed JSON"),
]


def good_update() -> dict:
    return envelope("u", before=row(), after=row(amount="13.75", user_id=6))
