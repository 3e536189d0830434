"""Hypothesis strategies for hostile change events: random bytes, random JSON, and valid Debezium envelopes with
parts replaced, dropped, added or their bytes mangled; a seeded corpus of them, and what every verdict on one must
be. Shared by the decoders' fuzz tests."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cdcf import contracts
from cdcf.decoder import Change, DeadLetter
from connectors.archive import archive_row
from tests.cdc_cases import PREFIX, TOPIC, envelope, row

TOPICS = (TOPIC,) * 12 + (f"{PREFIX}.public.users", f"{PREFIX}.public.payments", "other.topic")

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(
        [
            "12.50",
            "-0.01",
            "1e30",
            "12345678901.00",
            "1.234",
            "2026-11-27T17:16:42Z",
            "2026-11-27T17:16:42.146637+05:30",
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59-01:00",
            "2026-11-27 17:16:42",
            "2026-02-30T00:00:00Z",
            "c",
            "u",
            "d",
            "r",
            "postgresql",
            PREFIX,
            "public",
            "transactions",
            "__debezium_unavailable_value",
            "a\x00b",
            "\ud83d\ude00",
        ]
    ),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)

PATHS = [
    ("op",),
    ("source",),
    ("before",),
    ("after",),
    ("source", "lsn"),
    ("source", "ts_us"),
    ("source", "ts_ms"),
    ("source", "txId"),
    ("source", "table"),
    ("source", "connector"),
    ("source", "name"),
    ("source", "schema"),
]
PATHS += [(image, column) for image in ("before", "after") for column in row()] * 3


@st.composite
def mutated_envelopes(draw) -> bytes:
    op = draw(st.sampled_from("cudr"))
    doc: dict[str, Any] = envelope(op, before=row() if op in "ud" else None, after=None if op == "d" else row())
    for _ in range(draw(st.integers(0, 2))):
        path = draw(st.sampled_from(PATHS))
        target = doc
        for key in path[:-1]:
            target = target.get(key) if isinstance(target, dict) else None
        if not isinstance(target, dict):
            continue
        action = draw(st.sampled_from(["set", "drop", "add"]))
        if action == "set":
            target[path[-1]] = draw(json_values)
        elif action == "drop":
            target.pop(path[-1], None)
        else:
            target[draw(st.text(max_size=6))] = draw(json_values)
    data = json.dumps(doc).encode()
    if draw(st.integers(0, 4)) == 0:  # mangle the bytes too
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at + draw(st.integers(0, 3)) :]
    return data


messages = st.tuples(
    st.sampled_from(TOPICS),
    st.one_of(
        st.binary(max_size=64),
        json_values.map(lambda v: json.dumps(v).encode()),
        mutated_envelopes(),
        mutated_envelopes(),
        mutated_envelopes(),
        mutated_envelopes(),
    ),
)


def corpus(size: int = 10_000) -> list[tuple[str, bytes | None]]:
    """``size`` messages drawn with a fixed seed: the same corpus in every run (Hypothesis draws them at about
    400 a second here, so a test that needs them draws them once)."""
    found: list[tuple[str, bytes | None]] = []

    @seed(20261201)
    @settings(max_examples=size, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(messages)
    def collect(message):
        found.append(message)

    collect()
    return found


def assert_total(verdict: Change | DeadLetter | None) -> None:
    """The decoder's verdict on any bytes (never a tombstone here): a change that fits its Avro contract and the
    archive, or a capped dead letter with its reason."""
    if isinstance(verdict, Change):
        contracts.validate(verdict.table, verdict.record())
        archive_row(verdict)
        assert 0 <= verdict.lsn < 2**63
    else:
        assert isinstance(verdict, DeadLetter) and verdict.reason
        assert len(json.dumps(verdict.payload(datetime(2026, 1, 1, tzinfo=UTC))).encode()) < 200_000
