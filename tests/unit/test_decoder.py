from __future__ import annotations

import csv
import io
import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings

from cdcf import contracts
from cdcf.decoder import DEAD_LETTER_PAYLOAD, Change, DeadLetter, Position, decode
from connectors.archive import archive_row, encode
from tests.cdc_cases import BAD_INPUTS, PREFIX, TOPIC, encoded, envelope, good_update, row
from tests.fuzz import assert_total, messages

AT = Position(TOPIC, 0, 42)


def test_create_is_typed_exactly():
    change = decode(PREFIX, AT, b'{"txn_id":7}', encoded(envelope()))
    assert change == Change(
        table="transactions",
        op="c",
        key=7,
        before=None,
        after={
            "txn_id": 7,
            "user_id": 5,
            "product_id": 3,
            "amount": Decimal("12.50"),
            "merchant": "acme",
            "created_at": datetime(2026, 11, 27, 17, 16, 42, 146637, tzinfo=UTC),
            "updated_at": datetime(2026, 11, 27, 17, 21, 42, 146637, tzinfo=UTC),
        },
        lsn=35841752,
        tx_id=869,
        commit_ts=datetime(2026, 11, 27, 17, 21, 42, 151809, tzinfo=UTC),
        position=AT,
    )


def test_update_carries_the_full_before_image_and_an_owner_move():
    change = decode(PREFIX, AT, None, encoded(good_update()))
    assert change.op == "u" and change.before["user_id"] == 5 and change.after["user_id"] == 6
    assert change.before["amount"] == Decimal("12.50") and change.after["amount"] == Decimal("13.75")


def test_delete_keys_on_the_before_image_and_tombstones_are_skipped():
    change = decode(PREFIX, AT, None, encoded(envelope("d", before=row(txn_id=9), after=None)))
    assert (change.op, change.key, change.after) == ("d", 9, None)
    assert decode(PREFIX, AT, b'{"txn_id":9}', None) is None


def test_snapshot_reads_and_other_tables():
    users = {
        "user_id": 1,
        "age": None,
        "income": "100.5",
        "account_status": "active",
        "signup_date": 20000,
        "updated_at": None,
    }
    doc = envelope("r", after=users, table="users")
    change = decode(PREFIX, Position(f"{PREFIX}.public.users", 0, 0), None, encoded(doc))
    assert change.op == "r" and change.after["income"] == Decimal("100.50")
    assert change.after["signup_date"] == date(2024, 10, 4)  # 20,000 days after 1970-01-01


def test_a_snapshot_read_sits_just_before_its_lsn_where_streaming_resumes():
    """Debezium gives every snapshot record the snapshot's LSN, and the first change streamed after the snapshot
    can carry that same LSN (its WAL record starts right at the snapshot's point): the read must be the older."""
    read = decode(PREFIX, AT, None, encoded(envelope("r", snapshot="true", lsn=500)))
    streamed = decode(PREFIX, AT, None, encoded(good_update() | {"source": envelope(lsn=500)["source"]}))
    assert (read.lsn, streamed.lsn) == (499, 500)


def test_schemas_enabled_wrapper_is_accepted():
    change = decode(PREFIX, AT, None, encoded({"schema": {}, "payload": envelope()}))
    assert isinstance(change, Change) and change.key == 7


