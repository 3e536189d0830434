"""Kafka records of Debezium's change topics -> one row per change, with the columns the features read (pure:
DataFrame in, DataFrame out; no clients).

The JSON is parsed once, with one schema covering every mirrored table (derived from the Avro contracts, as
Debezium writes them: decimals and timestamps as strings, dates as epoch days). A message that breaks the
contract (the archiver dead-letters it with its reason) yields no row here: the job must never stop on it.
"""

from __future__ import annotations

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from connectors.contracts import Column
from streaming.sql import Mirror, mirrors

WIRE_TYPES = {"long": T.LongType(), "int": T.LongType(), "string": T.StringType(), "decimal": T.StringType(),
              "timestamp": T.StringType(), "date": T.LongType()}
OPS = ("c", "u", "r", "d")


def topic_of(topic_prefix: str, m: Mirror) -> str:
    return f"{topic_prefix}.public.{m.table.name}"


def mirrored_columns() -> dict[str, Column]:
    """Every column some mirror keeps, by name (a name means the same type in every table)."""
    return {c.name: c for m in mirrors() for c in m.columns}


def _wire_columns() -> dict[str, Column]:
    return {**{m.key: Column(m.key, "long", False) for m in mirrors()}, **mirrored_columns()}


def envelope_schema() -> T.StructType:
    row = T.StructType([T.StructField(n, WIRE_TYPES[c.kind]) for n, c in sorted(_wire_columns().items())])
    source = T.StructType([T.StructField("lsn", T.LongType()), T.StructField("ts_us", T.LongType()),
                           T.StructField("ts_ms", T.LongType())])
    return T.StructType([T.StructField("op", T.StringType()), T.StructField("before", row),
                         T.StructField("after", row), T.StructField("source", source)])


def _typed(expr: SparkColumn, column: Column) -> SparkColumn:
    if column.kind == "decimal":
        return expr.cast(T.DecimalType(column.precision, column.scale))
    if column.kind == "timestamp":
        return expr.cast(T.TimestampType())
    if column.kind == "date":
        return F.date_from_unix_date(expr.cast("int"))
    return expr.cast(WIRE_TYPES[column.kind] if column.kind != "int" else T.IntegerType())


def change_rows(records: DataFrame, topic_prefix: str) -> DataFrame:
    """One row per valid change: table, key, lsn, deleted, commit_ts and every mirrored column (null where the
    table has no such column, or the row was deleted)."""
    e = F.from_json(F.col("value").cast("string"), envelope_schema())
    parsed = records.select(F.col("topic"), e.alias("e"))
    table = F.col("table")
    key = F.lit(None).cast("long")
    for m in mirrors():
        # the key comes from the after image, or from the before image of a delete
        key = F.when(table == m.table.name, F.coalesce(F.col(f"e.after.{m.key}"), F.col(f"e.before.{m.key}"))) \
            .otherwise(key)
    tables = {topic_of(topic_prefix, m): m.table.name for m in mirrors()}
    table_of = F.create_map(*[F.lit(x) for pair in tables.items() for x in pair])[F.col("topic")]
    deleted = F.col("e.op") == "d"
    columns = [F.when(~deleted, _typed(F.col(f"e.after.{name}"), c)).alias(name)
               for name, c in sorted(mirrored_columns().items())]
    commit_us = F.coalesce(F.col("e.source.ts_us"), F.col("e.source.ts_ms") * 1000)
    rows = parsed.withColumn("table", table_of).select(
        table, key.alias("key"), F.col("e.source.lsn").alias("lsn"), deleted.alias("deleted"),
        F.timestamp_micros(commit_us).alias("commit_ts"), F.col("e.op").alias("op"), *columns,
        F.col("e.after").alias("_after"))
    valid = (table.isNotNull() & F.col("key").isNotNull() & F.col("lsn").isNotNull() & F.col("commit_ts").isNotNull()
             & F.col("op").isin(*OPS) & (deleted | F.col("_after").isNotNull()))
    for m in mirrors():  # a kept row has what its contract requires (owner, event time), or it is bad input
        for c in m.columns:
            if not c.nullable and c.name != m.key:
                valid = valid & ((table != m.table.name) | deleted | F.col(c.name).isNotNull())
    return rows.where(valid).drop("op", "_after")
