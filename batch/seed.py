"""Seed the online store from the offline store: each entity's latest row of each view, written into Redis in
Feast's layout by the streaming job's own writer. A lost or flushed Redis is rebuilt in seconds, without
replaying Kafka from the beginning; the streaming job then carries on from its checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Callable

import psycopg2

from cdcf import features as decl
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from streaming.online import OnlineWriter

log = logging.getLogger(__name__)
CHUNK = 5_000


def seed_online(settings: Settings, progress: Callable[[str], None] = log.info) -> dict[str, int]:
    """Write the latest offline row of every entity of every view, unless Redis holds a newer one (the streaming
    job may be running); return the rows written per view."""
    writer = OnlineWriter(settings)
    written: dict[str, int] = {}
    conn = psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user))
    try:
        for view in decl.FEATURE_VIEWS:
            key = view.entity.join_key
            names = ", ".join(f.name for f in view.features)
            with conn.cursor(name=f"seed_{view.name}") as cur:  # server-side: the table may be large
                cur.itersize = CHUNK
                cur.execute(f"SELECT DISTINCT ON ({key}) {key}, {EVENT_TIMESTAMP}, {names} FROM {view.name} "
                            f"ORDER BY {key}, {EVENT_TIMESTAMP} DESC")
                written[view.name] = 0
                while rows := cur.fetchmany(CHUNK):
                    written[view.name] += writer.write(view, rows, only_newer=True)
            conn.commit()
            progress(f"{view.name}: {written[view.name]} entities written to the online store")
    finally:
        conn.close()
        writer.close()
    return written