@pytest.mark.parametrize(("name", "topic", "value", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_becomes_a_dead_letter_with_its_reason(name, topic, value, reason):
    position = Position(topic, 3, 99)
    letter = decode(PREFIX, position, b"k", value)
    assert isinstance(letter, DeadLetter), name
    assert letter.reason == reason
    payload = letter.payload(datetime(2026, 1, 1, tzinfo=UTC))
    assert (payload["topic"], payload["partition"], payload["offset"], payload["key"]) == (topic, 3, 99, "k")


def test_a_column_added_upstream_is_ignored_and_named():
    change = decode(PREFIX, AT, None, encoded(envelope("u", before=row(), after=row(coupon="X1", amount="9.99"))))
    assert isinstance(change, Change) and change.ignored == ("coupon",)
    assert change.after == decode(PREFIX, AT, None, encoded(envelope(after=row(amount="9.99")))).after
    assert decode(PREFIX, AT, None, encoded(envelope())).ignored == ()


def test_there_are_at_least_twenty_kinds_of_bad_input():
    assert len({reason for *_, reason in BAD_INPUTS}) >= 20


@pytest.mark.parametrize(
    "doc",
    [
        envelope(),
        good_update(),
        envelope("d", before=row(), after=None),
        envelope("r", after=row(product_id=None, merchant=None, updated_at=None)),
    ],
    ids=["c", "u", "d", "r-with-nulls"],
)
def test_every_decoded_change_fits_its_avro_contract(doc):
    change = decode(PREFIX, AT, None, encoded(doc))
    contracts.validate("transactions", change.record())  # raises on any breach


def test_a_change_round_trips_through_its_avro_contract():
    change = decode(PREFIX, AT, None, encoded(good_update()))
    data = contracts.encode("transactions", change.record())
    back = contracts.decode("transactions", data)
    assert back["after"] == change.after and back["before"] == change.before
    assert back["commit_ts"] == change.commit_ts and back["op"] == "u"


def test_spark_schema_is_derived_from_the_avro_contract():
    from pyspark.sql import types as T

    schema = contracts.spark_schema("transactions")
    assert schema["op"].dataType == T.StringType() and not schema["op"].nullable
    after = schema["after"].dataType
    assert after["amount"].dataType == T.DecimalType(12, 2) and not after["amount"].nullable
    assert after["created_at"].dataType == T.TimestampType()
    assert after["product_id"].nullable and not after["user_id"].nullable
    assert [f.name for f in after.fields] == [c.name for c in contracts.row_contracts()["transactions"].columns]


def test_archive_row_keeps_decimals_exact_and_times_in_utc():
    change = decode(PREFIX, AT, None, encoded(good_update()))
    values = archive_row(change)
    assert values[:5] == ("transactions", 7, 35841752, "u", 869)
    assert '"amount":"13.75"' in values[7] and '"created_at":"2026-11-27T17:16:42.146637+00:00"' in values[7]
    assert values[8:] == (TOPIC, 0, 42)


def test_a_batch_encodes_to_csv_rows_that_read_back_as_its_archive_rows():
    """The archiver's batch (decoded in a worker): each change one CSV row that reads back as its archive row
    (quotes, commas, backslashes, line breaks and nulls included), dead letters with their reason, tombstones
    dropped, and per table the columns no contract names."""
    tricky = encoded(envelope(after=row(txn_id=11, merchant='Joe\'s "best", \\ shop\nline 2\t'), txId=None))
    extra = encoded(envelope(after={**row(txn_id=12), "added_upstream": 1}))
    batch = [
        (TOPIC, 0, 1, None, tricky),
        (TOPIC, 0, 2, None, b"{not json"),
        (TOPIC, 0, 3, b"k", None),
        (TOPIC, 0, 4, None, extra),
    ]
    out = encode(PREFIX, batch)
    rows = [
        archive_row(decode(PREFIX, Position(TOPIC, 0, offset), None, value))
        for _, _, offset, _, value in (batch[0], batch[3])
    ]
    assert out.changes == 2 and rows[0][4] is None
    assert list(csv.reader(io.StringIO(out.rows))) == [["" if v is None else str(v) for v in r] for r in rows]
    assert [(d.reason, d.position.offset) for d in out.dead] == [("malformed JSON", 2)]
    assert out.ignored == {"transactions": {"added_upstream"}}


@settings(max_examples=1_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(messages)
def test_the_decoder_is_total(message):
    """Whatever the bytes: a change that fits its Avro contract and the archive, or a capped dead letter. A new
    search each run, shrunk on failure; the seeded corpus of 10,000 gets the same check in test_decode_jvm.py, which
    draws it anyway."""
    topic, value = message
    assert_total(decode(PREFIX, Position(topic, 0, 1), b"k", value))


def test_a_dead_letter_is_capped_and_keeps_its_length():
    letter = decode(PREFIX, AT, b"k", b"\xff" * 400_000)
    payload = letter.payload(datetime(2026, 1, 1, tzinfo=UTC))
    assert payload["value_bytes"] == 400_000 and len(payload["value"]) == DEAD_LETTER_PAYLOAD
    assert len(json.dumps(payload).encode()) < 100_000
