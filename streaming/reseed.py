"""Seed the online store from the offline store: each entity's latest row of each view, written into Redis in
Feast's layout by the streaming job's own writer. A lost or flushed Redis is rebuilt in seconds, without
replaying Kafka from the beginning; the streaming job then carries on from its checkpoint.

The streaming job does it by itself (``OnlineGuard``): the online store holds a marker with the latest as-of time
the job wrote and the Redis run it wrote it in, and before each micro-batch the job checks it. No marker (Redis
restarted empty, or was flushed), or one from an earlier Redis run that is older than what the job knows it wrote
(Redis came back from older data), and the job re-seeds first. A marker of the running Redis is never stale: a
job that died between its writes and its marker lost nothing there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from online.writer import OnlineWriter

log = logging.getLogger(__name__)
CHUNK = 5_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MARKER = "cdcf_stream_marker"  # a hash beside Feast's keys: the latest as-of written, and the Redis run it was in


def seed_online(settings: Settings, progress: Callable[[str], None] = log.info) -> dict[str, int]:
    """Write the latest offline row of every entity of every view, the batch-scored ones too, unless Redis holds a
    newer one (the streaming job may be running); return the rows written per view."""
    writer = OnlineWriter(settings)
    written: dict[str, int] = {}
    conn = pg_clients.connect_offline(settings)
    try:
        for view in decl.ALL_VIEWS:
            key = view.entity.join_key
            names = ", ".join(f.name for f in view.features)
            with conn.cursor(name=f"seed_{view.name}") as cur:  # server-side: the table may be large
                cur.itersize = CHUNK
                cur.execute(
                    f"SELECT DISTINCT ON ({key}) {key}, {EVENT_TIMESTAMP}, {names} FROM {view.offline_table} "
                    f"ORDER BY {key}, {EVENT_TIMESTAMP} DESC"
                )
                written[view.name] = 0
                while rows := cur.fetchmany(CHUNK):
                    written[view.name] += writer.write(view, rows, only_newer=True)
            conn.commit()
            progress(f"{view.name}: {written[view.name]} entities written to the online store")
    finally:
        conn.close()
        writer.close()
    return written


class OnlineGuard:
    """Keeps the online store's marker, and re-seeds the store when the marker shows it lost what was written."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client = OnlineWriter(settings).client
        self.key = f"{settings.feast_project}:{MARKER}"
        self.written_us = _offline_latest_us(settings)  # what this store held, as far as the offline store knows
        self.marked_us = 0  # the as-of time of the marker as this guard last wrote it

    def check(self) -> str | None:
        """Re-seed the online store if it lost writes; return why it did (None: nothing was lost)."""
        marker = self.client.hgetall(self.key)
        if not marker and self.written_us == 0:  # a new pipeline: nothing was ever written, nothing can be lost
            self._write_marker()
            return None
        if not marker:
            why = "holds no marker (it restarted empty or was flushed)"
        elif int(marker[b"as_of_us"]) < self.written_us and marker.get(b"run_id") != self._run_id().encode():
            why = (
                f"holds writes up to as-of {int(marker[b'as_of_us'])} µs only, older than the {self.written_us} "
                f"written (it came back from older data)"
            )
        else:
            if self.marked_us < self.written_us:
                self._write_marker()
            return None
        log.warning("the online store %s: re-seeding it from the offline store", why)
        seed_online(self.settings)
        self._write_marker()
        return why

    def mark(self, as_of_us: int) -> None:
        """Record that everything up to ``as_of_us`` is written, unless the store lost writes since the last mark
        (its marker went missing or back): that is left for ``check`` to see."""
        self.written_us = max(self.written_us, as_of_us)
        held = self.client.hget(self.key, "as_of_us")
        if held is not None and int(held) >= self.marked_us:
            self._write_marker()

    def _run_id(self) -> str:
        return self.client.info("server")["run_id"]

    def _write_marker(self) -> None:
        self.client.hset(self.key, mapping={"as_of_us": self.written_us, "run_id": self._run_id()})
        self.marked_us = self.written_us

    def close(self) -> None:
        self.client.close()


def _offline_latest_us(settings: Settings) -> int:
    conn = pg_clients.connect_offline(settings)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(" UNION ALL ".join(f"SELECT max({EVENT_TIMESTAMP}) FROM {v.name}" for v in decl.FEATURE_VIEWS))
            latest = [at for (at,) in cur.fetchall() if at is not None]
    finally:
        conn.close()
    return (max(latest) - EPOCH) // timedelta(microseconds=1) if latest else 0
