"""The streaming feature job: change topics -> decode (JVM) -> route by entity -> window engine (state store, on
the executors) -> Redis + offline tables (from the executors).

``build_stream(spark, settings, sink)`` is the factory; ``StreamJob.run`` is the long-running process that
`make up` starts. Spark reads Kafka with its offsets in the checkpoint, and the engine's state lives in the same
checkpoint (RocksDB, changelog checkpointing), so a restart resumes exactly. The query's watermark is the
captured commit-time clock: the commit time of Connect's latest committed source offset (every change before it is
in Kafka), held back by the settle delay and never ahead of the batch's wall clock; each change applies once it has
passed the change's commit time, and decay timers fire when it passes them (``feature_rows``).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery, StreamingQueryListener

from cdcf import engine, kafka_clients
from cdcf.contracts import HEARTBEAT, change_topic
from cdcf.errors import StoreRefusedError
from cdcf.settings import Settings
from cdcf.sources import sources
from cdcf.spark import spark_session
from cdcf.status import growing_since, report
from streaming import metrics
from streaming.decode import routed
from streaming.reseed import OnlineGuard
from streaming.sink import METRICS, METRICS_DDL, partition_writer

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
REPORT_S = 5.0  # the status file is written this often, also while Spark plans or runs a long micro-batch
ROCKSDB = "org.apache.spark.sql.execution.streaming.state.RocksDBStateStoreProvider"


def tables() -> tuple[str, ...]:
    """The tables whose change topics the job reads: every table some feature reads, and the heartbeat table
    (the clock)."""
    return (*[s.table.name for s in sources()], HEARTBEAT)


def topics(topic_prefix: str) -> list[str]:
    return [change_topic(topic_prefix, t) for t in tables()]


def feature_rows(records: DataFrame, topic_prefix: str, settle_s: float, offsets_topic: str | None = None) -> DataFrame:
    """Kafka records (topic, partition, offset, key, value) -> the engine's output rows (entity, id, as_of_us,
    decay, <features>).

    The clock (the watermark, less ``settle_s``): with ``offsets_topic`` (Connect's offsets topic, read with the
    change topics), the commit time of Connect's latest committed source offset, before which every change is in
    Kafka whatever its topic; each change then waits in the engine's state until the clock passes its commit time
    (gated), so an emit as of T holds every change committed at or before T. Kafka gives no order across topics: one
    source transaction's changes to two tables can reach the job a micro-batch apart, and after an outage Connect
    sends its backlog topic by topic. The engine also reads the offset commits of each micro-batch (the watermark
    moves only between micro-batches), so most changes apply in the micro-batch that reads them. Without it, the
    latest applied commit time is the clock and changes apply on arrival: exact only for topics filled before the
    query reads them (the drain benchmark). Decay timers fire when the clock passes them either way."""
    partitions = int(records.sparkSession.conf.get("spark.sql.shuffle.partitions"))
    changes = routed(records, topic_prefix, engine.route_spec(offsets_topic, topic_prefix, partitions))
    clock = F.least(F.timestamp_micros("commit_us"), F.current_timestamp())
    if offsets_topic:  # only the offset commits move it
        clock = F.when(F.col("table") == engine.CAPTURED, clock).otherwise(F.timestamp_micros(F.lit(0)))
    settle_ms = int(settle_s * 1000)
    return engine.features(
        changes.withColumn("clock", clock).withWatermark("clock", f"{settle_ms} milliseconds").drop("clock"),
        gated=offsets_topic is not None,
        settle_ms=settle_ms,
    )  # no event-time column: Spark drops no late change


def build_stream(
    spark: SparkSession,
    settings: Settings,
    sink: Callable[[DataFrame, int], None],
    checkpoint: Path | None = None,
    available_now: bool = False,
    kafka_role: kafka_clients.Role = "reader",
) -> StreamingQuery:
    """Start the query: every topic from the earliest offset on a fresh checkpoint (``settings.paths.checkpoint``
    unless given); ``available_now`` stops it once everything in the topics at its start is processed (topics
    filled before it started: their applied commit time is the clock, see ``feature_rows``). It signs in to Kafka
    as ``kafka_role``: the reader, whom the ACLs let read the change topics and Connect's offsets only."""
    offsets_topic = None if available_now else settings.connect_offsets_topic
    checkpoint = checkpoint or settings.paths.checkpoint
    fixed = checkpointed_partitions(checkpoint)
    if fixed is not None and str(fixed) != spark.conf.get("spark.sql.shuffle.partitions"):
        # Spark keeps the checkpoint's; the clock's rows must be routed for that many state partitions too
        log.warning(
            "the checkpoint has %d state partitions (CDCF_STREAM_STATE_PARTITIONS applies to a new checkpoint only)",
            fixed,
        )
        spark.conf.set("spark.sql.shuffle.partitions", str(fixed))
    records = (
        spark.readStream.format("kafka")
        .options(**kafka_clients.spark_options(settings, kafka_role))
        .option("subscribe", ",".join(topics(settings.topic_prefix) + ([offsets_topic] if offsets_topic else [])))
        .option("startingOffsets", "earliest")
        .option("maxOffsetsPerTrigger", settings.stream_max_changes_per_batch)
        .option("minPartitions", spark.sparkContext.defaultParallelism)  # a busy topic is read by every core
        .option("kafka.fetch.max.wait.ms", "10")
        .load()
    )
    writer = (
        feature_rows(records, settings.topic_prefix, settings.stream_settle_s, offsets_topic)
        .writeStream.foreachBatch(sink)
        .outputMode("update")
        .option("checkpointLocation", str(checkpoint))
        .queryName("cdcf-features")
    )
    trigger = (
        {"availableNow": True} if available_now else {"processingTime": f"{settings.stream_trigger_ms} milliseconds"}
    )
    return writer.trigger(**trigger).start()


