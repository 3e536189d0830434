"""The change history as the batch jobs see it: every archived change of a table, checked against the table's row
contract, as row versions.

A version is the row as one change left it, valid from that change's commit until the next change of the same
row commits (or forever). Versions are what docs/semantics.md#windows is defined on: "the version of each row
current at T" is the one with ``valid_from <= T < valid_to``. Times are microseconds since the epoch (longs), so window
arithmetic and rounding to hops are exact integer operations.

Rows the contract refuses (a missing owner, an unparseable time, an amount with three decimals, an image that
contradicts its operation...) are not versions: they come back separately with their LSN and reason, and the
row's previous version stays current, as if the bad change had not happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import Column as SparkColumn
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from cdcf.changelog import TABLE as CHANGELOG
from cdcf.contracts import Column
from cdcf.decoder import INT_RANGE, MAX_TEXT
from cdcf.settings import Settings
from cdcf.sources import Source

ZONED = r"(Z|[+-][0-9]{2}:?[0-9]{2})$"


@dataclass(frozen=True)
class History:
    versions: DataFrame  # key, lsn, valid_from, valid_to, deleted, archived_at, <read columns typed>
    rejects: DataFrame  # source_table, key, lsn, reason


def jdbc_options(settings: Settings) -> dict[str, str]:
    return {
        "url": settings.jdbc_url(settings.offline_db),
        "user": settings.feast_user,
        "driver": "org.postgresql.Driver",
        "password": settings.feast_password.get_secret_value(),
        "fetchsize": "20000",
    }


def read_changes(
    spark: SparkSession, settings: Settings, m: Source, until: str, lsn_range: tuple[int, int], partitions: int = 4
) -> DataFrame:
    """The archived changes of ``m``'s table committed before ``until`` (an ISO time), with the after image's
    read columns as text: Postgres extracts them, Spark parses and checks them. ``lsn_range`` spreads the
    read over ``partitions`` connections."""
    fields = "".join(f", after->>'{c.name}' AS {c.name}" for c in m.columns if c.name != m.key)
    query = (
        f"(SELECT row_key AS key, lsn, op, after IS NULL AS no_image, commit_ts, archived_at, "
        f"after->>'{m.key}' AS image_key{fields} "
        f"FROM {CHANGELOG} WHERE source_table = '{m.table.name}' AND commit_ts < '{until}') changes"
    )
    return (
        spark.read.format("jdbc")
        .options(**jdbc_options(settings))
        .option("dbtable", query)
        .option("partitionColumn", "lsn")
        .option("lowerBound", str(lsn_range[0]))
        .option("upperBound", str(lsn_range[1] + 1))
        .option("numPartitions", str(partitions))
        .load()
    )


def history(changes: DataFrame, m: Source) -> History:
    """Split changes into rejects and versions (pure: DataFrame in, DataFrames out)."""
    reason = problem(m)
    checked = changes.withColumn("reason", reason)
    rejects = checked.where(F.col("reason").isNotNull()).select(
        F.lit(m.table.name).alias("source_table"), "key", "lsn", "reason"
    )
    good = checked.where(F.col("reason").isNull()).dropDuplicates(["key", "lsn"])
    typed = [_typed(c).alias(c.name) for c in m.columns if c.name != m.key]
    if m.key in {c.name for c in m.columns}:  # the entity's own table (users): its key is the owner
        typed.append(F.col("key").alias(m.key))
    row = Window.partitionBy("key").orderBy("lsn")
    versions = good.select(
        "key",
        "lsn",
        "archived_at",
        (F.col("op") == "d").alias("deleted"),
        F.unix_micros("commit_ts").alias("valid_from"),
        F.lead(F.unix_micros("commit_ts")).over(row).alias("valid_to"),
        *typed,
    )
    return History(versions, rejects)


def routed(versions: DataFrame, m: Source, values: dict[str, str]) -> DataFrame:
    """Versions -> the window engine's input rows (the columns of Router.java, ``values`` their value columns and
    types): per version, a row for the entity that owned the row before, if the version takes it away (a delete,
    an owner move), and one for the entity that owns it now. The before owner is the previous version's, as
    Debezium's before image gives it to the streaming job. ``archived_us``: when the archive took the change."""
    by_row = Window.partitionBy("key").orderBy("lsn")
    cells = []
    for name, kind in values.items():
        c = next((c for c in m.columns if c.name == name), None)
        if c is None:
            cells.append(F.lit(None).cast(kind).alias(name))
        elif c.kind == "decimal":  # unscaled, as the decoder gives it
            cells.append((F.col(name) * F.lit(10**c.scale)).cast("long").alias(name))
        else:
            cells.append(F.col(name).cast(kind).alias(name))
    event = F.col(m.table.event_time) if m.table.event_time else F.lit(None)
    rows = []
    for entity in m.owners:
        owner = F.when(~F.col("deleted"), F.col(entity.join_key))
        marked = versions.select("*", owner.alias("now"), F.lag(owner).over(by_row).alias("before"))
        for side, owns, keep in (
            ("before", False, F.col("before").isNotNull() & ~F.col("before").eqNullSafe(F.col("now"))),
            ("now", True, F.col("now").isNotNull()),
        ):
            rows.append(
                marked.where(keep).select(
                    F.lit(entity.name).alias("entity"),
                    F.col(side).alias("id"),
                    F.lit(m.table.name).alias("table"),
                    F.col("key").alias("row_key"),
                    "lsn",
                    F.col("valid_from").alias("commit_us"),
                    F.lit(owns).alias("owns"),
                    event.cast("long").alias("event_us"),
                    F.unix_micros("archived_at").alias("archived_us"),
                    *cells,
                )
            )
    return reduce(DataFrame.unionByName, rows)


