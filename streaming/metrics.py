"""The streaming job's Prometheus metrics, kept by its driver: what each micro-batch's partitions report (rows,
emits, decays, freshness), and what Spark's progress reports (changes read, offsets behind, the clock)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import REGISTRY, HistogramMetricFamily
from prometheus_client.registry import Collector

from cdcf.exporter import Counter, Gauge, Histogram
from cdcf.quality import CHECKS

# commit -> Redis write, in seconds: the buckets each partition counts its emits into (streaming.sink)
FRESHNESS_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)

BATCHES = Counter("cdcf_stream_batches", "Micro-batches the streaming job finished")
BATCH_SECONDS = Histogram(
    "cdcf_stream_batch_seconds",
    "Seconds of one micro-batch's write (the engine's output to Redis and the offline store)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CHANGES = Counter(
    "cdcf_stream_changes", "Change records the streaming query read (heartbeats and offset commits included)"
)
FEATURE_ROWS = Counter("cdcf_stream_feature_rows", "Feature rows written to the online and offline stores")
EMITS = Counter("cdcf_stream_emits", "Entity rows emitted because a change applied")
DECAYS = Counter("cdcf_stream_decays", "Entity rows emitted because a window decayed with no new event")
RESTARTS = Counter("cdcf_stream_query_restarts", "Times the streaming query failed and restarted from its checkpoint")
STORE_REFUSALS = Counter(
    "cdcf_stream_store_refusals",
    "Times a store refused the streaming job's writes (a full Redis, a read-only offline database) and its query "
    "restarted without committing the micro-batch",
    ["store"],
)
for _store in ("online", "offline"):  # from 0, so that the first refusal is an increase Prometheus sees
    STORE_REFUSALS.labels(_store)
RESEEDS = Counter("cdcf_stream_reseeds", "Times the online store was re-seeded after it lost writes")
BEHIND = Gauge(
    "cdcf_stream_offsets_behind", "Offsets the last micro-batch ended short of the end of its most lagging partition"
)
CLOCK_AGE = Gauge(
    "cdcf_stream_clock_age_seconds",
    "Seconds since the streaming clock (Connect's committed source "
    "offsets) last moved: changes wait for it; heartbeats move it every few seconds",
)
CHECKED = Counter("cdcf_feature_values_checked", "Feature values of emitted rows the value checks saw")
NULLS = Counter(
    "cdcf_feature_null_values",
    "Null feature values of emitted rows (empty windows, null columns): "
    "over cdcf_feature_values_checked_total, the null rate",
)
VIOLATIONS = Counter(
    "cdcf_feature_check_violations",
    "Emitted feature values that failed a value check (cdcf.quality), by check",
    ["check"],
)


class Freshness(Collector):
    """``cdcf_freshness_seconds``: commit -> Redis write of every emit, a histogram summed from the partitions'
    bucket counts (Spark's executors count; the driver exports)."""

    def __init__(self) -> None:
        self.buckets = [0] * len(FRESHNESS_BUCKETS_S)
        self.count, self.sum_s = 0, 0.0

    def add(self, counts: list[int], count: int, sum_s: float) -> None:
        """``counts``: emits at or under each bucket's bound (cumulative)."""
        self.buckets = [a + b for a, b in zip(self.buckets, counts, strict=True)]
        self.count += count
        self.sum_s += sum_s

    def collect(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(
            "cdcf_freshness_seconds",
            "Seconds from a change's COMMIT to the Redis write of the features it changed",
            buckets=[
                *((str(b), c) for b, c in zip(FRESHNESS_BUCKETS_S, self.buckets, strict=True)),
                ("+Inf", self.count),
            ],
            sum_value=self.sum_s,
        )


FRESHNESS = Freshness()
REGISTRY.register(FRESHNESS)


def record_batch(sums: dict[str, int], seconds: float) -> None:
    """A finished micro-batch: ``sums`` of its partitions' metrics (``streaming.sink.METRICS``), its seconds."""
    BATCHES.inc()
    BATCH_SECONDS.observe(seconds)
    FEATURE_ROWS.inc(sums["rows"])
    EMITS.inc(sums["emits"])
    DECAYS.inc(sums["decays"])
    CHECKED.inc(sums["checked_values"])
    NULLS.inc(sums["null_values"])
    for check in CHECKS:
        VIOLATIONS.labels(check).inc(sums[f"bad_{check}"])
    FRESHNESS.add(
        [sums[f"fresh_{n}"] for n in range(len(FRESHNESS_BUCKETS_S))], sums["emits"], sums["lag_sum_us"] / 1e6
    )


def clock_age(totals: dict) -> float:
    """Seconds since the streaming clock last moved (0 before the first micro-batch)."""
    moved = totals.get("clock_moved_at")
    return time.time() - moved if moved else 0.0