def checkpointed_partitions(checkpoint: Path) -> int | None:
    """The state partitions an existing checkpoint fixed: Spark records the shuffle partitions in each batch's
    offsets file (a version line, then the batch's metadata) and keeps them for good."""
    offsets = checkpoint / "offsets"
    batches = [int(p.name) for p in offsets.iterdir() if p.name.isdigit()] if offsets.is_dir() else []
    if not batches:
        return None
    lines = (offsets / str(max(batches))).read_text().splitlines()
    value = json.loads(lines[1]).get("conf", {}).get("spark.sql.shuffle.partitions") if len(lines) > 1 else None
    return int(value) if value else None


def state_store_conf(partitions: int, memory_mb: int) -> dict[str, str]:
    """The engine's state store: RocksDB with changelog checkpointing and bounded memory, ``partitions`` state
    partitions (fixed by the checkpoint at first start)."""
    conf = "spark.sql.streaming.stateStore"
    return {
        f"{conf}.providerClass": ROCKSDB,
        f"{conf}.rocksdb.changelogCheckpointing.enabled": "true",
        f"{conf}.rocksdb.trackTotalNumberOfRows": "false",
        f"{conf}.rocksdb.boundedMemoryUsage": "true",
        f"{conf}.rocksdb.maxMemoryUsageMB": str(memory_mb),
        "spark.sql.shuffle.partitions": str(partitions),
    }


def stream_session(settings: Settings, name: str = "cdcf-streaming-features") -> SparkSession:
    """A session with the engine's state store."""
    return spark_session(
        settings, name, conf=state_store_conf(settings.stream_state_partitions, settings.stream_state_memory_mb)
    )


def _state_metrics(op) -> dict:
    """What one stateful operator reports for a micro-batch: times (ms), rows, and its nonzero custom metrics
    (timers registered, deleted and expired; RocksDB's commit phases)."""
    return {
        "updates_ms": op.allUpdatesTimeMs,
        "removals_ms": op.allRemovalsTimeMs,
        "commit_ms": op.commitTimeMs,
        "rows_updated": op.numRowsUpdated,
        **{k: v for k, v in (op.customMetrics or {}).items() if v},
    }


def failure(error: str) -> str:
    """The line that says why a query failed: a store's refusal (``StoreRefusedError``, raised by a partition
    writer and wrapped by Spark in its own errors and the Python worker's traceback) if there is one, else the
    first line of Spark's error."""
    lines = error.strip().splitlines() or ["unknown error"]
    marker = f"{StoreRefusedError.__name__}: "  # how a traceback's last line names the error, not a `raise` line
    ours = [line.split(marker, 1)[1] for line in lines if marker in line]
    return (ours[-1] if ours else lines[0]).strip()


def refusing_store(error: str) -> str | None:
    """The store a failure line of ``failure`` says refused the write (online, offline), or None."""
    for store in ("online", "offline"):
        if error.startswith(f"the {store} store refused"):
            return store
    return None


