"""Feast's Redis layout, byte for byte, without Feast: the streaming writer and the inference client use it (the
inference hosts carry only redis, hiredis and mmh3), and commands are packed by hand and sent in one write.

- key: Feast's serialized EntityKey (version 3) of one INT64 join key, then the project name;
- field: murmur3_32 (little-endian) of "view:feature", holding a ValueProto: 0x20 + varint for int64_val,
  0x29 + 8 bytes for double_val, 0x12 + length + UTF-8 for string_val, empty for null;
- field "_ts:view": a protobuf Timestamp (0x08 + varint seconds, 0x10 + varint nanos).
Tests check every function here against Feast's own helpers and get_online_features.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import mmh3
import numpy as np
import redis

INT64_TAG, DOUBLE_TAG, STRING_TAG = 0x20, 0x29, 0x12
STRING_TYPE, INT64_TYPE = 2, 4  # Feast ValueType numbers used in the key
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_DOUBLE = struct.Struct("<d")


def key_prefix(join_key: str) -> bytes:
    name = join_key.encode()
    return struct.pack("<III", 1, STRING_TYPE, len(name)) + name + struct.pack("<II", INT64_TYPE, 8)


def entity_key(prefix: bytes, entity_id: int, project: bytes) -> bytes:
    return prefix + struct.pack("<q", entity_id) + project


def field(view: str, feature: str) -> bytes:
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    return f"_ts:{view}".encode()


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if byte < 0x80:
            return value, at
        shift += 7


def decode_value(data: bytes | None):
    """A ValueProto's int64, double or string; None for null or a missing field."""
    if not data:
        return None
    tag = data[0]
    if tag == DOUBLE_TAG:
        return _DOUBLE.unpack_from(data, 1)[0]
    if tag == INT64_TAG:
        value = _varint(data, 1)[0]
        return value - (1 << 64) if value >= 1 << 63 else value
    if tag == STRING_TAG:
        length, at = _varint(data, 1)
        return data[at : at + length].decode()
    raise ValueError(f"unsupported ValueProto field tag {tag:#x}")


def encode_value(value) -> bytes:
    """A ValueProto of a Python value, typed by its Python type (None: null)."""
    if value is None:
        return b""
    return ENCODERS["float64" if isinstance(value, float) else "int64" if isinstance(value, int) else "string"](value)


def _encode_int64(value) -> bytes:
    return bytes([INT64_TAG]) + _encode_varint(int(value) & ((1 << 64) - 1))


def _encode_double(value) -> bytes:
    return bytes([DOUBLE_TAG]) + _DOUBLE.pack(float(value))


def _encode_string(value) -> bytes:
    raw = str(value).encode()
    return bytes([STRING_TAG]) + _encode_varint(len(raw)) + raw


ENCODERS = {"int64": _encode_int64, "float64": _encode_double, "string": _encode_string}  # by declared dtype
NULL_BULK = b"$0\r\n\r\n"  # a null value (an empty ValueProto) as a RESP bulk string


def _bulk_double(value) -> bytes:
    return b"$9\r\n)" + _DOUBLE.pack(float(value)) + b"\r\n"  # ")" is DOUBLE_TAG


BULK_ENCODERS = {
    "int64": lambda v: bulk(_encode_int64(v)),
    "float64": _bulk_double,  # ValueProtos as bulk strings
    "string": lambda v: bulk(_encode_string(v)),
}


@lru_cache(maxsize=1 << 16)  # counts, timestamp seconds and string lengths repeat
def _encode_varint(value: int) -> bytes:
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_timestamp(data: bytes | None) -> datetime | None:
    if not data:
        return None
    seconds = nanos = 0
    at = 0
    while at < len(data):
        tag = data[at]
        value, at = _varint(data, at + 1)
        if tag == 0x08:
            seconds = value
        elif tag == 0x10:
            nanos = value
    return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def encode_timestamp(at: datetime) -> bytes:
    delta = (at if at.tzinfo else at.replace(tzinfo=UTC)) - EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    out = bytes([0x08]) + _encode_varint(seconds) if seconds else b""
    nanos = delta.microseconds * 1000
    return out + (bytes([0x10]) + _encode_varint(nanos) if nanos else b"")


def encode_timestamp_us(micros: int) -> bytes:
    """The protobuf Timestamp of a time given in microseconds since the epoch (as encode_timestamp)."""
    seconds, rest = divmod(micros, 1_000_000)
    out = bytes([0x08]) + _encode_varint(seconds) if seconds else b""
    return out + (bytes([0x10]) + _encode_varint(rest * 1000) if rest else b"")


_DOUBLES = np.dtype([("tag", "u1"), ("value", "<f8")])
_NULL_DOUBLE = bytes([DOUBLE_TAG]) + _DOUBLE.pack(float("nan"))
_SMALL: dict[bytes, object] = {}  # decoded values (doubles too, in small batches): counts repeat a lot
SMALL_BATCH = 16  # up to this many entities, per-value decoding beats numpy's per-call overhead


