"""The streaming feature job: change topics -> Spark (parse, validate, project) -> feature state -> Redis + offline.

``build_stream(spark, settings, sink)`` is the factory; ``run(settings)`` is the long-running process that
`make up` starts. Spark reads Kafka with its offsets in the checkpoint; each micro-batch reaches the driver as
Arrow and goes into the feature state (streaming.state) in one Postgres transaction. A driver thread emits the
windows due to decay every second, under the same lock, so emissions never interleave.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.streaming import StreamingQuery

from cdcf.settings import Settings
from cdcf.status import report
from cdcf.spark import spark_session
from streaming.changes import change_rows, topics
from streaming.state import FeatureState, Written

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0


def build_stream(spark: SparkSession, settings: Settings, sink: Callable[[DataFrame, int], None]) -> StreamingQuery:
    """Start the query: every mirrored table's change topic, from the earliest offset on a fresh checkpoint."""
    records = (
        spark.readStream.format("kafka")
        .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
        .option("subscribe", ",".join(topics(settings.topic_prefix)))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.stream_max_changes_per_batch)
        .option("kafka.fetch.max.wait.ms", "10")
        .load()
    )
    return (
        change_rows(records, settings.topic_prefix).writeStream
        .foreachBatch(sink)
        .option("checkpointLocation", str(settings.paths.checkpoint))
        .trigger(processingTime=f"{settings.stream_trigger_ms} milliseconds")
        .queryName("cdcf-features")
        .start()
    )


class StreamJob:
    def __init__(self, settings: Settings, status_file: Path | None = None) -> None:
        self.settings = settings
        self.status_file = status_file
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.totals = {"batches": 0, "changes": 0, "rows_written": 0, "decayed": 0, "last_as_of": None,
                       "restarts": 0, "last_error": None}

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        started = time.monotonic()
        changes = batch.toArrow()
        read_s = time.monotonic() - started
        with self.lock:
            written = self.state.apply(changes)
        self._count(written, decayed=False)
        self.totals["batches"] += 1
        self._report()
        log.info("batch %d: %d changes, %d entities, %d feature rows in %.3f s (%.3f s reading)", batch_id,
                 written.changes, written.entities, written.rows, time.monotonic() - started, read_s)

    def decay_loop(self) -> None:
        """Every second, emit what time alone changed, as of a clock held back by the settle delay (changes
        committed before it are in by then)."""
        while not self.stopping.wait(1.0):
            clock = datetime.now(UTC) - timedelta(seconds=self.settings.stream_settle_s)
            try:
                with self.lock:
                    written = self.state.decay(clock)
            except Exception:  # noqa: BLE001 - keep decaying; the query thread reports real failures
                log.exception("decay pass failed; retrying in 1 s")
                continue
            if written.entities:
                self._count(written, decayed=True)
                log.info("decay: %d entities, %d feature rows as of %s", written.entities, written.rows, clock)
            self._report()

    def run(self) -> dict:
        spark = spark_session(self.settings, "cdcf-streaming-features")
        spark.sparkContext.setLogLevel("WARN")
        self.state = FeatureState(self.settings)
        decayer = threading.Thread(target=self.decay_loop, name="decay", daemon=True)
        decayer.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self._report()
        query = None
        try:
            while not self.stopping.is_set():
                query = build_stream(spark, self.settings, self.write_batch)
                while not self.stopping.is_set() and query.isActive:
                    self.stopping.wait(1.0)
                if not self.stopping.is_set():
                    # a broker or database outage fails the query; the checkpoint lets it resume exactly
                    self.totals["restarts"] += 1
                    self.totals["last_error"] = str(query.exception()).splitlines()[0][:300]
                    log.error("the streaming query failed (%s); restarting it in %.0f s from its checkpoint",
                              self.totals["last_error"], RESTART_DELAY_S)
                    self._report()
                    self.stopping.wait(RESTART_DELAY_S)
        finally:
            self.stopping.set()
            if query is not None:
                query.stop()
            decayer.join(timeout=10)
            self.state.close()
            spark.stop()
        return self.totals

    def _count(self, written: Written, decayed: bool) -> None:
        self.totals["changes"] += written.changes
        self.totals["rows_written"] += written.rows
        if written.as_of is not None:
            self.totals["last_as_of"] = written.as_of.isoformat()
        if decayed:
            self.totals["decayed"] += written.rows

    def _report(self) -> None:
        report(self.status_file, self.totals)