class StreamJob:
    def __init__(self, settings: Settings, status_file: Path | None = None, guard_online: bool = True) -> None:
        """``guard_online``: re-seed the online store when it lost writes (see ``streaming.reseed``)."""
        self.settings = settings
        self.status_file = status_file
        self.guard_online = guard_online
        self.stopping = threading.Event()
        self.totals = {
            "batches": 0,
            "changes": 0,
            "rows_written": 0,
            "emits": 0,
            "decayed": 0,
            "last_as_of": None,
            "restarts": 0,
            "last_error": None,
            "last_restart_at": None,
            "query_active": None,
            "lag_max_s": 0.0,
            "reseeds": 0,
            "last_reseed": None,
            "last_batch_at": None,
            "behind": 0,
            "behind_growing_since": None,
            "clock": None,
            "clock_moved_at": None,
            "query_started_at": None,
        }
        self.guard: OnlineGuard | None = None
        metrics.CLOCK_AGE.set_function(lambda: metrics.clock_age(self.totals))

    def write_batch(self, batch: DataFrame, batch_id: int) -> None:
        """foreachBatch: the executors write their partitions; only metrics come back."""
        started = time.monotonic()
        if self.guard is None and self.guard_online:
            self.guard = OnlineGuard(self.settings)
        if self.guard is not None and (why := self.guard.check()):
            self.totals["reseeds"] += 1
            metrics.RESEEDS.inc()
            self.totals["last_reseed"] = f"{datetime.now(UTC).isoformat()}: the online store {why}"
        parts = batch.mapInArrow(partition_writer(self.settings), METRICS_DDL).collect()
        sums = {name: sum(p[name] or 0 for p in parts) for name in METRICS.names}  # over the partitions
        self.totals["batches"] += 1
        self.totals["rows_written"] += sums["rows"]
        self.totals["emits"] += sums["emits"]
        self.totals["decayed"] += sums["decays"]
        latest = max((p["max_as_of_us"] or 0 for p in parts), default=0)
        if latest:
            self.totals["last_as_of"] = datetime.fromtimestamp(latest / 1e6, UTC).isoformat()
            if self.guard is not None:
                self.guard.mark(latest)
        if sums["emits"]:
            self.totals["lag_max_s"] = max(p["lag_max_us"] for p in parts) / 1e6
        self._report()
        metrics.record_batch(sums, time.monotonic() - started)
        log.info(
            "batch %d: %d emits, %d decays, %d feature rows in %.3f s (over %d partitions: engine output %.3f s, "
            "writing %.3f s, of which Redis %.3f s, offline %.3f s)",
            batch_id,
            sums["emits"],
            sums["decays"],
            sums["rows"],
            time.monotonic() - started,
            len(parts),
            *(sums[k] / 1e6 for k in ("input_us", "write_us", "redis_us", "offline_us")),
        )

    def run(self) -> dict:
        spark = stream_session(self.settings)
        spark.sparkContext.setLogLevel("WARN")
        self.listen(spark)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self._report()
        threading.Thread(target=self._heartbeat, name="status-heartbeat", daemon=True).start()
        query = None
        try:
            while not self.stopping.is_set():
                query = build_stream(spark, self.settings, self.write_batch)
                self.totals["query_started_at"] = time.time()
                while not self.stopping.is_set() and query.isActive:
                    self.totals["query_active"] = True
                    self.stopping.wait(1.0)
                self.totals["query_active"] = False
                if not self.stopping.is_set():
                    # a broker or database outage fails the query; the checkpoint lets it resume exactly
                    self.totals["restarts"] += 1
                    metrics.RESTARTS.inc()
                    self.totals["last_restart_at"] = time.time()
                    error = failure(str(query.exception()))
                    self.totals["last_error"] = error[:300]
                    if store := refusing_store(error):
                        metrics.STORE_REFUSALS.labels(store).inc()
                    log.error(
                        "the streaming query failed (%s); restarting it in %.0f s from its checkpoint",
                        self.totals["last_error"],
                        RESTART_DELAY_S,
                    )
                    self._report()
                    self.stopping.wait(RESTART_DELAY_S)
        finally:
            self.stopping.set()
            if query is not None:
                query.stop()
            spark.stop()
            if self.guard is not None:
                self.guard.close()
        return self.totals

    def note_progress(self, behind: int, clock: str | None) -> None:
        """A micro-batch ended ``behind`` offsets short of the end of its most lagging partition, under the
        watermark ``clock``: note when the query last made progress, since when that lag has only grown, and when
        the clock last moved (changes wait for it)."""
        now = time.time()
        since = growing_since(self.totals["behind"], behind, self.totals["behind_growing_since"], now)
        self.totals.update(behind=behind, behind_growing_since=since, last_batch_at=now)
        metrics.BEHIND.set(behind)
        if self.totals["clock_moved_at"] is None:  # the clock is watched from the first finished micro-batch
            self.totals["clock_moved_at"] = now
        if clock and not clock.startswith("1970-01-01T00:00:00") and clock != self.totals["clock"]:
            self.totals.update(clock=clock, clock_moved_at=now)

    def listen(self, spark: SparkSession) -> None:
        """Count the changes read from each micro-batch's progress, as Spark reports it (once per batch)."""
        job = self

        class Progress(StreamingQueryListener):
            def onQueryStarted(self, event) -> None:
                pass

            def onQueryProgress(self, event) -> None:
                progress = event.progress
                job.totals["changes"] += progress.numInputRows
                metrics.CHANGES.inc(progress.numInputRows)
                job.note_progress(
                    max(
                        (int(float(source.metrics.get("maxOffsetsBehindLatest") or 0)) for source in progress.sources),
                        default=0,
                    ),
                    progress.eventTime.get("watermark"),
                )
                log.debug(
                    "batch %d progress: %s %s state: %s",
                    progress.batchId,
                    progress.durationMs,
                    progress.eventTime,
                    [_state_metrics(op) for op in progress.stateOperators],
                )

            def onQueryIdle(self, event) -> None:
                pass

            def onQueryTerminated(self, event) -> None:
                pass

        spark.streams.addListener(Progress())

    def _report(self) -> None:
        report(self.status_file, self.totals)

    def _heartbeat(self) -> None:
        while not self.stopping.wait(REPORT_S):
            self._report()