def decode_column(raw: list) -> tuple[np.ndarray, str]:
    """One feature's ValueProto bytes for many entities -> (values, kind). Numbers come as float64 with NaN for
    null (kind "double" or "int64"), anything else as an object array of decode_value results (kind "object").
    Doubles are decoded in one numpy pass (past a few entities, where it pays), repeated ints from a memo."""
    if len(raw) > SMALL_BATCH:
        joined = b"".join([b if b else _NULL_DOUBLE for b in raw])
        cells = np.frombuffer(joined, dtype=_DOUBLES) if len(joined) == 9 * len(raw) else None
        if cells is not None and (cells["tag"] == DOUBLE_TAG).all():
            return cells["value"].copy(), "double"
    values, ints = [], True
    for b in raw:
        if not b:
            values.append(np.nan)
            continue
        value = _SMALL.get(b)
        if value is None:
            if b[0] not in (INT64_TAG, DOUBLE_TAG):
                return np.array([decode_value(b) for b in raw], dtype=object), "object"
            value = decode_value(b)
            if len(_SMALL) < 100_000:
                _SMALL[b] = value
        ints = ints and b[0] == INT64_TAG
        values.append(value)
    return np.array(values, dtype=np.float64), "int64" if ints else "double"


_STAMPS: dict[bytes, np.datetime64] = {}  # decoded as-of times of small batches: an entity's repeats until it changes
_NAT = np.datetime64("NaT", "us")


def _small_timestamp(b: bytes | None) -> np.datetime64:
    if not b:
        return _NAT
    stamp = _STAMPS.get(b)
    if stamp is None:
        stamp = np.datetime64(decode_timestamp(b).replace(tzinfo=None), "us")
        if len(_STAMPS) < 100_000:
            _STAMPS[b] = stamp
    return stamp


def decode_timestamps(raw: list) -> np.ndarray:
    """Many protobuf Timestamps -> datetime64[us] (NaT for missing). The common shape (a 5-byte varint of seconds,
    then nanos) is decoded in one numpy pass; any other, and small batches, go through decode_timestamp."""
    if len(raw) <= SMALL_BATCH:
        return np.array([_small_timestamp(b) for b in raw], dtype="datetime64[us]")
    padded = b"".join((b or b"").ljust(12, b"\0")[:12] for b in raw)
    cells = np.frombuffer(padded, dtype=np.uint8).reshape(len(raw), 12).astype(np.int64)
    seconds = sum((cells[:, 1 + k] & 0x7F) << (7 * k) for k in range(5))
    more = np.ones(len(raw), dtype=bool)
    nanos = np.zeros(len(raw), dtype=np.int64)
    has_nanos = cells[:, 6] == 0x10
    for k in range(5):
        nanos += np.where(more & has_nanos, (cells[:, 7 + k] & 0x7F) << (7 * k), 0)
        more &= (cells[:, 7 + k] & 0x80) != 0
    lengths = np.array([len(b) if b else 0 for b in raw])
    five = (cells[:, 0] == 0x08) & ((cells[:, 1:5] & 0x80) != 0).all(axis=1) & (cells[:, 5] < 0x80)
    plain = five & (~has_nanos & (lengths == 6) | has_nanos & ~more & (lengths <= 12))
    out = (seconds * 1_000_000 + nanos // 1000).astype("datetime64[us]")
    for n in np.flatnonzero(~plain):
        at = decode_timestamp(raw[n])
        out[n] = np.datetime64("NaT") if at is None else np.datetime64(at.replace(tzinfo=None), "us")
    return out


def bulk(data: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%s\r\n" % (len(data), data)


def write_packed(client, commands: list[bytes], chunk: int = 5000) -> None:
    """Send RESP-packed ``commands`` whose replies are all one line (HSET, DEL: integers, or an error) on one
    connection, ``chunk`` per write, and count the replies' line ends instead of parsing each one (that parsing was
    a third of the streaming writer's time); raise the first error reply."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        for start in range(0, len(commands), chunk):
            part = commands[start : start + chunk]
            conn.send_packed_command([b"".join(part)])
            replies, lines = bytearray(), 0
            while lines < len(part):
                data = conn._sock.recv(1 << 16)  # noqa: SLF001 - the parser would take one reply per call
                if not data:
                    raise redis.ConnectionError("Redis closed the connection during a write")
                lines += data.count(b"\n")
                replies += data
            if replies.startswith(b"-") or b"\n-" in replies:
                error = replies[replies.index(b"-") :].split(b"\r\n", 1)[0].decode(errors="replace")
                raise redis.ResponseError(error[1:])
    except BaseException:
        conn.disconnect()  # replies may be half read: never hand this connection out again as it is
        raise
    finally:
        pool.release(conn)


def execute_packed(client, commands: list[bytes], chunk: int = 5000) -> list:
    """Send RESP-packed ``commands`` on one connection, ``chunk`` per write, and return their replies; raise the
    first error reply."""
    pool = client.connection_pool
    conn = pool.get_connection()
    replies = []
    try:
        for start in range(0, len(commands), chunk):
            part = commands[start : start + chunk]
            conn.send_packed_command([b"".join(part)])
            replies.extend(conn.read_response() for _ in part)
    except BaseException:
        conn.disconnect()  # replies may be half read: never hand this connection out again as it is
        raise
    finally:
        pool.release(conn)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies
