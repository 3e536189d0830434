"""The engine's output into the stores, from the executors (nothing but metrics reaches the driver).

Each partition's feature rows go to Redis in Feast's own layout (one pipelined write) and to the views' offline
tables (COPY into a session stage, then one INSERT … ON CONFLICT per view), both before the partition's task ends
and so before the micro-batch commits. A store that refuses the write (a full Redis under noeviction, a read-only
offline database) fails the task with a StoreRefusedError naming the store: the micro-batch does not commit. A
replayed batch computes the same rows at the same as-of times, so writing them again changes nothing. One
FeatureSink per Python worker process, set up on first use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import redis

from cdcf import features as decl
from cdcf import pg_clients, quality
from cdcf.errors import StoreRefusedError
from cdcf.features import EVENT_TIMESTAMP, FeatureView
from cdcf.settings import Settings
from offline.writer import by_view, copy_view_rows
from online.writer import OnlineWriter
from streaming.metrics import FRESHNESS_BUCKETS_S

log = logging.getLogger(__name__)

METRICS = pa.schema(
    [
        ("rows", pa.int64()),
        ("emits", pa.int64()),
        ("decays", pa.int64()),
        ("max_as_of_us", pa.int64()),
        ("lag_sum_us", pa.int64()),
        ("lag_max_us", pa.int64()),
        ("redis_us", pa.int64()),
        ("offline_us", pa.int64()),
        ("input_us", pa.int64()),
        ("write_us", pa.int64()),
        *((f"fresh_{n}", pa.int64()) for n in range(len(FRESHNESS_BUCKETS_S))),
        ("checked_values", pa.int64()),
        ("null_values", pa.int64()),
        *((f"bad_{check}", pa.int64()) for check in quality.CHECKS),
    ]
)
METRICS_DDL = ", ".join(f"{f.name} long" for f in METRICS)  # the same, as Spark takes it
_SINKS: dict[str, FeatureSink] = {}


class FeatureSink:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.online: OnlineWriter | None = None
        self.store = None
        self.db = None

    def setup(self) -> None:
        s = self.settings
        self.online = OnlineWriter(s)
        if s.stream_online_writes == "feast-push":
            from cdcf.feast_config import feature_store

            self.store = feature_store(s, "writer")
        self.db = pg_clients.connect_offline(s)
        with self.db, self.db.cursor() as cur:
            for view in decl.FEATURE_VIEWS:
                cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_stage(view)} (LIKE {view.name}) ON COMMIT DELETE ROWS")

    def write(self, rows: pa.Table) -> dict[str, int]:
        """Write the engine's rows (entity, id, as_of_us, decay, <features>); return the metrics of ``METRICS``."""
        now_us = time.time_ns() // 1000
        written, self.redis_ns, self.offline_ns = 0, 0, 0
        verdict = self.check(rows) if self.settings.metrics_enabled else quality.Verdict()
        try:
            if self.db is None or self.db.closed:
                self.setup()
            with self.db, self.db.cursor() as cur:
                for view, mine in by_view(rows):
                    written += self._write_view(cur, view, mine)
        except redis.RedisError as exc:
            raise StoreRefusedError("online", exc) from exc
        except psycopg2.Error as exc:
            if self.db is not None:
                self.db.close()  # the next write connects again (a session may stay read-only, or be gone)
            raise StoreRefusedError("offline", exc) from exc
        decay = rows["decay"]
        emits = rows.filter(pc.invert(decay)) if rows.num_rows else rows
        lag = pc.subtract(pa.scalar(now_us), emits["as_of_us"]) if emits.num_rows else None
        return {
            "rows": written,
            "emits": emits.num_rows,
            "decays": rows.num_rows - emits.num_rows,
            "max_as_of_us": pc.max(rows["as_of_us"]).as_py() if rows.num_rows else None,
            "lag_sum_us": pc.sum(lag).as_py() if lag is not None else 0,
            "lag_max_us": pc.max(lag).as_py() if lag is not None else 0,
            **{
                f"fresh_{n}": pc.sum(pc.less_equal(lag, int(b * 1e6))).as_py() or 0
                if lag is not None and self.settings.metrics_enabled
                else 0
                for n, b in enumerate(FRESHNESS_BUCKETS_S)
            },
            "redis_us": self.redis_ns // 1000,
            "offline_us": self.offline_ns // 1000,
            "checked_values": verdict.values,
            "null_values": verdict.nulls,
            **{f"bad_{check}": n for check, n in verdict.bad.items()},
        }

    @staticmethod
    def check(rows: pa.Table) -> quality.Verdict:
        """The value checks of every emitted row (cdcf.quality); a violation is logged with its entity and as-of
        time, and written all the same (the checks watch; the oracle tests decide what is right)."""
        verdict = quality.Verdict()
        for entity in decl.ENTITIES:
            mine = rows.filter(pc.equal(rows["entity"], entity.name))
            if mine.num_rows:
                quality.check(entity, mine, verdict)
        for sample in verdict.samples:
            log.warning("feature check failed: %s", sample)
        return verdict

    def _write_view(self, cur, view: FeatureView, rows: pa.Table) -> int:
        names = [f.name for f in view.features]
        started = time.perf_counter_ns()
        if self.settings.stream_online_writes == "feast-push":
            self._push(view, rows)
        else:
            ids, as_of = rows["id"].to_pylist(), rows["as_of_us"].to_pylist()
            self.online.write_columns(view, ids, as_of, [rows[n].to_pylist() for n in names])
        self.redis_ns += time.perf_counter_ns() - started
        started = time.perf_counter_ns()
        key = view.entity.join_key
        copy_view_rows(cur, _stage(view), view, rows)
        cur.execute(
            f"INSERT INTO {view.name} SELECT * FROM {_stage(view)} ON CONFLICT ({key}, {EVENT_TIMESTAMP}) "
            f"DO UPDATE SET {', '.join(f'{n} = excluded.{n}' for n in names)}"
        )
        self.offline_ns += time.perf_counter_ns() - started
        return rows.num_rows

    def _push(self, view: FeatureView, rows: pa.Table) -> None:
        """Feast's own online write, through the view's push source (each entity's rows oldest first, as the
        packed path writes them)."""
        from feast.data_source import PushMode

        frame = pa.table(
            [
                rows["id"],
                pc.cast(rows["as_of_us"], pa.timestamp("us", tz="UTC")),
                *[rows[f.name] for f in view.features],
            ],
            names=[view.entity.join_key, EVENT_TIMESTAMP, *[f.name for f in view.features]],
        ).to_pandas()
        self.store.push(view.push_source, frame, to=PushMode.ONLINE)

    def close(self) -> None:
        if self.online is not None:
            self.online.close()
        if self.db is not None:
            self.db.close()


def _stage(view: FeatureView) -> str:
    return f"{view.name}_stage"


def partition_writer(settings: Settings) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The function ``mapInArrow`` runs on each partition: write its rows, yield one row of metrics."""
    key = settings.model_dump_json()

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        started = time.perf_counter_ns()
        sink = _SINKS.get(key)
        if sink is None:
            sink = _SINKS[key] = FeatureSink(settings)
        batches = [b for b in batches if b.num_rows]  # the engine computes them as they are read
        received = time.perf_counter_ns()
        metrics = sink.write(pa.Table.from_batches(batches)) if batches else dict.fromkeys(METRICS.names, 0)
        metrics.update(input_us=(received - started) // 1000, write_us=(time.perf_counter_ns() - received) // 1000)
        yield pa.RecordBatch.from_pylist([metrics], schema=METRICS)

    return write
