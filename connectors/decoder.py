"""Debezium's JSON change envelope -> typed changes (pure: no clients, no I/O).

``decode`` returns a ``Change`` for a valid event, ``None`` for a tombstone (Kafka compaction marker after a
delete), and a ``DeadLetter`` with the reason for anything that breaks the contract in ``schemas/``. It never
raises on bad input, so a consumer routes the dead letter and keeps going.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from connectors import contracts
from connectors.contracts import Column, RowContract

MAX_TEXT = 10_000  # characters; larger strings are rejected as oversized
MAX_MESSAGE = 512_000  # bytes of one Kafka value (Kafka itself stops at ~1 MB)
UNAVAILABLE = "__debezium_unavailable_value"
OPS = frozenset("cudr")
EPOCH = date(1970, 1, 1)
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class Position:
    """Where a message came from."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Change:
    table: str
    op: str
    key: int
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    lsn: int
    tx_id: int | None
    commit_ts: datetime
    position: Position

    def record(self) -> dict[str, Any]:
        """The change as a record of its Avro contract (``contracts.change_schema(table)``)."""
        return {"table": self.table, "op": self.op, "key": self.key, "before": self.before, "after": self.after,
                "lsn": self.lsn, "tx_id": self.tx_id, "commit_ts": self.commit_ts,
                "source_topic": self.position.topic, "source_partition": self.position.partition,
                "source_offset": self.position.offset}


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    position: Position
    key: bytes | None
    value: bytes | None

    def payload(self, failed_at: datetime) -> dict[str, Any]:
        """What goes to the dead-letter topic: the reason, where it came from, and the original bytes."""
        return {"reason": self.reason, "topic": self.position.topic, "partition": self.position.partition,
                "offset": self.position.offset, "key": _text(self.key), "value": _text(self.value),
                "failed_at": failed_at.isoformat()}


class Invalid(Exception):
    """Internal: the reason a message is dead-lettered."""


def decode(topic_prefix: str, position: Position, key: bytes | None, value: bytes | None) -> Change | DeadLetter | None:
    """Decode one message of a change topic ``<topic_prefix>.public.<table>``."""
    if value is None:
        return None  # tombstone
    try:
        return _decode(topic_prefix, position, value)
    except Invalid as exc:
        return DeadLetter(str(exc), position, key, value)


def _decode(topic_prefix: str, position: Position, value: bytes) -> Change:
    contract = _contract_for(topic_prefix, position.topic)
    if len(value) > MAX_MESSAGE:
        raise Invalid(f"oversized message: {len(value)} bytes (limit {MAX_MESSAGE})")
    try:
        envelope = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Invalid(f"malformed JSON: {exc}") from None
    if isinstance(envelope, dict) and "payload" in envelope and "schema" in envelope:
        envelope = envelope["payload"]  # converter with schemas.enable=true
    if not isinstance(envelope, dict) or "op" not in envelope or "source" not in envelope:
        raise Invalid("not a Debezium change event: expected an object with 'op' and 'source'")
    op = envelope["op"]
    if op not in OPS:
        raise Invalid(f"unsupported op {op!r}: expected one of c, u, d, r")
    source = _source(envelope["source"], topic_prefix, contract.table)
    before = _row(contract, envelope.get("before"), "before")
    after = _row(contract, envelope.get("after"), "after")
    if op in "cr" and after is None:
        raise Invalid(f"op {op!r} without an 'after' image")
    if op == "d" and before is None:
        raise Invalid("op 'd' without a 'before' image")
    if op == "u" and before is None:
        raise Invalid("op 'u' without a 'before' image: is the table REPLICA IDENTITY FULL?")
    if op == "u" and after is None:
        raise Invalid("op 'u' without an 'after' image")
    row = after if after is not None else before
    # The column rules above are derived from the Avro contract, so the result fits it (tests check that with
    # fastavro on every kind of change); fastavro's own validation costs 2/3 of decoding, so not here.
    return Change(contract.table, op, row[contract.key], before, after, source["lsn"], source["tx_id"],
                  source["commit_ts"], position)


def _contract_for(topic_prefix: str, topic: str) -> RowContract:
    match = re.fullmatch(rf"{re.escape(topic_prefix)}\.public\.(\w+)", topic)
    if match is None:
        raise Invalid(f"topic {topic!r} is not a change topic '{topic_prefix}.public.<table>'")
    table = match.group(1)
    contract = contracts.row_contracts().get(table)
    if contract is None:
        raise Invalid(f"unknown table {table!r}: no contract in schemas/")
    return contract


def _source(source: Any, topic_prefix: str, table: str) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise Invalid("'source' is not an object")
    if source.get("connector") != "postgresql" or source.get("name") != topic_prefix:
        raise Invalid(f"foreign producer: source connector={source.get('connector')!r} "
                      f"name={source.get('name')!r}, expected postgresql / {topic_prefix!r}")
    if source.get("table") != table or source.get("schema") != "public":
        raise Invalid(f"source table {source.get('schema')}.{source.get('table')} does not match the topic's "
                      f"public.{table}")
    lsn = source.get("lsn")
    if not _is_int(lsn) or lsn < 0:
        raise Invalid(f"source.lsn missing or not a non-negative integer: {lsn!r}")
    tx_id = source.get("txId")
    if tx_id is not None and not _is_int(tx_id):
        raise Invalid(f"source.txId is not an integer: {tx_id!r}")
    micros = source.get("ts_us")
    if not _is_int(micros):
        millis = source.get("ts_ms")
        if not _is_int(millis):
            raise Invalid("source has no commit time (ts_us / ts_ms)")
        micros = millis * 1000
    return {"lsn": lsn, "tx_id": tx_id, "commit_ts": datetime.fromtimestamp(0, UTC) + timedelta(microseconds=micros)}


def _row(contract: RowContract, image: Any, which: str) -> dict[str, Any] | None:
    if image is None:
        return None
    if not isinstance(image, dict):
        raise Invalid(f"'{which}' is not an object")
    unexpected = sorted(set(image) - contract.names)
    missing = sorted(contract.names - set(image))
    if unexpected or missing:
        parts = ([f"unexpected column(s) {', '.join(unexpected)}"] if unexpected else []) + (
            [f"missing column(s) {', '.join(missing)}"] if missing else [])
        raise Invalid(f"schema drift in {contract.table}.{which}: {'; '.join(parts)}")
    return {c.name: _value(contract.table, c, image[c.name]) for c in contract.columns}


def _value(table: str, column: Column, raw: Any) -> Any:
    where = f"{table}.{column.name}"
    if raw is None:
        if column.nullable:
            return None
        raise Invalid(f"null in NOT NULL column {where}")
    if raw == UNAVAILABLE:
        raise Invalid(f"{where} arrived as {UNAVAILABLE} (TOASTed value without REPLICA IDENTITY FULL)")
    if column.kind in INT_RANGE:
        low, high = INT_RANGE[column.kind]
        if not _is_int(raw):
            raise Invalid(f"wrong type for {where}: expected an integer, got {type(raw).__name__} {_short(raw)}")
        if not low <= raw <= high:
            raise Invalid(f"{where} = {raw} is out of range for {column.kind}")
        return raw
    if column.kind == "string":
        if not isinstance(raw, str):
            raise Invalid(f"wrong type for {where}: expected a string, got {type(raw).__name__}")
        if len(raw) > MAX_TEXT:
            raise Invalid(f"oversized value in {where}: {len(raw)} characters (limit {MAX_TEXT})")
        return raw
    if column.kind == "decimal":
        return _decimal(where, column, raw)
    if column.kind == "timestamp":
        return _timestamp(where, raw)
    if column.kind == "date":
        if not _is_int(raw):
            raise Invalid(f"wrong type for {where}: expected days since epoch, got {_short(raw)}")
        try:
            return EPOCH + timedelta(days=raw)
        except OverflowError:
            raise Invalid(f"{where} = {raw} days is not a valid date") from None
    raise Invalid(f"{where} has an unsupported contract type {column.kind}")


def _decimal(where: str, column: Column, raw: Any) -> Decimal:
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise Invalid(f"wrong type for {where}: expected a decimal string, got {type(raw).__name__} {_short(raw)}")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise Invalid(f"wrong type for {where}: {_short(raw)} is not a decimal") from None
    if not value.is_finite():
        raise Invalid(f"{where} = {raw} is not a finite decimal")
    exponent = value.as_tuple().exponent
    if -exponent > column.scale:
        raise Invalid(f"{where} = {raw} has more than {column.scale} decimal places")
    quantized = value.quantize(Decimal(1).scaleb(-column.scale))
    if len(quantized.as_tuple().digits) > column.precision:
        raise Invalid(f"{where} = {raw} exceeds NUMERIC({column.precision},{column.scale})")
    return quantized


def _timestamp(where: str, raw: Any) -> datetime:
    if not isinstance(raw, str):
        raise Invalid(f"wrong type for {where}: expected an ISO-8601 timestamp string, got {_short(raw)}")
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid(f"{where} = {_short(raw)} is not an ISO-8601 timestamp") from None
    if parsed.tzinfo is None:
        raise Invalid(f"{where} = {_short(raw)} has no time zone")
    return parsed.astimezone(UTC)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")
