"""The Avro contracts in ``schemas/``: row images per table and the decoded change.

Everything else is derived from these files: the decoder's column rules, the per-table change schema used with
fastavro to validate and encode, and the Spark schema of a decoded change.
"""

from __future__ import annotations

import copy
import io
import json
import re
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import fastavro

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
HEARTBEAT = "cdc_heartbeat"  # the table Debezium's heartbeats update: captured for its commit times only
ROW_PLACEHOLDER = "ROW"
SCHEMA = "public"  # the PostgreSQL schema of every captured table


def change_topic(topic_prefix: str, table: str) -> str:
    """Debezium's topic for one table's changes (``topic.prefix``, schema, table): where capture writes them, the
    archiver, the streaming job and re-snapshots read them, and the decoder finds the table."""
    return f"{topic_prefix}.{SCHEMA}.{table}"


def change_topic_pattern(topic_prefix: str) -> str:
    """A regular expression for every change topic under ``topic_prefix`` (a consumer's subscription)."""
    return "^" + re.escape(change_topic(topic_prefix, "")) + ".+"


@dataclass(frozen=True)
class Column:
    """One column of a row image: its Avro kind and whether the contract allows null."""

    name: str
    kind: str  # long | int | string | decimal | date | timestamp
    nullable: bool
    precision: int | None = None
    scale: int | None = None


@dataclass(frozen=True)
class RowContract:
    table: str
    key: str
    columns: tuple[Column, ...]
    schema: dict[str, Any]

    @cached_property
    def names(self) -> frozenset[str]:
        return frozenset(c.name for c in self.columns)

    @cached_property
    def places(self) -> tuple[tuple[str, str, Column], ...]:
        """(name, ``table.name``, column) of every column: the place names a reason gives."""
        return tuple((c.name, f"{self.table}.{c.name}", c) for c in self.columns)


@cache
def row_contracts() -> dict[str, RowContract]:
    """Every table's row contract, keyed by table name."""
    contracts = {}
    for path in sorted(SCHEMAS.glob("*.avsc")):
        schema = json.loads(path.read_text())
        if "table" not in schema:
            continue
        columns = tuple(_column(field) for field in schema["fields"])
        contracts[schema["table"]] = RowContract(schema["table"], schema["key"], columns, schema)
    return contracts


@cache
def change_schema(table: str) -> dict[str, Any]:
    """The decoded-change schema of ``table``: change.avsc with before/after typed by the table's row schema."""
    doc = copy.deepcopy(json.loads((SCHEMAS / "change.avsc").read_text()))
    doc["name"] = f"{row_contracts()[table].schema['name']}Change"
    row = row_contracts()[table].schema
    first = True
    for field in doc["fields"]:
        if field["type"] == ["null", ROW_PLACEHOLDER]:
            field["type"] = ["null", row if first else row["namespace"] + "." + row["name"]]
            first = False
    return doc


@cache
def _parsed(table: str):
    return fastavro.parse_schema(change_schema(table))


def validate(table: str, record: dict[str, Any]) -> None:
    """Raise ``fastavro.validation.ValidationError`` unless ``record`` fits the table's change schema."""
    fastavro.validation.validate(record, _parsed(table), raise_errors=True)


def encode(table: str, record: dict[str, Any]) -> bytes:
    """Avro binary (schemaless) encoding of a decoded change."""
    out = io.BytesIO()
    fastavro.schemaless_writer(out, _parsed(table), record)
    return out.getvalue()


def decode(table: str, data: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(data), _parsed(table))


def spark_schema(table: str):
    """The Spark StructType of a decoded change of ``table``, derived from its Avro schema."""
    from pyspark.sql import types as T

    def spark_type(column: Column):
        return {
            "long": T.LongType(),
            "int": T.IntegerType(),
            "string": T.StringType(),
            "date": T.DateType(),
            "timestamp": T.TimestampType(),
        }.get(column.kind) or T.DecimalType(column.precision, column.scale)

    row = T.StructType([T.StructField(c.name, spark_type(c), c.nullable) for c in row_contracts()[table].columns])
    fields = []
    for field in change_schema(table)["fields"]:
        if field["name"] in ("before", "after"):
            fields.append(T.StructField(field["name"], row, True))
        else:
            fields.append(T.StructField(field["name"], _spark_scalar(field["type"]), _nullable(field["type"])))
    return T.StructType(fields)


def _spark_scalar(avro_type: Any):
    from pyspark.sql import types as T

    base = _non_null(avro_type)
    if isinstance(base, dict):
        if base.get("logicalType") == "timestamp-micros":
            return T.TimestampType()
        if base["type"] == "enum":
            return T.StringType()
        base = base["type"]
    return {"long": T.LongType(), "int": T.IntegerType(), "string": T.StringType()}[base]


def _column(field: dict[str, Any]) -> Column:
    base = _non_null(field["type"])
    if isinstance(base, dict):
        logical = base.get("logicalType")
        if logical == "decimal":
            return Column(field["name"], "decimal", _nullable(field["type"]), base["precision"], base["scale"])
        kind = {"timestamp-micros": "timestamp", "date": "date"}[logical]
        return Column(field["name"], kind, _nullable(field["type"]))
    return Column(field["name"], base, _nullable(field["type"]))


def _nullable(avro_type: Any) -> bool:
    return isinstance(avro_type, list) and "null" in avro_type


def _non_null(avro_type: Any) -> Any:
    if isinstance(avro_type, list):
        (only,) = [t for t in avro_type if t != "null"]
        return only
    return avro_type
