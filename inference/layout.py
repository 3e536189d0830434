"""Feast's Redis layout, byte for byte, without Feast (the inference hosts carry only redis, hiredis and mmh3).

- key: Feast's serialized EntityKey (version 3) of one INT64 join key, then the project name;
- field: murmur3_32 (little-endian) of "view:feature", holding a ValueProto: 0x20 + varint for int64_val,
  0x29 + 8 bytes for double_val, 0x12 + length + UTF-8 for string_val, empty for null;
- field "_ts:view": a protobuf Timestamp (0x08 + varint seconds, 0x10 + varint nanos).
Tests check every function here against Feast's own helpers and get_online_features.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

import mmh3
import numpy as np

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
        return data[at:at + length].decode()
    raise ValueError(f"unsupported ValueProto field tag {tag:#x}")


def encode_value(value) -> bytes:
    if value is None:
        return b""
    if isinstance(value, float):
        return bytes([DOUBLE_TAG]) + _DOUBLE.pack(value)
    if isinstance(value, int):
        return bytes([INT64_TAG]) + _encode_varint(value & ((1 << 64) - 1))
    raw = str(value).encode()
    return bytes([STRING_TAG]) + _encode_varint(len(raw)) + raw


def _encode_varint(value: int) -> bytes:
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
    delta = at - EPOCH
    seconds = delta.days * 86_400 + delta.seconds
    out = bytes([0x08]) + _encode_varint(seconds) if seconds else b""
    nanos = delta.microseconds * 1000
    return out + (bytes([0x10]) + _encode_varint(nanos) if nanos else b"")


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
    out = np.empty(len(raw))
    for n, b in enumerate(raw):
        if not b:
            out[n] = np.nan
            continue
        value = _SMALL.get(b)
        if value is None:
            if b[0] not in (INT64_TAG, DOUBLE_TAG):
                return np.array([decode_value(b) for b in raw], dtype=object), "object"
            value = decode_value(b)
            if len(_SMALL) < 100_000:
                _SMALL[b] = value
        out[n] = value
    return out, "int64" if all(not b or b[0] == INT64_TAG for b in raw) else "double"


def decode_timestamps(raw: list) -> np.ndarray:
    """Many protobuf Timestamps -> datetime64[us] (NaT for missing). The common shape (a 5-byte varint of seconds,
    then nanos) is decoded in one numpy pass; any other, and small batches, go through decode_timestamp."""
    if len(raw) <= SMALL_BATCH:
        return np.array([np.datetime64("NaT") if (at := decode_timestamp(b)) is None
                         else np.datetime64(at.replace(tzinfo=None), "us") for b in raw], dtype="datetime64[us]")
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
