"""Debezium's JSON change envelope -> typed changes (pure: no clients, no I/O).

``decode`` returns a ``Change`` for a valid event, ``None`` for a tombstone (Kafka compaction marker after a
delete), and a ``DeadLetter`` with the reason for anything that breaks the contract in ``schemas/``. It is total:
whatever the bytes, it returns, and a consumer routes the dead letter and keeps going.

The rules and their reasons are stated once, here, in the order they are checked; the streaming job's Spark SQL
decoder (streaming/decode.py) renders the same rules from the same constants, and the shared catalogue in
tests/cdc_cases.py holds both to the same verdict. So a reason never echoes a value (Spark could not spell it the
way Python does); the dead letter carries the payload itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from cdcf import contracts
from cdcf.contracts import Column, RowContract

MAX_TEXT = 10_000  # characters of one text value
MAX_MESSAGE = 512_000  # bytes of one Kafka value (Kafka itself stops at ~1 MB)
MAX_NUMBER = 1_000  # characters of one JSON number literal (Jackson's limit in the JVM)
DEAD_LETTER_PAYLOAD = 16_384  # characters of the original key and value a dead letter keeps
UNAVAILABLE = "__debezium_unavailable_value"
OPS = ("c", "u", "d", "r")
INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
EPOCH = date(1970, 1, 1)
EPOCH_UTC = datetime(1970, 1, 1, tzinfo=UTC)
DATE_DAYS = ((date.min - EPOCH).days, (date.max - EPOCH).days)  # days since epoch of 0001-01-01 .. 9999-12-31
COMMIT_US = (0, 253_402_300_799_999_999)  # commit times from 1970 to the end of 9999, in microseconds
# what Debezium writes for timestamptz; a value without a zone is named as such
TIMESTAMP = r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
ZONE = r"(Z|[+-](0[0-9]|1[0-7]):[0-5][0-9]|[+-]18:00)"  # the offsets both Python and java.time take
DECIMAL = r"[+-]?([0-9]+)(\.([0-9]+))?"
# a \u escape of half a surrogate pair with no other half: no UTF-8 can carry it
LONE_SURROGATE = re.compile(
    r"(?<!\\)\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    r"|(?<!\\u[dD][89abAB][0-9a-fA-F]{2})\\u[dD][c-fC-F][0-9a-fA-F]{2}"
)
TABLE_NAME = r"[A-Za-z0-9_]+"
_TOPIC_TABLE = re.compile(TABLE_NAME)
_TIMESTAMP_ZONED, _TIMESTAMP_NAIVE, _DECIMAL = re.compile(TIMESTAMP + ZONE), re.compile(TIMESTAMP), re.compile(DECIMAL)


class Reason:
    """Every dead-letter reason, as text or a template filled with the column's place (``where``: table.column)
    and the JSON type found (``got``: string, number, boolean, object, array)."""

    NOT_A_CHANGE_TOPIC = "topic is not a change topic '{prefix}.public.<table>'"
    UNKNOWN_TABLE = "unknown table '{table}': no contract in schemas/"
    OVERSIZED = f"oversized message: more than {MAX_MESSAGE} bytes"
    MALFORMED = "malformed JSON"
    NOT_AN_EVENT = "not a Debezium change event: expected an object with 'op' and 'source'"
    UNSUPPORTED_OP = "unsupported op: expected one of c, u, d, r"
    SOURCE_NOT_OBJECT = "'source' is not an object"
    FOREIGN = "foreign producer: source.connector and source.name are not postgresql and '{prefix}'"
    SOURCE_TABLE = "source table does not match the topic's public.{table}"
    LSN = "source.lsn missing or not an integer in 0 .. 2^63-1"
    SNAPSHOT_LSN = "source.lsn of a snapshot read (op r) is 0: it must be at least 1"
    TX_ID = "source.txId is not an integer"
    NO_COMMIT_TIME = "source has no commit time (ts_us / ts_ms)"
    COMMIT_RANGE = "source commit time (ts_us / ts_ms) is out of range"
    IMAGE_NOT_OBJECT = "'{which}' is not an object"
    DRIFT = "schema drift in {table}.{which}: missing column(s) {missing} (dropped or renamed upstream?)"
    NULL = "null in NOT NULL column {where}"
    UNAVAILABLE = f"{{where}} arrived as {UNAVAILABLE} (TOASTed value without REPLICA IDENTITY FULL)"
    WRONG_TYPE = "wrong type for {where}: expected {expected}, got a {got}"
    NOT_INTEGER = "{where} is not an integer in the range of {kind}"
    OVERSIZED_TEXT = f"oversized value in {{where}}: more than {MAX_TEXT} characters"
    NUL = "NUL character in {where}"
    NOT_DECIMAL = "{where} is not a decimal"
    SCALE = "{where} has more than {scale} decimal places"
    PRECISION = "{where} exceeds NUMERIC({precision},{scale})"
    NO_ZONE = "{where} has no time zone"
    NOT_TIMESTAMP = "{where} is not an ISO-8601 timestamp"
    TIMESTAMP_RANGE = "{where} is out of range (years 1 to 9999 in UTC)"
    NOT_DATE = "{where} is not a valid date"
    NO_AFTER = "op '{op}' without an 'after' image"
    NO_BEFORE = "op 'd' without a 'before' image"
    UPDATE_NO_BEFORE = "op 'u' without a 'before' image: is the table REPLICA IDENTITY FULL?"


EXPECTED = {
    "long": "an integer",
    "int": "an integer",
    "string": "a string",
    "decimal": "a decimal string",
    "timestamp": "an ISO-8601 timestamp string",
    "date": "days since epoch",
}


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
    ignored: tuple[str, ...] = ()  # columns of the images that no contract names (a column added upstream)

    def record(self) -> dict[str, Any]:
        """The change as a record of its Avro contract (``contracts.change_schema(table)``)."""
        return {
            "table": self.table,
            "op": self.op,
            "key": self.key,
            "before": self.before,
            "after": self.after,
            "lsn": self.lsn,
            "tx_id": self.tx_id,
            "commit_ts": self.commit_ts,
            "source_topic": self.position.topic,
            "source_partition": self.position.partition,
            "source_offset": self.position.offset,
        }


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    position: Position
    key: bytes | None
    value: bytes | None

    def payload(self, failed_at: datetime) -> dict[str, Any]:
        """What goes to the dead-letter topic: the reason, where it came from, and the original bytes, each cut
        to ``DEAD_LETTER_PAYLOAD`` characters with its full length kept (a dead letter fits in a Kafka message)."""
        return {
            "reason": self.reason,
            "topic": self.position.topic,
            "partition": self.position.partition,
            "offset": self.position.offset,
            "key": _capped(self.key),
            "key_bytes": _length(self.key),
            "value": _capped(self.value),
            "value_bytes": _length(self.value),
            "failed_at": failed_at.isoformat(),
        }


class Invalid(Exception):
    """Internal: the reason a message is dead-lettered."""


def decode(topic_prefix: str, position: Position, key: bytes | None, value: bytes | None) -> Change | DeadLetter | None:
    """Decode one message of a change topic ``<topic_prefix>.public.<table>``; never raises."""
    if value is None:
        return None  # tombstone
    try:
        return _decode(topic_prefix, position, value)
    except Invalid as exc:
        return DeadLetter(str(exc), position, key, value)
    except Exception as exc:  # noqa: BLE001 - a rule this module missed: still a dead letter, never a crash
        return DeadLetter(f"undecodable: {type(exc).__name__}", position, key, value)


def contract_for(topic_prefix: str, topic: str) -> RowContract:
    prefix = contracts.change_topic(topic_prefix, "")
    table = topic[len(prefix) :] if topic.startswith(prefix) else ""
    if not _TOPIC_TABLE.fullmatch(table):
        raise Invalid(Reason.NOT_A_CHANGE_TOPIC.format(prefix=topic_prefix))
    contract = contracts.row_contracts().get(table)
    if contract is None:
        raise Invalid(Reason.UNKNOWN_TABLE.format(table=table))
    return contract


def _decode(topic_prefix: str, position: Position, value: bytes) -> Change:
    contract = contract_for(topic_prefix, position.topic)
    if len(value) > MAX_MESSAGE:
        raise Invalid(Reason.OVERSIZED)
    envelope = parse_json(value)
    if isinstance(envelope, dict) and "payload" in envelope and "schema" in envelope:
        envelope = envelope["payload"]  # converter with schemas.enable=true
    if not isinstance(envelope, dict) or "op" not in envelope or "source" not in envelope:
        raise Invalid(Reason.NOT_AN_EVENT)
    op = envelope["op"]
    if op not in OPS:
        raise Invalid(Reason.UNSUPPORTED_OP)
    source = _source(envelope["source"], topic_prefix, contract.table)
    before = _row(contract, envelope.get("before"), "before")
    after = _row(contract, envelope.get("after"), "after")
    ignored = tuple(
        sorted(
            {
                k
                for image in (envelope.get("before"), envelope.get("after"))
                if image
                for k in image.keys() - contract.names
            }
        )
    )
    if op in "cr" and after is None:
        raise Invalid(Reason.NO_AFTER.format(op=op))
    if op == "r":  # a snapshot's rows sit just before its LSN: the change streamed at that LSN is newer than them
        if source["lsn"] == 0:
            raise Invalid(Reason.SNAPSHOT_LSN)
        source["lsn"] -= 1
    if op == "d" and before is None:
        raise Invalid(Reason.NO_BEFORE)
    if op == "u" and before is None:
        raise Invalid(Reason.UPDATE_NO_BEFORE)
    if op == "u" and after is None:
        raise Invalid(Reason.NO_AFTER.format(op=op))
    row = after if after is not None else before
    # The column rules above are derived from the Avro contract, so the result fits it (tests check that with
    # fastavro on every kind of change); fastavro's own validation costs 2/3 of decoding, so not here.
    return Change(
        contract.table,
        op,
        row[contract.key],
        before,
        after,
        source["lsn"],
        source["tx_id"],
        source["commit_ts"],
        position,
        ignored,
    )


def parse_json(value: bytes) -> Any:
    """Strict JSON, as the JVM's parser takes it: UTF-8 only, no NaN or Infinity, no duplicate keys, number
    literals of at most ``MAX_NUMBER`` characters, no lone surrogate escapes; anything else is malformed."""
    try:
        text = value.decode("utf-8")
        if "\\u" in text and LONE_SURROGATE.search(text):
            raise ValueError("lone surrogate")
        return json.loads(
            text, parse_constant=_refuse, parse_int=_int, parse_float=_float, object_pairs_hook=_unique_keys
        )
    except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise Invalid(Reason.MALFORMED) from None


def _refuse(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def _int(literal: str) -> int:
    if len(literal) > MAX_NUMBER:
        raise ValueError("number literal too long")
    return int(literal)


def _float(literal: str) -> float:
    if len(literal) > MAX_NUMBER:
        raise ValueError("number literal too long")
    return float(literal)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _source(source: Any, topic_prefix: str, table: str) -> dict[str, Any]:
    if not isinstance(source, dict):
        raise Invalid(Reason.SOURCE_NOT_OBJECT)
    if source.get("connector") != "postgresql" or source.get("name") != topic_prefix:
        raise Invalid(Reason.FOREIGN.format(prefix=topic_prefix))
    if source.get("table") != table or source.get("schema") != "public":
        raise Invalid(Reason.SOURCE_TABLE.format(table=table))
    lsn = source.get("lsn")
    if not _is_long(lsn) or lsn < 0:
        raise Invalid(Reason.LSN)
    tx_id = source.get("txId")
    if tx_id is not None and not _is_long(tx_id):
        raise Invalid(Reason.TX_ID)
    micros = source.get("ts_us")
    if not _is_long(micros):
        millis = source.get("ts_ms")
        if not _is_long(millis):
            raise Invalid(Reason.NO_COMMIT_TIME)
        micros = millis * 1000
    if not COMMIT_US[0] <= micros <= COMMIT_US[1]:
        raise Invalid(Reason.COMMIT_RANGE)
    return {"lsn": lsn, "tx_id": tx_id, "commit_ts": EPOCH_UTC + timedelta(microseconds=micros)}


def _row(contract: RowContract, image: Any, which: str) -> dict[str, Any] | None:
    if image is None:
        return None
    if not isinstance(image, dict):
        raise Invalid(Reason.IMAGE_NOT_OBJECT.format(which=which))
    if not contract.names <= image.keys():  # a column added upstream is ignored (Change.ignored)
        missing = ", ".join(sorted(contract.names - image.keys()))
        raise Invalid(Reason.DRIFT.format(table=contract.table, which=which, missing=missing))
    return {name: _value(where, column, image[name]) for name, where, column in contract.places}


def _value(where: str, column: Column, raw: Any) -> Any:
    if raw is None:
        if column.nullable:
            return None
        raise Invalid(Reason.NULL.format(where=where))
    if raw == UNAVAILABLE:
        raise Invalid(Reason.UNAVAILABLE.format(where=where))
    kind = column.kind
    wanted = (int,) if kind in INT_RANGE or kind == "date" else (str,)
    if not isinstance(raw, wanted) or isinstance(raw, bool):
        if kind in INT_RANGE and isinstance(raw, float):
            raise Invalid(Reason.NOT_INTEGER.format(where=where, kind=kind))
        if kind == "date" and isinstance(raw, float):
            raise Invalid(Reason.NOT_DATE.format(where=where))
        raise Invalid(Reason.WRONG_TYPE.format(where=where, expected=EXPECTED[kind], got=json_type(raw)))
    if kind in INT_RANGE:
        low, high = INT_RANGE[kind]
        if not low <= raw <= high:
            raise Invalid(Reason.NOT_INTEGER.format(where=where, kind=kind))
        return raw
    if kind == "date":
        if not DATE_DAYS[0] <= raw <= DATE_DAYS[1]:
            raise Invalid(Reason.NOT_DATE.format(where=where))
        return EPOCH + timedelta(days=raw)
    if "\x00" in raw:
        raise Invalid(Reason.NUL.format(where=where))
    if kind == "string":
        if len(raw) > MAX_TEXT:
            raise Invalid(Reason.OVERSIZED_TEXT.format(where=where))
        return raw
    if kind == "decimal":
        return _decimal(where, column, raw)
    return _timestamp(where, raw)


def _decimal(where: str, column: Column, raw: str) -> Decimal:
    match = _DECIMAL.fullmatch(raw)
    if match is None:
        raise Invalid(Reason.NOT_DECIMAL.format(where=where))
    whole, fraction = match.group(1).lstrip("0"), match.group(3) or ""
    if len(fraction) > column.scale:
        raise Invalid(Reason.SCALE.format(where=where, scale=column.scale))
    if len(whole) > column.precision - column.scale:
        raise Invalid(Reason.PRECISION.format(where=where, precision=column.precision, scale=column.scale))
    return Decimal(raw).quantize(Decimal(1).scaleb(-column.scale))


def _timestamp(where: str, raw: str) -> datetime:
    if not _TIMESTAMP_ZONED.fullmatch(raw):
        raise Invalid((Reason.NO_ZONE if _TIMESTAMP_NAIVE.fullmatch(raw) else Reason.NOT_TIMESTAMP).format(where=where))
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid(Reason.NOT_TIMESTAMP.format(where=where)) from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # a zone pushed it before year 1 or after 9999
        raise Invalid(Reason.TIMESTAMP_RANGE.format(where=where)) from None


def json_type(value: Any) -> str:
    """The JSON type name of a parsed value, as the reasons spell it."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), "null")


def _is_long(value: Any) -> bool:
    """An integer that fits a long (JSON numbers beyond it count as not integers, as the JVM sees them)."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and INT_RANGE["long"][0] <= value <= INT_RANGE["long"][1]
    )


def _capped(data: bytes | None) -> str | None:
    return None if data is None else data[:DEAD_LETTER_PAYLOAD].decode("utf-8", errors="replace")


def _length(data: bytes | None) -> int | None:
    return None if data is None else len(data)
