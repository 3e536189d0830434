"""Recover capture after a gap (its replication slot invalidated or dropped, its offsets lost): `cdcf resnapshot`.

1. The connector is stopped, its offsets deleted and its slot dropped; started again, Debezium snapshots every
   row of every captured table (``op = r``) at a new LSN, then streams from there. Rows inserted or updated
   during the gap come back as they are now.
2. A snapshot record has no before image, so it cannot say which entity a row left: rows deleted during the gap
   are in no snapshot, and a row that moved to another owner (a transaction to another user) comes back under its
   new owner only. So every row the archive holds as live, in its last version before the snapshot, that the
   source no longer has, or has under other owners, gets a delete event shaped as Debezium's (its before image is
   the archived one) on its change topic, dated just before the snapshot (its LSN less one, its first commit time
   less a microsecond): the old owners lose the row, and the snapshot's record, newer, stands after it.

The archiver and the streaming job take both like any change, so every feature is exact again once they have
caught up. A row changed again after the snapshot (by a newer event) is not touched by our older delete.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import psycopg2
from confluent_kafka import KafkaError, TopicPartition

from cdcf.errors import PipelineError
from cdcf.kafka_clients import durable_producer, reader
from cdcf.settings import Settings
from cdcf.sources import sources
from connectors.archive import TABLE as CHANGELOG
from connectors.connect import ConnectClient, captured_tables, change_topics, connector_config
from connectors.contracts import HEARTBEAT, row_contracts

log = logging.getLogger(__name__)
SNAPSHOT_TIMEOUT_S = 1800.0


class ResnapshotError(PipelineError):
    """The snapshot did not complete."""


@dataclass
class Resnapshot:
    snapshot_rows: int = 0
    deleted: dict[str, int] = field(default_factory=dict)  # per table: rows deleted or moved during the gap
    seconds: float = 0.0


def resnapshot(settings: Settings, progress: Callable[[str], None] = log.info) -> Resnapshot:
    began = time.monotonic()
    result = Resnapshot()
    name, config = connector_config(settings)
    ends = _ends(settings, change_topics(settings))  # what the new snapshot writes comes after these offsets
    client = ConnectClient(settings.connect_url)
    try:
        if name in client.list():
            client.reset_offsets(name)
            progress(f"connector {name} stopped, its offsets deleted")
        _drop_slot(settings)
        progress(f"replication slot {settings.replication_slot} dropped")
        if name in client.list():
            client.resume(name)
        else:
            client.apply(name, config)
        client.wait_running(name, timeout_s=120)
        progress("connector running: snapshotting every captured table")
        result.snapshot_rows, lsn, micros = _await_snapshot(settings, ends, progress)
    finally:
        client.close()
    result.deleted = _send_gap_deletes(settings, progress, lsn - 1, micros - 1)
    result.seconds = time.monotonic() - began
    return result


def _drop_slot(settings: Settings) -> None:
    conn = psycopg2.connect(settings.pg_dsn(user=settings.debezium_user))
    try:
        with conn, conn.cursor() as cur:
            deadline = time.monotonic() + 60
            while True:  # the stopped task may hold it for a moment
                cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (settings.replication_slot,))
                row = cur.fetchone()
                if row is None:
                    return
                if not row[0]:
                    cur.execute("SELECT pg_drop_replication_slot(%s)", (settings.replication_slot,))
                    return
                if time.monotonic() > deadline:
                    raise ResnapshotError(f"replication slot {settings.replication_slot} is still in use")
                time.sleep(0.5)
    finally:
        conn.close()


def _ends(settings: Settings, topics: list[str]) -> dict[tuple[str, int], int]:
    consumer = reader(settings, "resnapshot")
    try:
        found = {}
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                found[(topic, partition)] = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                                                           timeout=10)[1]
        return found
    finally:
        consumer.close()


def _await_snapshot(settings: Settings, ends: dict, progress) -> tuple[int, int, int]:
    """Read the change topics from ``ends`` until the snapshot's last record (the heartbeat table is in it too, so
    there always is one); the source rows it held, and the lowest LSN and commit time (µs) of its records."""
    consumer = reader(settings, "resnapshot")
    seen, deadline, said = 0, time.monotonic() + SNAPSHOT_TIMEOUT_S, time.monotonic()
    lsn = micros = None
    try:
        consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in ends.items()])
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ResnapshotError(f"reading the change topics: {message.error()}")
            if message.value() is None:  # a tombstone
                continue
            source = json.loads(message.value()).get("source", {})
            snapshot = source.get("snapshot")
            if snapshot in (None, "false", "incremental"):
                continue
            seen += source.get("table") != HEARTBEAT
            lsn = source["lsn"] if lsn is None else min(lsn, source["lsn"])
            micros = source["ts_us"] if micros is None else min(micros, source["ts_us"])
            if snapshot == "last":
                progress(f"snapshot complete: {seen} rows")
                return seen, lsn, micros
            if time.monotonic() - said > 10:
                said = time.monotonic()
                progress(f"snapshot: {seen} rows so far")
        raise ResnapshotError(f"the snapshot did not finish within {SNAPSHOT_TIMEOUT_S:.0f} s ({seen} rows so far)")
    finally:
        consumer.close()


def _tables() -> list[str]:
    return [t for t in captured_tables() if t != HEARTBEAT]


def _send_gap_deletes(settings: Settings, progress, lsn: int, micros: int) -> dict[str, int]:
    """A Debezium-shaped delete at (``lsn``, ``micros``), on its change topic, for each row archived as live before
    that LSN that the source lacks or holds under other owners."""
    contracts = row_contracts()
    owners = {s.table.name: [e.join_key for e in s.owners] for s in sources()}
    now = datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)
    source = psycopg2.connect(settings.pg_dsn())
    archive = psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user))
    producer = durable_producer(settings)
    deleted: dict[str, int] = {}
    try:
        for table in _tables():
            contract, columns = contracts[table], owners.get(table, [])
            with source, source.cursor() as cur:
                cur.execute(f"SELECT {', '.join([contract.key, *columns])} FROM {table}")
                present = {key: tuple(owned) for key, *owned in cur.fetchall()}
            with archive, archive.cursor(name=f"live_{table}") as cur:
                cur.itersize = 10_000
                cur.execute(f"SELECT row_key, after FROM (SELECT DISTINCT ON (row_key) row_key, op, after FROM "
                            f"{CHANGELOG} WHERE source_table = %s AND lsn < %s ORDER BY row_key, lsn DESC) latest "
                            "WHERE op <> 'd'", (table, lsn))
                for key, image in cur:
                    if present.get(key) == tuple(image.get(c) for c in columns):
                        continue
                    producer.produce(f"{settings.topic_prefix}.public.{table}",
                                     key=json.dumps({contract.key: key}).encode(),
                                     value=json.dumps(_delete_event(settings, contract, image, lsn, now)).encode())
                    deleted[table] = deleted.get(table, 0) + 1
                    producer.poll(0)
            progress(f"{table}: {deleted.get(table, 0)} row(s) deleted or moved to other owners during the gap, "
                     "sent as deletes")
        if producer.flush(60) > 0:
            raise ResnapshotError("Kafka did not acknowledge the deletes within 60 s")
    finally:
        source.close()
        archive.close()
    return deleted


def _delete_event(settings: Settings, contract, image: dict, lsn: int, at: datetime) -> dict:
    """Debezium's delete of a row whose last image is ``image`` (as archived: dates back to Debezium's days)."""
    kinds = {c.name: c.kind for c in contract.columns}
    before = {k: (date.fromisoformat(v) - date(1970, 1, 1)).days if kinds.get(k) == "date" and isinstance(v, str)
              else v for k, v in image.items()}
    micros = int(at.astimezone(UTC).timestamp()) * 1_000_000 + at.microsecond
    return {"before": before, "after": None, "op": "d", "ts_ms": micros // 1000,
            "source": {"version": "cdcf-resnapshot", "connector": "postgresql", "name": settings.topic_prefix,
                       "ts_ms": micros // 1000, "ts_us": micros, "snapshot": "false", "db": settings.app_db,
                       "schema": "public", "table": contract.table, "txId": None, "lsn": lsn}}