def problem(m: Source) -> SparkColumn:
    """Why a change breaks the row contract (the first reason found), or null when it is valid."""
    checks: list[tuple[SparkColumn, SparkColumn]] = [
        (~F.col("op").isin("c", "u", "r", "d"), F.concat(F.lit("unknown operation "), F.col("op"))),
        (
            (F.col("op") == "d") != F.col("no_image"),
            F.concat(F.lit("operation "), F.col("op"), F.lit(" contradicts its after image")),
        ),
    ]
    live = F.col("op") != "d"
    for c in m.columns:
        if c.name == m.key:
            continue
        where = f"{m.table.name}.{c.name}"
        value = F.col(c.name)
        if not c.nullable:
            checks.append((live & value.isNull(), F.lit(f"missing value for NOT NULL column {where}")))
        bad = _malformed(c)
        if bad is not None:
            checks.append(
                (
                    live & value.isNotNull() & bad,
                    F.concat(
                        F.lit(f"{where} = '"),
                        F.substring(value, 1, 40),
                        F.lit(
                            f"' is not a valid {c.kind}" + (f"({c.precision},{c.scale})" if c.kind == "decimal" else "")
                        ),
                    ),
                )
            )
    checks.append(
        (
            live & ~F.expr("try_cast(image_key AS LONG)").eqNullSafe(F.col("key")),
            F.lit(f"{m.table.name}.{m.key} of the after image differs from the row key"),
        )
    )
    reason = F.lit(None).cast("string")
    for failed, why in reversed(checks):
        reason = F.when(failed, why).otherwise(reason)
    return reason


def _malformed(c: Column) -> SparkColumn | None:
    value = F.col(c.name)
    if c.kind in INT_RANGE:
        low, high = INT_RANGE[c.kind]
        number = F.expr(f"try_cast({c.name} AS LONG)")
        return ~value.rlike(r"^-?[0-9]{1,19}$") | number.isNull() | (number < low) | (number > high)
    if c.kind == "decimal":
        whole = c.precision - c.scale
        return ~value.rlike(rf"^-?[0-9]{{1,{whole}}}(\.[0-9]{{1,{c.scale}}})?$")
    if c.kind == "timestamp":
        return ~value.rlike(ZONED) | F.expr(f"try_cast({c.name} AS TIMESTAMP)").isNull()
    if c.kind == "string":
        return F.length(value) > MAX_TEXT
    return None


def _typed(c: Column) -> SparkColumn:
    """The checked text as its value: longs, exact decimals, and times as epoch microseconds."""
    if c.kind in INT_RANGE:
        return F.expr(f"try_cast({c.name} AS LONG)")
    if c.kind == "decimal":
        return F.expr(f"try_cast({c.name} AS DECIMAL({c.precision},{c.scale}))")
    if c.kind == "timestamp":
        return F.unix_micros(F.expr(f"try_cast({c.name} AS TIMESTAMP)"))
    return F.col(c.name)
