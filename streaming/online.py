"""Write feature rows into Redis in Feast's own layout, so that get_online_features and `feast serve` read them.

Layout (feast.infra.online_stores.redis): one hash per entity, key = serialized EntityKey + project; field =
murmur3 of "view:feature" holding a ValueProto; "_ts:view" holding the as-of time as a protobuf Timestamp. The
keys and hashes come from Feast's own helpers; one pipeline per batch. Rows must carry increasing as-of times
per entity (the state guarantees it), as Feast's own writer would skip older ones.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from cdcf.features import FeatureView
from cdcf.settings import Settings

ENTITY_KEY_VERSION = 3
VALUE_FIELD = {"int64": "int64_val", "float64": "double_val", "string": "string_val"}


class OnlineWriter:
    def __init__(self, settings: Settings) -> None:
        self.project = settings.feast_project.encode()
        self.client = redis.Redis(host=settings.redis_host, port=settings.redis_port,
                                  password=settings.redis_password.get_secret_value())
        self._fields: dict[str, tuple[bytes, ...]] = {}

    def write(self, view: FeatureView, rows: Iterable[tuple], *, only_newer: bool = False) -> int:
        """Write rows ``(entity id, as-of time, *values in declaration order)`` of ``view``; return the count.
        ``only_newer`` skips rows not newer than what Redis holds (as Feast's own writer does), at the cost of a
        read first: for writers that may race the streaming job."""
        fields = self._fields.setdefault(view.name, tuple(_mmh3(f"{view.name}:{f.name}") for f in view.features))
        kinds = [VALUE_FIELD[f.dtype] for f in view.features]
        ts_field = f"_ts:{view.name}".encode()
        rows = list(rows)
        if only_newer:
            with self.client.pipeline(transaction=False) as pipe:
                for entity_id, *_ in rows:
                    pipe.hget(self._key(view, entity_id), ts_field)
                held = pipe.execute()
            rows = [row for row, stamp in zip(rows, held, strict=True) if _newer(row[1], stamp)]
        count = 0
        with self.client.pipeline(transaction=False) as pipe:
            for entity_id, as_of, *values in rows:
                mapping = {ts_field: _timestamp(as_of)}
                for field, kind, value in zip(fields, kinds, values, strict=True):
                    mapping[field] = (Value() if value is None else Value(**{kind: value})).SerializeToString()
                pipe.hset(self._key(view, entity_id), mapping=mapping)
                count += 1
            pipe.execute()
        return count

    def _key(self, view: FeatureView, entity_id: int) -> bytes:
        key = EntityKey(join_keys=[view.entity.join_key], entity_values=[Value(int64_val=entity_id)])
        return serialize_entity_key(key, entity_key_serialization_version=ENTITY_KEY_VERSION) + self.project

    def close(self) -> None:
        self.client.close()


def _timestamp(as_of: datetime) -> bytes:
    ts = Timestamp()
    ts.FromDatetime(as_of)
    return ts.SerializeToString()


def _newer(as_of: datetime, held: bytes | None) -> bool:
    if held is None:
        return True
    stamp, ours = Timestamp(), Timestamp()
    stamp.ParseFromString(held)
    ours.FromDatetime(as_of)
    return ours.ToMicroseconds() > stamp.ToMicroseconds()
