"""The streaming job's decoding core: Kafka records -> change rows, with exactly the decoder's idea of validity."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pyarrow as pa
import pytest

from streaming.changes import arrow_schema, decode_batch
from tests.cdc_cases import BAD_INPUTS, PREFIX, TOPIC, encoded, envelope, good_update, row


def _records(*messages: tuple[str, bytes | None]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"topic": topic, "partition": 0, "offset": i, "key": b"{}", "value": value}
         for i, (topic, value) in enumerate(messages)])


def test_a_create_update_and_delete_become_rows_of_the_mirrored_columns():
    delete = envelope("d", before=row(), after=None, lsn=35841800)
    batch = decode_batch(PREFIX, _records((TOPIC, encoded(envelope())), (TOPIC, encoded(good_update())),
                                          (TOPIC, encoded(delete)), (TOPIC, None)))  # None: the tombstone
    assert batch.schema == arrow_schema()
    rows = batch.to_pylist()
    assert len(rows) == 3
    created = rows[0]
    assert {k: v for k, v in created.items() if v is not None} == {
        "table": "transactions", "key": 7, "lsn": 35841752, "deleted": False,
        "commit_ts": datetime(2026, 11, 27, 17, 21, 42, 151809, tzinfo=UTC),
        "user_id": 5, "product_id": 3, "amount": Decimal("12.50"),
        "created_at": datetime(2026, 11, 27, 17, 16, 42, 146637, tzinfo=UTC)}
    assert (rows[1]["user_id"], rows[1]["amount"]) == (6, Decimal("13.75"))  # the after image
    assert rows[2]["deleted"] and rows[2]["user_id"] is None and rows[2]["lsn"] == 35841800


@pytest.mark.parametrize(("name", "topic", "value", "reason"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_what_the_archiver_dead_letters_yields_no_row(name, topic, value, reason):
    batch = decode_batch(PREFIX, _records((topic, value), (TOPIC, encoded(envelope()))))
    assert batch.column("key").to_pylist() == [7]  # the good message after it still counts


def test_tables_no_feature_reads_are_left_out():
    product = {"product_id": 1, "category": "x", "price": "1.00", "updated_at": "2026-11-27T17:16:42.146637Z"}
    value = encoded(envelope(after=product, table="products"))
    assert decode_batch(PREFIX, _records((f"{PREFIX}.public.products", value))).num_rows == 0
