"""The changelog archive: every decoded change in the offline store (Postgres), exactly once.

Delivery from Debezium and Kafka is at-least-once; the archive's primary key (table, row key, LSN, op) makes a
re-delivered change a no-op, and Kafka offsets are committed only after the rows (and dead letters) are
durable. So a crash anywhere replays a little and stores nothing twice.
"""

from __future__ import annotations

import io
import json
import logging
import signal
import time
from collections.abc import Iterable
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
from confluent_kafka import Consumer, KafkaError, KafkaException, Message

from cdcf.kafka_clients import durable_producer
from cdcf.settings import Settings
from cdcf.status import growing_since, report
from connectors.contracts import HEARTBEAT
from connectors.decoder import Change, DeadLetter, Position, decode

log = logging.getLogger(__name__)

TABLE = "cdc_changelog"
REPORT_INTERVAL_S = 1.0  # how often the status file is written
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    source_table TEXT NOT NULL,
    row_key BIGINT NOT NULL,
    lsn BIGINT NOT NULL,
    op CHAR(1) NOT NULL,
    tx_id BIGINT,
    commit_ts TIMESTAMPTZ NOT NULL,
    before JSONB,
    after JSONB,
    kafka_topic TEXT NOT NULL,
    kafka_partition INT NOT NULL,
    kafka_offset BIGINT NOT NULL,
    archived_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, row_key, lsn, op)
);
CREATE INDEX IF NOT EXISTS {TABLE}_commit_ts ON {TABLE} (commit_ts);
"""
COLUMNS = ("source_table", "row_key", "lsn", "op", "tx_id", "commit_ts", "before", "after", "kafka_topic",
           "kafka_partition", "kafka_offset")
STAGE = f"{TABLE}_stage"
# A batch is COPYed into a per-session staging table, then moved over with ON CONFLICT DO NOTHING: 2x the rows/s
# of multi-row INSERTs, and re-delivered changes (in the table or twice in one batch) are skipped either way.
STAGE_DDL = f"CREATE TEMP TABLE IF NOT EXISTS {STAGE} (LIKE {TABLE} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
MOVE = (f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) SELECT {', '.join(COLUMNS)} FROM {STAGE} "
        "ON CONFLICT DO NOTHING")
RETRY_COMMIT = {KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.COORDINATOR_NOT_AVAILABLE,
                KafkaError.NOT_COORDINATOR, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                KafkaError.REQUEST_TIMED_OUT, KafkaError._ALL_BROKERS_DOWN, KafkaError._WAIT_COORD}
COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def archive_row(change: Change) -> tuple:
    """The archive row of a change; row images as JSON with exact decimals and ISO-8601 UTC times."""
    return (change.table, change.key, change.lsn, change.op, change.tx_id, change.commit_ts,
            _json(change.before), _json(change.after), change.position.topic, change.position.partition,
            change.position.offset)


def copy_buffer(rows: Iterable[tuple]) -> io.StringIO:
    """Rows in COPY's text format (tab-separated, \\N for null, backslash escapes)."""
    buffer = io.StringIO()
    for values in rows:
        buffer.write("\t".join("\\N" if v is None else str(v).translate(COPY_ESCAPES) for v in values))
        buffer.write("\n")
    buffer.seek(0)
    return buffer


def split(prefix: str, messages: Iterable[Message]) -> tuple[list[Change], list[DeadLetter]]:
    """Decode a batch: the good changes and the dead letters (tombstones and Kafka errors are neither)."""
    changes, dead = [], []
    for msg in messages:
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("kafka error on %s[%s]: %s", msg.topic(), msg.partition(), msg.error())
            continue
        result = decode(prefix, Position(msg.topic(), msg.partition(), msg.offset()), msg.key(), msg.value())
        if isinstance(result, Change):
            if result.table != HEARTBEAT:  # only the streaming job's clock reads heartbeats
                changes.append(result)
        elif isinstance(result, DeadLetter):
            dead.append(result)
    return changes, dead


