"""The streaming job's JVM decoder gives every message the archiver's verdict: the same change, or a dead letter
with the same reason (tests/cdc_cases.py, and a fuzz corpus of 10,000 hostile messages)."""

from __future__ import annotations

from cdcf.decoder import Change, DeadLetter, Position, decode
from streaming.decode import decode as decode_jvm
from tests.cdc_cases import BAD_INPUTS, PREFIX, TOPIC, encoded, envelope, good_update, row
from tests.fuzz import assert_total, corpus

KEEP = ("user_id", "product_id", "amount", "merchant", "created_at", "duration_s", "income", "signup_date")


def _verdicts(spark, cases: list[tuple[str, bytes | None]]) -> dict[int, dict]:
    records = spark.createDataFrame(
        [(topic, 0, n, value) for n, (topic, value) in enumerate(cases)],
        "topic string, partition int, offset long, value binary",
    )
    return {r["offset"]: r.asDict() for r in decode_jvm(records, PREFIX, KEEP).collect()}


def _typed(change: Change, image: dict | None, column: str):
    """A Python-decoded value as the JVM decoder types it: longs (unscaled decimals, epoch us, days) or text."""
    value = None if image is None else image.get(column)
    if value is None or isinstance(value, int | str):
        return value
    if hasattr(value, "as_tuple"):  # Decimal
        return int(value.scaleb(-value.as_tuple().exponent))
    if hasattr(value, "hour"):  # datetime
        return int(value.timestamp()) * 1_000_000 + value.microsecond
    return (value - value.__class__(1970, 1, 1)).days  # date


def _assert_same(cases, jvm) -> None:
    differ = []
    for n, (topic, value) in enumerate(cases):
        py = decode(PREFIX, Position(topic, 0, n), None, value)
        got = jvm.get(n)
        if py is None or got is None:
            if (py is None) != (got is None):
                differ.append((n, py, got))
        elif isinstance(py, DeadLetter):
            if got["reason"] != py.reason:
                differ.append((n, py.reason, got["reason"]))
        else:
            want = {
                "reason": None,
                "op": py.op,
                "key": py.key,
                "lsn": py.lsn,
                "commit_us": int(py.commit_ts.timestamp()) * 1_000_000 + py.commit_ts.microsecond,
                **{f"b_{c}": _typed(py, py.before, c) for c in KEEP},
                **{f"a_{c}": _typed(py, py.after, c) for c in KEEP},
            }
            if {k: got[k] for k in want} != want:
                differ.append((n, want, got))
    assert not differ, differ[:5]


def test_the_catalogue_gets_the_same_verdicts(spark):
    cases = [(topic, value) for _, topic, value, _ in BAD_INPUTS]
    cases += [
        (TOPIC, encoded(doc))
        for doc in (
            envelope(),
            good_update(),
            envelope("d", before=row(), after=None),
            {"schema": {}, "payload": envelope()},
            envelope("u", before=row(coupon=None), after=row(coupon="X1")),
        )
    ]
    cases.append((TOPIC, None))  # a tombstone: neither a change nor a dead letter
    jvm = _verdicts(spark, cases)
    _assert_same(cases, jvm)
    for n, (_, _, _, reason) in enumerate(BAD_INPUTS):
        assert jvm[n]["reason"] == reason


def test_ten_thousand_hostile_messages_get_the_same_verdicts(spark):
    """The seeded corpus: each Python verdict is total (tests/fuzz.py), and the JVM gives the same one."""
    cases = corpus()
    assert len(cases) == 10_000
    for n, (topic, value) in enumerate(cases):
        assert_total(decode(PREFIX, Position(topic, 0, n), b"k", value))
    jvm = _verdicts(spark, cases)
    _assert_same(cases, jvm)
    valid = sum(1 for r in jvm.values() if r["reason"] is None)
    assert 500 < valid < 9_500  # both kinds are well represented
