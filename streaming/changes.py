"""Kafka records of Debezium's change topics -> one row per change, with the columns the features read.

Validity has one definition, the decoder (connectors.decoder) that the archiver uses too: a message it
dead-letters (the archiver routes it to the dead-letter topic with its reason) yields no row here, so the job never
stops on bad input and never counts what the archive refused. Spark runs the decoder on its executors, one Arrow
batch at a time (``mapInArrow``); ``decode_batch`` is the pure core.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T

from connectors.contracts import Column
from connectors.decoder import Change, Position, decode
from streaming.sql import mirrors

ARROW_TYPES = {"long": pa.int64(), "int": pa.int32(), "string": pa.string(), "date": pa.date32(),
               "timestamp": pa.timestamp("us", tz="UTC")}
SPARK_TYPES = {"long": T.LongType(), "int": T.IntegerType(), "string": T.StringType(), "date": T.DateType(),
               "timestamp": T.TimestampType()}
HEAD = (("table", pa.string(), T.StringType()), ("key", pa.int64(), T.LongType()), ("lsn", pa.int64(), T.LongType()),
        ("deleted", pa.bool_(), T.BooleanType()), ("commit_ts", pa.timestamp("us", tz="UTC"), T.TimestampType()))


def topics(topic_prefix: str) -> list[str]:
    return [f"{topic_prefix}.public.{m.table.name}" for m in mirrors()]


@cache
def mirrored_columns() -> tuple[Column, ...]:
    """Every column some mirror keeps (a name means the same type in every table), in name order."""
    return tuple(sorted({c.name: c for m in mirrors() for c in m.columns}.values(), key=lambda c: c.name))


@cache
def arrow_schema() -> pa.Schema:
    cols = [(c.name, pa.decimal128(c.precision, c.scale) if c.kind == "decimal" else ARROW_TYPES[c.kind])
            for c in mirrored_columns()]
    return pa.schema([(name, arrow) for name, arrow, _ in HEAD] + cols)


def spark_schema() -> T.StructType:
    cols = [T.StructField(c.name, T.DecimalType(c.precision, c.scale) if c.kind == "decimal" else SPARK_TYPES[c.kind])
            for c in mirrored_columns()]
    return T.StructType([T.StructField(name, spark) for name, _, spark in HEAD] + cols)


def change_row(change: Change) -> dict:
    """The row of one decoded change: the after image's mirrored columns, none for a delete."""
    row = {"table": change.table, "key": change.key, "lsn": change.lsn, "deleted": change.op == "d",
           "commit_ts": change.commit_ts}
    if change.after is not None and change.op != "d":
        row.update({c.name: change.after.get(c.name) for c in mirrored_columns()})
    return row


def decode_batch(topic_prefix: str, batch: pa.RecordBatch) -> pa.RecordBatch:
    """Decode a batch of Kafka records (topic, partition, offset, key, value) into change rows of mirrored
    tables; tombstones, bad messages and tables no feature reads are left out."""
    wanted = {m.table.name for m in mirrors()}
    rows = []
    columns = [batch.column(name).to_pylist() for name in ("topic", "partition", "offset", "key", "value")]
    for topic, partition, offset, key, value in zip(*columns, strict=True):
        change = decode(topic_prefix, Position(topic, partition, offset), key, value)
        if isinstance(change, Change) and change.table in wanted:
            rows.append(change_row(change))
    return pa.RecordBatch.from_pylist(rows, schema=arrow_schema())


def change_rows(records: DataFrame, topic_prefix: str) -> DataFrame:
    """Spark's Kafka source rows -> change rows (``spark_schema()``), decoded on the executors."""

    def decode_all(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield decode_batch(topic_prefix, batch)

    return records.select("topic", "partition", "offset", "key", "value").mapInArrow(decode_all, spark_schema())