class Archiver:
    """Consumes every change topic of the prefix and archives what it decodes; dead letters go to their topic."""

    def __init__(self, settings: Settings, batch_size: int = 5000, status_file: Path | None = None) -> None:
        self.settings = settings
        self.batch_size = batch_size
        self.status_file = status_file
        self.totals = {"changes": 0, "duplicates": 0, "dead_letters": 0}
        self.health = {"last_dead_letter_at": None, "last_dead_letter_reason": None, "lag_growing_since": None,
                       "ignored_columns": {}}  # table -> columns its images carry that no contract names
        self._lag, self._reported = 0, 0.0
        self._stopping = False

    def setup(self) -> None:
        s = self.settings
        self.db = psycopg2.connect(s.pg_dsn(s.offline_db, user=s.feast_user))
        with self.db, self.db.cursor() as cur:
            cur.execute(DDL)
            cur.execute(STAGE_DDL)
        self.consumer = Consumer({
            "bootstrap.servers": s.kafka_bootstrap, "group.id": s.archive_group,
            "enable.auto.commit": False, "auto.offset.reset": "earliest",
            "topic.metadata.refresh.interval.ms": 5000, "fetch.wait.max.ms": 20, "log_level": 3,
            # a killed archiver's partitions go to its successor once the broker gives up on it: 6 s, not 45
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 2000,
        })
        self.consumer.subscribe([f"^{s.topic_prefix.replace('.', '[.]')}[.]public[.].+"])
        self.producer = durable_producer(s)

    def write(self, messages: list[Message]) -> None:
        """Archive one batch: rows and dead letters durable first, then the Kafka offsets."""
        started = time.monotonic()
        changes, dead = split(self.settings.topic_prefix, messages)
        self._note_ignored(changes)
        now = datetime.now(UTC)
        for letter in dead:
            self.producer.produce(self.settings.dead_letter_topic, key=letter.key,
                                  value=json.dumps(letter.payload(now)).encode(),
                                  headers={"reason": letter.reason[:500]})
        while dead and self.producer.flush(5) > 0:  # offsets move on only once the dead letters are durable
            if self._stopping:
                raise RuntimeError("stopping with dead letters not yet acknowledged by Kafka")
            log.warning("waiting for Kafka to acknowledge %d dead letters", len(self.producer))
        inserted = 0
        if changes:
            with self.db, self.db.cursor() as cur:
                cur.copy_from(copy_buffer(archive_row(c) for c in changes), STAGE, columns=COLUMNS)
                cur.execute(MOVE)
                inserted = cur.rowcount
        self._commit_offsets()
        self.totals["changes"] += inserted
        self.totals["duplicates"] += len(changes) - inserted
        self.totals["dead_letters"] += len(dead)
        if dead:
            self.health.update(last_dead_letter_at=time.time(), last_dead_letter_reason=dead[-1].reason[:200])
        log.info("batch of %d messages: %d archived, %d duplicates, %d dead letters in %.3f s", len(messages),
                 inserted, len(changes) - inserted, len(dead), time.monotonic() - started)

    def run(self, idle_exit_s: float | None = None) -> dict[str, int]:
        """Consume until SIGTERM/SIGINT (or ``idle_exit_s`` without messages); return the totals."""
        self.setup()
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        last_message = time.monotonic()
        try:
            while not self._stopping:
                batch = self.consumer.consume(num_messages=self.batch_size, timeout=0.05)
                if batch:
                    self.write(batch)
                    last_message = time.monotonic()
                elif idle_exit_s is not None and time.monotonic() - last_message > idle_exit_s:
                    break
                self._report()
        finally:
            self.consumer.close()
            self.producer.flush(10)
            self.db.close()
        return self.totals

    def _commit_offsets(self) -> None:
        """Commit the consumed offsets; the rows are durable already, so a failed commit only means a replay
        (which the archive's key absorbs): retry while Kafka says the error is passing, else log and go on."""
        while True:
            try:
                self.consumer.commit(asynchronous=False)
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

    def _note_ignored(self, changes: list[Change]) -> None:
        """Report once each column a table's images carry that its contract does not name (added upstream): its
        values are ignored, its changes archived."""
        known = self.health["ignored_columns"]
        for change in changes:
            new = [c for c in change.ignored if c not in known.get(change.table, ())]
            if new:
                known[change.table] = sorted({*known.get(change.table, ()), *new})
                log.warning("%s has column(s) %s that no contract names (added upstream?): ignored; add them to "
                            "schemas/ to use them", change.table, ", ".join(new))

    def _stop(self, *_: object) -> None:
        self._stopping = True

    def _report(self) -> None:
        """Write the status file, at most once a second."""
        if self.status_file is None or time.monotonic() - self._reported < REPORT_INTERVAL_S:
            return
        self._reported = time.monotonic()
        lag = self._lag_now()
        self.health["lag_growing_since"] = growing_since(self._lag, lag, self.health["lag_growing_since"], time.time())
        self._lag = lag
        report(self.status_file, {**self.totals, **self.health, "lag": lag})

    def _lag_now(self) -> int:
        """Messages on the assigned partitions not archived yet: the high watermark less the next offset, which is
        the position, or the committed offset of a partition nothing arrived on since it was assigned."""
        positions = self.consumer.position(self.consumer.assignment())
        unknown = [tp for tp in positions if tp.offset < 0]
        try:
            committed = {(tp.topic, tp.partition): tp.offset
                         for tp in (self.consumer.committed(unknown, timeout=2) if unknown else [])}
        except KafkaException:
            return self._lag
        lag = 0
        for tp in positions:
            low, high = self.consumer.get_watermark_offsets(tp, cached=True) or (0, 0)
            next_offset = tp.offset if tp.offset >= 0 else committed.get((tp.topic, tp.partition), -1)
            lag += max(0, high - (next_offset if next_offset >= 0 else low))
        return lag


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
