"""The changelog archive: every decoded change in the offline store (Postgres), exactly once.

Delivery from Debezium and Kafka is at-least-once; the archive's primary key (table, row key, LSN, op) makes a
re-delivered change a no-op, and Kafka offsets are committed only after the rows (and dead letters) are
durable. So a crash anywhere replays a little and stores nothing twice.
"""

from __future__ import annotations

import csv
import ctypes
import io
import json
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from cdcf import pg_clients
from cdcf.changelog import COLUMNS, DDL, TABLE
from cdcf.contracts import HEARTBEAT, change_topic_pattern
from cdcf.decoder import Change, DeadLetter, Position, decode
from cdcf.exporter import Counter, Gauge, Histogram
from cdcf.kafka_clients import consumer, durable_producer
from cdcf.settings import Settings
from cdcf.status import growing_since, report

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 1.0  # how often the status file is written
SLOT_EVERY_S = 5.0  # how often the replication slot's retained WAL is read

ARCHIVED = Counter("cdcf_archive_changes", "Changes archived (first deliveries; re-deliveries are not counted)")
REDELIVERED = Counter("cdcf_archive_redeliveries", "Changes delivered again and skipped (already archived)")
DEAD_LETTERED = Counter("cdcf_dead_letters", "Messages sent to the dead-letter topic, with their reason")
BATCH_SECONDS = Histogram(
    "cdcf_archive_batch_seconds",
    "Seconds to archive one consumed batch (rows, dead letters and offsets durable)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
LAG = Gauge(
    "cdcf_archive_lag_messages", "Messages on a change topic's partition not archived yet", ["topic", "partition"]
)
SLOT_RETAINED = Gauge(
    "cdcf_replication_slot_retained_wal_bytes",
    "WAL PostgreSQL keeps for the capture's replication slot (current LSN less the slot's restart LSN)",
    ["slot"],
)
SLOT_STATUS = Gauge(
    "cdcf_replication_slot_wal_status",
    "1 for the slot's wal_status (reserved, extended, unreserved, lost; missing: no such slot)",
    ["slot", "wal_status"],
)
WAL_STATUSES = ("reserved", "extended", "unreserved", "lost", "missing")
STAGE = f"{TABLE}_stage"
# A batch is COPYed into a per-session staging table, then moved over with ON CONFLICT DO NOTHING: 2x the rows/s
# of multi-row INSERTs, and re-delivered changes (in the table or twice in one batch) are skipped either way.
STAGE_DDL = f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
MOVE = f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {STAGE} ON CONFLICT DO NOTHING"
RETRY_COMMIT = {
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError._WAIT_COORD,
}
PR_SET_PDEATHSIG = 1  # prctl(2)
COPY = f"COPY {STAGE} ({', '.join(COLUMNS)}) FROM STDIN WITH (FORMAT csv)"


def archive_row(change: Change) -> tuple:
    """The archive row of a change; row images as JSON with exact decimals and ISO-8601 UTC times."""
    return (
        change.table,
        change.key,
        change.lsn,
        change.op,
        change.tx_id,
        change.commit_ts,
        _json(change.before),
        _json(change.after),
        change.position.topic,
        change.position.partition,
        change.position.offset,
    )


def copy_buffer(rows: Iterable[tuple]) -> io.StringIO:
    """Rows in COPY's CSV format: None is an empty field, which COPY reads as null (no archive value is an empty
    string)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    buffer.seek(0)
    return buffer


Raw = tuple[str, int, int, bytes | None, bytes | None]  # topic, partition, offset, key, value


@dataclass
class Encoded:
    """A batch decoded for the archive: its rows as COPY text, the dead letters, and per table the columns its
    images carry that no contract names."""

    rows: str
    changes: int
    dead: list[DeadLetter]
    ignored: dict[str, set[str]]


def encode(prefix: str, messages: list[Raw]) -> Encoded:
    """Decode a batch (a worker process runs this): tombstones are dropped, heartbeats too (only the streaming job's
    clock reads them)."""
    changes, dead, ignored = [], [], {}
    for topic, partition, offset, key, value in messages:
        result = decode(prefix, Position(topic, partition, offset), key, value)
        if isinstance(result, Change):
            if result.table != HEARTBEAT:
                changes.append(result)
                if result.ignored:
                    ignored.setdefault(result.table, set()).update(result.ignored)
        elif isinstance(result, DeadLetter):
            dead.append(result)
    return Encoded(copy_buffer(archive_row(c) for c in changes).getvalue(), len(changes), dead, ignored)


@dataclass
class Batch:
    """Consumed messages on their way to the archive: their encoding (done, or under way in a worker) and the
    offsets to commit once their rows are durable."""

    encoded: Future
    offsets: dict[tuple[str, int], int]
    messages: int


class Archiver:
    """Consumes every change topic of the prefix and archives what it decodes; dead letters go to their topic.

    Decoding takes most of the time, so ``settings.archive_workers`` processes do it, a batch each, while the
    archiver consumes the next; the batches are written, and their offsets committed, in the order they were
    consumed (and all of them before a rebalance takes partitions away)."""

    def __init__(self, settings: Settings, batch_size: int = 5000, status_file: Path | None = None) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.status_file = status_file
        self.totals = {"changes": 0, "duplicates": 0, "dead_letters": 0}
        self.health = {
            "last_dead_letter_at": None,
            "last_dead_letter_reason": None,
            "lag_growing_since": None,
            "ignored_columns": {},
        }  # table -> columns its images carry that no contract names
        self._lag, self._reported, self._slot_read = 0, 0.0, 0.0
        self._stopping = False
        self._pending: deque[Batch] = deque()
        self._pool: ProcessPoolExecutor | None = None

    def setup(self) -> None:
        s = self.settings
        self.db = pg_clients.connect_offline(s)
        with self.db, self.db.cursor() as cur:
            cur.execute(DDL)
            cur.execute(STAGE_DDL)
        if s.archive_workers:
            self._pool = ProcessPoolExecutor(
                s.archive_workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start
            )
        self.consumer = consumer(
            s,
            "reader",
            s.archive_group,
            **{
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "topic.metadata.refresh.interval.ms": 5000,
                "fetch.wait.max.ms": 20,
                # a killed archiver's partitions go to its successor once the broker gives up on it: 6 s, not 45
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 2000,
            },
        )
        self.consumer.subscribe(
            [change_topic_pattern(s.topic_prefix)], on_revoke=lambda _consumer, _partitions: self._drain()
        )
        self.producer = durable_producer(s, "reader")  # the dead-letter topic only (ACLs)

    def submit(self, messages: list[Message]) -> None:
        """Start encoding a consumed batch (in a worker, or here without workers)."""
        raw, offsets = [], {}
        for msg in messages:
            if msg.error():
                if msg.error().code() != KafkaError._PARTITION_EOF:
                    log.warning("kafka error on %s[%s]: %s", msg.topic(), msg.partition(), msg.error())
                continue
            raw.append((msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value()))
            offsets[(msg.topic(), msg.partition())] = msg.offset() + 1
        if self._pool is not None:
            encoded = self._pool.submit(encode, self.settings.topic_prefix, raw)
        else:
            encoded = Future()
            encoded.set_result(encode(self.settings.topic_prefix, raw))
        self._pending.append(Batch(encoded, offsets, len(messages)))

    def write(self, batch: Batch) -> None:
        """Archive one batch: rows and dead letters durable first, then its Kafka offsets."""
        started = time.monotonic()
        encoded: Encoded = batch.encoded.result()
        self._note_ignored(encoded.ignored)
        now, dead = datetime.now(UTC), encoded.dead
        for letter in dead:
            self.producer.produce(
                self.settings.dead_letter_topic,
                key=letter.key,
                value=json.dumps(letter.payload(now)).encode(),
                headers={"reason": letter.reason[:500]},
            )
        while dead and self.producer.flush(5) > 0:  # offsets move on only once the dead letters are durable
            if self._stopping:
                raise RuntimeError("stopping with dead letters not yet acknowledged by Kafka")
            log.warning("waiting for Kafka to acknowledge %d dead letters", len(self.producer))
        inserted = 0
        if encoded.changes:
            with self.db, self.db.cursor() as cur:
                cur.copy_expert(COPY, io.StringIO(encoded.rows))
                cur.execute(MOVE)
                inserted = cur.rowcount
        self._commit_offsets(batch.offsets)
        self.totals["changes"] += inserted
        self.totals["duplicates"] += encoded.changes - inserted
        self.totals["dead_letters"] += len(dead)
        ARCHIVED.inc(inserted)
        REDELIVERED.inc(encoded.changes - inserted)
        DEAD_LETTERED.inc(len(dead))
        BATCH_SECONDS.observe(time.monotonic() - started)
        if dead:
            self.health.update(last_dead_letter_at=time.time(), last_dead_letter_reason=dead[-1].reason[:200])
        log.info(
            "batch of %d messages: %d archived, %d duplicates, %d dead letters in %.3f s",
            batch.messages,
            inserted,
            encoded.changes - inserted,
            len(dead),
            time.monotonic() - started,
        )

    def run(self, idle_exit_s: float | None = None) -> dict[str, int]:
        """Consume until SIGTERM/SIGINT (or ``idle_exit_s`` without messages); return the totals."""
        self.setup()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        last_message = time.monotonic()
        workers = self.settings.archive_workers
        try:
            while not self._stopping:
                messages = self.consumer.consume(num_messages=self.batch_size, timeout=0.05)
                if messages:
                    self.submit(messages)
                    last_message = time.monotonic()
                # write what is encoded, in order; wait for the oldest batch once every worker has one
                while self._pending and (
                    not messages or len(self._pending) > workers or self._pending[0].encoded.done()
                ):
                    self.write(self._pending.popleft())
                if not messages and idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                self._report()
            self._drain()
        except BaseException:
            self._pending.clear()  # not committed: consumed again by whoever gets the partitions
            raise
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self.db.close()
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
        return self.totals

    def _drain(self) -> None:
        while self._pending:
            self.write(self._pending.popleft())

    def _commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """Commit a batch's offsets; its rows are durable already, so a failed commit only means a replay (which
        the archive's key absorbs): retry while Kafka says the error is passing, else log and go on."""
        if not offsets:
            return
        partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        while True:
            try:
                self.consumer.commit(offsets=partitions, asynchronous=False)
                return
            except KafkaException as exc:
                error = exc.args[0]
                if error.code() == KafkaError._NO_OFFSET:
                    return
                if not error.retriable() and error.code() not in RETRY_COMMIT or self._stopping:
                    log.warning("offset commit failed (%s); the next batch's commit covers it", error)
                    return
                log.warning("offset commit failed (%s); retrying in 1 s", error)
                time.sleep(1)

    def _note_ignored(self, ignored: dict[str, set[str]]) -> None:
        """Report once each column a table's images carry that its contract does not name (added upstream): its
        values are ignored, its changes archived."""
        known = self.health["ignored_columns"]
        for table, columns in ignored.items():
            new = sorted(columns - set(known.get(table, ())))
            if new:
                known[table] = sorted({*known.get(table, ()), *new})
                log.warning(
                    "%s has column(s) %s that no contract names (added upstream?): ignored; add them to "
                    "schemas/ to use them",
                    table,
                    ", ".join(new),
                )

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _report(self) -> None:
        """Write the status file, at most once a second."""
        if self.status_file is None or time.monotonic() - self._reported < REPORT_INTERVAL_S:
            return
        self._reported = time.monotonic()
        lag = self._lag_now()
        if self._reported - self._slot_read >= SLOT_EVERY_S:
            self._slot_read = self._reported
            self._read_slot()
        self.health["lag_growing_since"] = growing_since(self._lag, lag, self.health["lag_growing_since"], time.time())
        self._lag = lag
        report(self.status_file, {**self.totals, **self.health, "lag": lag})

    def _lag_now(self) -> int:
        """Messages on the assigned partitions not archived yet: the high watermark less the next offset, which is
        the position, or the committed offset of a partition nothing arrived on since it was assigned; and the
        batches consumed but not written yet."""
        positions = self.consumer.position(self.consumer.assignment())
        unknown = [tp for tp in positions if tp.offset < 0]
        try:
            committed = {
                (tp.topic, tp.partition): tp.offset
                for tp in (self.consumer.committed(unknown, timeout=2) if unknown else [])
            }
        except KafkaException:
            return self._lag
        lag = 0
        for tp in positions:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            next_offset = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
            behind = max(0, high - (next_offset if next_offset >= 0 else low))
            LAG.labels(tp.topic, str(tp.partition)).set(behind)
            lag += behind
        return lag + sum(batch.messages for batch in self._pending)

    def _read_slot(self) -> None:
        """The capture slot's retained WAL and wal_status, for Prometheus (a slot past max_slot_wal_keep_size is
        'lost', and capture with it)."""
        slot = self.settings.replication_slot
        try:
            with self.db, self.db.cursor() as cur:
                cur.execute(
                    "SELECT wal_status, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) "
                    "FROM pg_replication_slots WHERE slot_name = %s",
                    (slot,),
                )
                row = cur.fetchone()
        except psycopg2.Error as exc:  # the next batch's write meets the outage too, and says so
            log.warning("could not read replication slot %s: %s", slot, exc)
            return
        status, retained = row if row else ("missing", None)
        for known in WAL_STATUSES:
            SLOT_STATUS.labels(slot, known).set(1 if known == status else 0)
        if retained is not None:
            SLOT_RETAINED.labels(slot).set(float(retained))


def _worker_start() -> None:
    """A worker leaves SIGTERM and SIGINT to the archiver, which finishes its batches and then stops the workers;
    and it dies with the archiver (Linux's parent-death signal), so a killed archiver leaves no worker behind."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the signal was asked for
        os._exit(0)


def _json(row: dict[str, Any] | None) -> str | None:
    return None if row is None else json.dumps(row, default=_scalar, separators=(",", ":"))


def _scalar(value: Any) -> str:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot archive {type(value).__name__}")
