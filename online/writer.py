"""Write feature rows into Redis in Feast's own layout, so that get_online_features and `feast serve` read them.

Layout (feast.infra.online_stores.redis, spelled out in cdcf/layout.py and checked against Feast's helpers by the
unit tests): one hash per entity, key = serialized EntityKey + project; field = murmur3 of "view:feature" holding a
ValueProto typed by the feature's declared dtype; "_ts:view" holding the as-of time as a protobuf Timestamp. The
HSET commands are packed by hand and sent a few thousand per write. Rows must carry increasing as-of times per
entity (the state guarantees it), as Feast's own writer would skip older ones.
"""

from __future__ import annotations

from collections.abc import Iterable

from cdcf import layout
from cdcf.features import FeatureView
from cdcf.redis_clients import redis_client
from cdcf.settings import Settings


class OnlineWriter:
    def __init__(self, settings: Settings) -> None:
        self.project = settings.feast_project.encode()
        self.client = redis_client(settings, "writer")
        self._views: dict[str, tuple] = {}

    def _layout(self, view: FeatureView) -> tuple:
        """Per view: key prefix, the packed "_ts" field, value encoders, and the HSET command as a template of
        key, as-of time and each value (both lengths given, values as whole bulk strings)."""
        if view.name not in self._views:
            ts_field = layout.bulk(layout.ts_field(view.name)).replace(b"%", b"%%")
            fields = b"".join(
                layout.bulk(layout.field(view.name, f.name)).replace(b"%", b"%%") + b"%s" for f in view.features
            )
            self._views[view.name] = (
                layout.key_prefix(view.entity.join_key),
                layout.bulk(layout.ts_field(view.name)),
                [layout.BULK_ENCODERS[f.dtype] for f in view.features],
                b"*%d\r\n$4\r\nHSET\r\n" % (4 + 2 * len(view.features))
                + b"$%d\r\n%s\r\n"
                + ts_field
                + b"$%d\r\n%s\r\n"
                + fields,
            )
        return self._views[view.name]

    def write(self, view: FeatureView, rows: Iterable[tuple], *, only_newer: bool = False) -> int:
        """Write rows ``(entity id, as-of time, *values in declaration order)`` of ``view``; return the count.
        ``only_newer`` skips rows not newer than what Redis holds (as Feast's own writer does), at the cost of a
        read first: for writers that may race the streaming job."""
        prefix, ts_bulk, encoders, template = self._layout(view)
        rows = list(rows)
        if only_newer:
            held = layout.execute_packed(
                self.client,
                [
                    b"*3\r\n$4\r\nHGET\r\n%s%s"
                    % (layout.bulk(layout.entity_key(prefix, row[0], self.project)), ts_bulk)
                    for row in rows
                ],
            )
            rows = [row for row, stamp in zip(rows, held, strict=True) if _newer(row[1], stamp)]
        stamps: dict = {}  # as-of time -> its encoding: rows of a batch share few
        commands = []
        for entity_id, as_of, *values in rows:
            key = layout.entity_key(prefix, entity_id, self.project)
            stamp = stamps.get(as_of) or stamps.setdefault(as_of, layout.encode_timestamp(as_of))
            commands.append(
                template
                % (
                    len(key),
                    key,
                    len(stamp),
                    stamp,
                    *[
                        layout.NULL_BULK if value is None else encode(value)
                        for encode, value in zip(encoders, values, strict=True)
                    ],
                )
            )
        layout.write_packed(self.client, commands)
        return len(rows)

    def write_columns(self, view: FeatureView, ids: list[int], as_of_us: list[int], columns: list[list]) -> int:
        """Write rows given as columns: entity ids, as-of times in microseconds, and each feature's values in
        declaration order (None for null); return the count."""
        prefix, _, encoders, template = self._layout(view)
        commands = []
        for n, (entity_id, micros) in enumerate(zip(ids, as_of_us, strict=True)):
            key = layout.entity_key(prefix, entity_id, self.project)
            stamp = layout.encode_timestamp_us(micros)
            commands.append(
                template
                % (
                    len(key),
                    key,
                    len(stamp),
                    stamp,
                    *[
                        layout.NULL_BULK if column[n] is None else encode(column[n])
                        for encode, column in zip(encoders, columns, strict=True)
                    ],
                )
            )
        layout.write_packed(self.client, commands)
        return len(commands)

    def close(self) -> None:
        self.client.close()


def _newer(as_of, held: bytes | None) -> bool:
    stamp = layout.decode_timestamp(held)
    return stamp is None or layout.decode_timestamp(layout.encode_timestamp(as_of)) > stamp
