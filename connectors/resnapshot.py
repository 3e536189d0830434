"""Recover capture after a gap (its replication slot invalidated or dropped, its offsets lost): `cdcf resnapshot`.

1. The connector is stopped, its offsets deleted and its slot dropped; started again, Debezium snapshots every
   row of every captured table (``op = r``) at a new LSN, then streams from there. Rows inserted or updated
   during the gap come back as they are at the snapshot. Every snapshot record carries the snapshot's LSN and
   time (its transaction's start), and the decoders put it just before that LSN; a change committed after the
   snapshot's point carries that LSN or a higher one, so the engine, the archive and the oracle all keep that
   change over the snapshot's older image, even one committed before the snapshot's transaction began.
2. A snapshot record has no before image, so it cannot say which entity a row left: rows deleted during the gap
   are in no snapshot, and a row that moved to another owner (a transaction to another user) comes back under its
   new owner only. So every row the archive holds as live, in its last version before the snapshot, that the
   snapshot lacks, or holds under other owners, gets a delete event shaped as Debezium's (its before image is
   the archived one) on its change topic, dated just before the snapshot (one below its records' LSN, its time
   less a microsecond): the old owners lose the row, and the snapshot's record, newer, stands after it.
3. Those deletes must reach Kafka before the streaming job's clock passes their time, or they would apply late,
   and offline rows as of times after them would count the deleted rows. The clock moves only with the offsets
   Debezium commits while streaming (a snapshot's offsets and the first offset after it carry the snapshot's time
   while changes from after its point are still to come), so Debezium is held after the snapshot
   (``streaming.delay.ms``) until the deletes are acknowledged, then released; if this command fails, the hold
   is released all the same (streaming is never stopped for long), and running it again repairs the rows.

The archiver and the streaming job take both like any change, so every feature is exact again once they have
caught up, offline rows as of any time after the snapshot included.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

from confluent_kafka import KafkaError, TopicPartition

from cdcf import pg_clients
from cdcf.changelog import TABLE as CHANGELOG
from cdcf.contracts import HEARTBEAT, change_topic, row_contracts
from cdcf.errors import PipelineError
from cdcf.kafka_clients import consumer as kafka_consumer
from cdcf.kafka_clients import durable_producer, reader
from cdcf.settings import Settings
from cdcf.sources import sources
from connectors.connect import ConnectClient, captured_tables, change_topics, connector_config

log = logging.getLogger(__name__)
SNAPSHOT_TIMEOUT_S = 1800.0
CATCH_UP_TIMEOUT_S = 300.0
# how long Debezium waits after the snapshot before it streams, unless released sooner: the bound on a stall
# should this command die between the snapshot and the release
HOLD_STREAMING_MS = 600_000


class ResnapshotError(PipelineError):
    """The snapshot did not complete."""


@dataclass
class Resnapshot:
    snapshot_rows: int = 0
    deleted: dict[str, int] = field(default_factory=dict)  # per table: rows deleted or moved during the gap
    seconds: float = 0.0


@dataclass
class Snapshot:
    """What a snapshot held: its LSN and time (µs) as Debezium gives them, and per table each row's key and
    owners."""

    lsn: int = -1
    micros: int = -1
    rows: dict[str, dict[int, tuple]] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(len(rows) for rows in self.rows.values())


def resnapshot(settings: Settings, progress: Callable[[str], None] = log.info) -> Resnapshot:
    began = time.monotonic()
    result = Resnapshot()
    name, config = connector_config(settings)
    client = ConnectClient(settings)
    try:
        exists = name in client.list()
        if exists:
            client.reset_offsets(name)
            progress(f"connector {name} stopped, its offsets deleted")
        ends = _ends(settings, change_topics(settings))  # what the new snapshot writes comes after these offsets
        _drop_slot(settings)
        progress(f"replication slot {settings.replication_slot} dropped")
        client.write_config(name, {**config, "streaming.delay.ms": str(HOLD_STREAMING_MS)})
        if exists:
            client.resume(name)
        client.wait_running(name, timeout_s=120)
        progress("connector running: snapshotting every captured table (streaming held until the gap is closed)")
        snapshot = _await_snapshot(settings, client, name, ends, progress)
        result.snapshot_rows = snapshot.size
        _await_archive(settings, ends)
        result.deleted = _send_gap_deletes(settings, progress, snapshot)
    finally:
        try:
            client.apply(name, config)  # released: Debezium restarts and streams from the snapshot's LSN
            progress("connector streaming again")
        finally:
            client.close()
    result.seconds = time.monotonic() - began
    return result


def _drop_slot(settings: Settings) -> None:
    conn = pg_clients.connect(settings, user=settings.debezium_user)
    try:
        with conn, conn.cursor() as cur:
            deadline = time.monotonic() + 60
            while True:  # the stopped task may hold it for a moment
                cur.execute(
                    "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (settings.replication_slot,)
                )
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
                found[(topic, partition)] = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )[1]
        return found
    finally:
        consumer.close()


def _await_snapshot(settings: Settings, client: ConnectClient, name: str, ends: dict, progress) -> Snapshot:
    """Read the change topics from ``ends`` to the snapshot's last record (the heartbeat table is in it too, so
    there always is one), and on to where every topic ended once Connect had committed past it: Kafka keeps no
    order across topics, so records of other tables may still follow that last one."""
    contracts = row_contracts()
    owners = _owner_columns()
    snapshot = Snapshot(rows={t: {} for t in _tables()})
    consumer = reader(settings, "resnapshot")
    deadline, said = time.monotonic() + SNAPSHOT_TIMEOUT_S, time.monotonic()
    reached = dict(ends)  # per partition, the next offset to read
    marks: dict[tuple[str, int], int] | None = None  # where the topics ended once the snapshot was all in Kafka
    try:
        consumer.assign([TopicPartition(t, p, offset) for (t, p), offset in ends.items()])
        while time.monotonic() < deadline:
            if marks is not None and all(reached[tp] >= mark for tp, mark in marks.items()):
                progress(f"snapshot complete: {snapshot.size} rows")
                return snapshot
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    continue
                raise ResnapshotError(f"reading the change topics: {message.error()}")
            reached[(message.topic(), message.partition())] = message.offset() + 1
            if message.value() is None:  # a tombstone
                continue
            event = json.loads(message.value())
            source = event.get("source", {})
            if source.get("snapshot") in (None, "false", "incremental"):
                continue
            table = source.get("table")
            if table in snapshot.rows:
                after = event["after"]
                snapshot.rows[table][after[contracts[table].key]] = tuple(after.get(c) for c in owners.get(table, []))
            snapshot.lsn = source["lsn"] if snapshot.lsn < 0 else min(snapshot.lsn, source["lsn"])
            snapshot.micros = source["ts_us"] if snapshot.micros < 0 else min(snapshot.micros, source["ts_us"])
            if source["snapshot"] == "last":
                _await_snapshot_offset(client, name)
                marks = {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=10)[1] for t, p in ends}
            if time.monotonic() - said > 10:
                said = time.monotonic()
                progress(f"snapshot: {snapshot.size} rows so far")
        raise ResnapshotError(
            f"the snapshot did not finish within {SNAPSHOT_TIMEOUT_S:.0f} s ({snapshot.size} rows so far)"
        )
    finally:
        consumer.close()


def _await_snapshot_offset(client: ConnectClient, name: str) -> None:
    """Wait until Connect has committed an offset past the snapshot (Debezium's marks of a snapshot are gone, or
    say it completed): every snapshot record is then in Kafka, and the restart that releases streaming does not
    snapshot again."""
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    while time.monotonic() < deadline:
        offsets = [o.get("offset") or {} for o in client.offsets(name).get("offsets", [])]
        if any("snapshot" not in o or o.get("snapshot_completed") for o in offsets):
            return
        time.sleep(0.2)
    raise ResnapshotError(f"Connect did not commit the snapshot's last offset within {CATCH_UP_TIMEOUT_S:.0f} s")


def _await_archive(settings: Settings, ends: dict[tuple[str, int], int]) -> None:
    """Wait until the archiver has taken every change from before the snapshot (the deletes are computed from it)."""
    consumer = kafka_consumer(settings, "admin", settings.archive_group, **{"enable.auto.commit": False})
    deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
    try:
        while True:
            committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=10)
            behind = sum(max(0, ends[(c.topic, c.partition)] - max(c.offset, 0)) for c in committed)
            if behind == 0:
                return
            if time.monotonic() > deadline:
                raise ResnapshotError(
                    f"the archiver is {behind} change(s) short of the changes from before the "
                    f"snapshot after {CATCH_UP_TIMEOUT_S:.0f} s; is it running (`make status`)?"
                )
            time.sleep(0.5)
    finally:
        consumer.close()


def _tables() -> list[str]:
    return [t for t in captured_tables() if t != HEARTBEAT]


def _owner_columns() -> dict[str, list[str]]:
    return {s.table.name: [e.join_key for e in s.owners] for s in sources()}


def _send_gap_deletes(settings: Settings, progress, snapshot: Snapshot) -> dict[str, int]:
    """A Debezium-shaped delete, just before the snapshot, on its change topic, for each row archived as live before
    the snapshot's LSN that the snapshot lacks or holds under other owners."""
    contracts = row_contracts()
    owners = _owner_columns()
    reads = snapshot.lsn - 1  # where the decoders put the snapshot's records (cdcf/decoder.py)
    lsn, micros = reads - 1, snapshot.micros - 1
    archive = pg_clients.connect_offline(settings)
    producer = durable_producer(settings, "admin")
    deleted: dict[str, int] = {}
    try:
        for table in _tables():
            contract, columns, present = contracts[table], owners.get(table, []), snapshot.rows[table]
            with archive, archive.cursor(name=f"live_{table}") as cur:
                cur.itersize = 10_000
                cur.execute(
                    f"SELECT row_key, after FROM (SELECT DISTINCT ON (row_key) row_key, op, after FROM "
                    f"{CHANGELOG} WHERE source_table = %s AND lsn < %s ORDER BY row_key, lsn DESC) latest "
                    "WHERE op <> 'd'",
                    (table, reads),
                )
                for key, image in cur:
                    if present.get(key) == tuple(image.get(c) for c in columns):
                        continue
                    producer.produce(
                        change_topic(settings.topic_prefix, table),
                        key=json.dumps({contract.key: key}).encode(),
                        value=json.dumps(_delete_event(settings, contract, image, lsn, micros)).encode(),
                    )
                    deleted[table] = deleted.get(table, 0) + 1
                    producer.poll(0)
            progress(
                f"{table}: {deleted.get(table, 0)} row(s) deleted or moved to other owners during the gap, "
                "sent as deletes"
            )
        if producer.flush(60) > 0:
            raise ResnapshotError("Kafka did not acknowledge the deletes within 60 s")
    finally:
        archive.close()
    return deleted


def _delete_event(settings: Settings, contract, image: dict, lsn: int, micros: int) -> dict:
    """Debezium's delete of a row whose last image is ``image`` (as archived: dates back to Debezium's days)."""
    kinds = {c.name: c.kind for c in contract.columns}
    before = {
        k: (date.fromisoformat(v) - date(1970, 1, 1)).days if kinds.get(k) == "date" and isinstance(v, str) else v
        for k, v in image.items()
    }
    return {
        "before": before,
        "after": None,
        "op": "d",
        "ts_ms": micros // 1000,
        "source": {
            "version": "cdcf-resnapshot",
            "connector": "postgresql",
            "name": settings.topic_prefix,
            "ts_ms": micros // 1000,
            "ts_us": micros,
            "snapshot": "false",
            "db": settings.app_db,
            "schema": "public",
            "table": contract.table,
            "txId": None,
            "lsn": lsn,
        },
    }
