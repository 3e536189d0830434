"""The backfill job: rebuild the offline feature tables from the change history (Spark batch).

``run_backfill(spark, settings, start, end)`` recomputes every entity's rows with as-of times in [start, end) from
the changelog archive (the initial snapshot is in it as ``op = r``), then replaces that range of each offline table
in one transaction: rerunning a range rewrites the same rows. A run over everything writes each row once, into new
tables indexed after the load, and swaps them in. ``incremental=True`` continues from the last run: every entity
from the last run's end, and the entities touched by changes archived since the last run from the commit of their
first such change, so a late change recomputes its entities and nothing else before the last end.

The rows come from the streaming job's own window engine (cdcf.engine, EntityCore): every entity's history,
routed as the streaming job routes changes, is replayed through the same core on the executors, emitting at each
commit and at each moment a window changes with no new change (the streaming job's timers). One implementation
of the window semantics: stream and backfill agree by construction.

Changes that break their row contract are stored in ``backfill_rejects`` with their LSN and reason; the run goes
on without them. One run at a time (an advisory lock).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import reduce

import psycopg2
import psycopg2.errors
import pyarrow as pa
from psycopg2.extras import execute_values
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from batch.history import history, read_changes, routed
from cdcf import engine, pg_clients
from cdcf import features as decl
from cdcf.changelog import TABLE as CHANGELOG
from cdcf.errors import PipelineError
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from cdcf.sources import sources
from offline.writer import by_view, copy_view_rows

log = logging.getLogger(__name__)

RUNS, REJECTS, TOUCHED = "backfill_runs", "backfill_rejects", "backfill_touched"
LOCK_KEY = 7_311_001  # pg_advisory_lock key of the backfill
NEVER = 2**62
LOCK_TRY_S, LOCK_WAIT_S = 5, 600  # the swap's wait for the offline tables: per try, and in all
# a change archived this long before the last run's newest one may still have been in flight during that run
ARCHIVE_SLACK = timedelta(minutes=5)
DDL = [
    f"CREATE TABLE IF NOT EXISTS {RUNS} (run_id BIGSERIAL PRIMARY KEY, started_at TIMESTAMPTZ NOT NULL, "
    "finished_at TIMESTAMPTZ NOT NULL, start_ts TIMESTAMPTZ, end_ts TIMESTAMPTZ NOT NULL, "
    "archived_until TIMESTAMPTZ, incremental BOOLEAN NOT NULL, changes BIGINT NOT NULL, rejects BIGINT NOT NULL, "
    "touched BIGINT NOT NULL, rows BIGINT NOT NULL)",
    f"CREATE TABLE IF NOT EXISTS {REJECTS} (run_id BIGINT NOT NULL, source_table TEXT NOT NULL, row_key BIGINT, "
    "lsn BIGINT NOT NULL, reason TEXT NOT NULL)",
]


class BackfillError(PipelineError):
    """The backfill cannot run (no history, another run holding the lock)."""


@dataclass
class BackfillResult:
    start: datetime | None
    end: datetime
    incremental: bool
    changes: int = 0
    rejects: list[tuple[str, int, int, str]] = field(default_factory=list)  # table, key, LSN, reason
    touched: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def run_backfill(
    spark: SparkSession,
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    incremental: bool = False,
    progress: Callable[[str], None] = log.info,
) -> BackfillResult:
    began, started_at = time.monotonic(), datetime.now(UTC)
    db = pg_clients.connect_offline(settings)
    try:
        with db, db.cursor() as cur:
            for statement in DDL + [
                f"CREATE UNLOGGED TABLE IF NOT EXISTS {_stage(v)} (LIKE {v.name})" for v in decl.FEATURE_VIEWS
            ]:
                cur.execute(statement)
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,))
            if not cur.fetchone()[0]:
                raise BackfillError("another backfill is running on this offline store; wait for it to finish")
            cur.execute(f"SELECT max(commit_ts) + interval '1 microsecond', max(archived_at) FROM {CHANGELOG}")
            newest, archived_until = cur.fetchone()
            last = _last_run(cur) if incremental else None
        end = end or newest
        if end is None:
            raise BackfillError("the changelog archive is empty: nothing to backfill (is `make up` running?)")
        result = BackfillResult(start, end, incremental=last is not None)
        if last is not None:
            result.start = last[0]
        progress(
            f"backfill of as-of times [{result.start or 'the beginning'}, {end})"
            + (f", and entities with changes archived after {last[1]}" if last else "")
        )
        versions = _versions(spark, settings, db, end, result, progress)
        values = json.loads(engine.route_spec())["values"]
        changes = reduce(DataFrame.unionByName, [routed(versions[m.table.name], m, values) for m in sources()])
        touched = _touched(changes, _micros(last[1] - ARCHIVE_SLACK)) if last is not None else {}
        result.touched = sum(len(ids) for ids in touched.values())
        rebuild = result.start is None and not touched  # every row of every table: written once, then swapped in
        _write_stages(spark, settings, db, changes, result, touched, progress, rebuild)
        _swap(db, result, touched, started_at, archived_until, rebuild)
        for frame in versions.values():
            frame.unpersist()
        result.seconds = time.monotonic() - began
        progress(
            f"done in {result.seconds:.1f} s: {result.changes} changes, {len(result.rejects)} rejected, "
            f"{sum(result.rows.values())} rows"
        )
        return result
    finally:
        db.close()  # also releases the advisory lock


def _versions(spark, settings, db, end: datetime, result: BackfillResult, progress) -> dict[str, DataFrame]:
    """Each source table's versions (cached), counting changes and storing rejects."""
    versions = {}
    for m in sources():
        with db.cursor() as cur:
            cur.execute(f"SELECT min(lsn), max(lsn) FROM {CHANGELOG} WHERE source_table = %s", (m.table.name,))
            low, high = cur.fetchone()
        changes = read_changes(spark, settings, m, end.isoformat(), (low or 0, high or 0)).cache()  # read once
        found = history(changes, m)
        versions[m.table.name] = found.versions.cache()
        count = versions[m.table.name].count()
        rejects = [tuple(r) for r in found.rejects.collect()]
        changes.unpersist()
        result.changes += count + len(rejects)
        result.rejects += rejects
        progress(f"{m.table.name}: {count} changes" + (f", {len(rejects)} rejected" if rejects else ""))
        for table, key, lsn, reason in rejects[:5]:
            progress(f"  rejected {table} row {key} at LSN {lsn}: {reason}")
    return versions


def _touched(changes: DataFrame, since_us: int) -> dict[str, list[tuple[int, int]]]:
    """Per entity kind, (id, first commit in µs) of every entity a change archived since ``since_us`` reached (the
    engine's input rows: the owner before and the owner after)."""
    found = (
        changes.where(F.col("archived_us") >= since_us)
        .groupBy("entity", "id")
        .agg(F.min("commit_us").alias("start_us"))
        .collect()
    )
    result: dict[str, list[tuple[int, int]]] = {}
    for r in found:
        result.setdefault(r.entity, []).append((r.id, r.start_us))
    return result


def _write_stages(spark, settings, db, changes, result: BackfillResult, touched, progress, rebuild: bool) -> None:
    """Replay every entity's history through the window engine and COPY the rows in scope into the views' stage
    tables from the executors; for a rebuild, into new tables, indexed after the load."""
    with db, db.cursor() as cur:
        for view in decl.FEATURE_VIEWS:
            if rebuild:
                cur.execute(f"DROP TABLE IF EXISTS {_rebuilt(view)}")
                cur.execute(f"CREATE TABLE {_rebuilt(view)} (LIKE {view.name})")
            else:
                cur.execute(f"TRUNCATE {_stage(view)}")
    rows = _in_scope(engine.replay(changes, _micros(result.end)), result, touched, spark)
    written = _copy(
        rows, settings.pg_dsn(settings.offline_db, user=settings.feast_user), _rebuilt if rebuild else _stage
    )
    for view in decl.FEATURE_VIEWS:
        result.rows[view.name] = written.get(view.name, 0)
        progress(f"{view.name}: {result.rows[view.name]} rows computed")
    if rebuild:
        with db, db.cursor() as cur:
            for view in decl.FEATURE_VIEWS:
                cur.execute(f"ALTER TABLE {_rebuilt(view)} ADD PRIMARY KEY ({view.entity.join_key}, {EVENT_TIMESTAMP})")


def _in_scope(rows: DataFrame, result: BackfillResult, touched, spark) -> DataFrame:
    """The rows with as-of times in [start, end) (the engine stops at the end), and those of a touched entity from
    its own, earlier start."""
    start = None if result.start is None else _micros(result.start)
    if not any(touched.values()):
        return rows if start is None else rows.where(F.col("as_of_us") >= start)
    ids = spark.createDataFrame(
        [(name, i, us) for name, found in touched.items() for i, us in found], "entity string, id long, start_us long"
    )
    since = F.coalesce("start_us", F.lit(NEVER if start is None else start))
    return rows.join(F.broadcast(ids), ["entity", "id"], "left").where(F.col("as_of_us") >= since).drop("start_us")


def _copy(rows: DataFrame, dsn: str, target: Callable[[decl.FeatureView], str]) -> dict[str, int]:
    """COPY the engine's rows into each view's ``target`` table, each partition over its own connection in one
    transaction (a failed task leaves nothing; its retry copies the whole partition again); the rows per view."""

    def copy(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        conn, counts = (
            psycopg2.connect(dsn, connect_timeout=pg_clients.CONNECT_TIMEOUT_S),
            dict.fromkeys((v.name for v in decl.FEATURE_VIEWS), 0),
        )
        try:
            with conn, conn.cursor() as cur:
                for batch in batches:
                    for view, mine in by_view(pa.Table.from_batches([batch])):
                        counts[view.name] += copy_view_rows(cur, target(view), view, mine)
        finally:
            conn.close()
        yield pa.RecordBatch.from_pydict({"view": list(counts), "rows": list(counts.values())})

    written = rows.mapInArrow(copy, "view string, rows long").groupBy("view").agg(F.sum("rows").alias("rows"))
    return {r["view"]: r["rows"] for r in written.collect()}


def _swap(db, result: BackfillResult, touched, started_at: datetime, archived_until, rebuild: bool) -> None:
    """Swap every offline table for its rebuilt one, or replace the scope of every table with its stage; and
    record the run; in one transaction."""
    with db, db.cursor() as cur:
        if rebuild:
            _lock_tables(db, cur)
            _swap_tables(cur, result.end)
        else:
            _replace_scope(cur, result, touched)
        cur.execute(
            f"INSERT INTO {RUNS} (started_at, finished_at, start_ts, end_ts, archived_until, incremental, "
            "changes, rejects, touched, rows) VALUES (%s, now(), %s, %s, %s, %s, %s, %s, %s, %s) "
            "RETURNING run_id",
            (
                started_at,
                result.start,
                result.end,
                archived_until,
                result.incremental,
                result.changes,
                len(result.rejects),
                result.touched,
                sum(result.rows.values()),
            ),
        )
        run_id = cur.fetchone()[0]
        execute_values(cur, f"INSERT INTO {REJECTS} VALUES %s", [(run_id, *r) for r in result.rejects])


def _lock_tables(db, cur) -> None:
    """Take every offline table for the swap, waiting for the queries that read or write them: each try waits at
    most ``LOCK_TRY_S`` (readers and writers queue behind it no longer), for ``LOCK_WAIT_S`` in all."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TRY_S}s'")
        try:
            cur.execute(f"LOCK TABLE {', '.join(v.name for v in decl.FEATURE_VIEWS)} IN ACCESS EXCLUSIVE MODE")
            return
        except psycopg2.errors.LockNotAvailable:
            db.rollback()
            cur.execute(
                "SELECT pid, state, left(query, 80) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state <> 'idle' AND pid <> pg_backend_pid()"
            )
            holders = cur.fetchall()
            db.rollback()
            if time.monotonic() > deadline:
                raise BackfillError(
                    f"the offline tables stayed in use for {LOCK_WAIT_S} s, so the rebuilt ones "
                    f"were not swapped in (sessions using them: {holders}); run the backfill again"
                ) from None
            log.warning("the offline tables are in use (%s); trying the swap again", holders)
            time.sleep(LOCK_TRY_S)


def _swap_tables(cur, end: datetime) -> None:
    """Each view's rebuilt table takes the place of its table, with the rows the streaming job wrote as of the
    end or later."""
    for view in decl.FEATURE_VIEWS:
        cur.execute(f"INSERT INTO {_rebuilt(view)} SELECT * FROM {view.name} WHERE {EVENT_TIMESTAMP} >= %s", (end,))
        cur.execute(f"DROP TABLE {view.name}")
        cur.execute(f"ALTER TABLE {_rebuilt(view)} RENAME TO {view.name}")
        cur.execute(f"ALTER INDEX {_rebuilt(view)}_pkey RENAME TO {view.name}_pkey")


def _replace_scope(cur, result: BackfillResult, touched) -> None:
    """Delete each view's rows in scope (as-of times in [start, end), and a touched entity's from its own start)
    and insert its stage."""
    cur.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {TOUCHED} (entity TEXT, id BIGINT, start_ts TIMESTAMPTZ) ON COMMIT DROP"
    )
    execute_values(
        cur,
        f"INSERT INTO {TOUCHED} VALUES %s",
        [(name, i, _from_micros(us)) for name, ids in touched.items() for i, us in ids],
    )
    for view in decl.FEATURE_VIEWS:
        key, names, ts = view.entity.join_key, [f.name for f in view.features], EVENT_TIMESTAMP
        lower = "" if result.start is None else f" AND {ts} >= %(start)s"
        cur.execute(f"DELETE FROM {view.name} WHERE {ts} < %(end)s{lower}", {"start": result.start, "end": result.end})
        cur.execute(
            f"DELETE FROM {view.name} v USING {TOUCHED} s WHERE s.entity = %(entity)s AND v.{key} = s.id "
            f"AND v.{ts} >= s.start_ts AND v.{ts} < %(end)s",
            {"entity": view.entity.name, "end": result.end},
        )
        cur.execute(
            f"INSERT INTO {view.name} SELECT * FROM {_stage(view)} ON CONFLICT ({key}, {ts}) DO UPDATE "
            f"SET {', '.join(f'{n} = excluded.{n}' for n in names)}"
        )
        cur.execute(f"TRUNCATE {_stage(view)}")


def _last_run(cur) -> tuple[datetime, datetime] | None:
    cur.execute(f"SELECT end_ts, archived_until FROM {RUNS} ORDER BY run_id DESC LIMIT 1")
    row = cur.fetchone()
    return None if row is None or row[1] is None else (row[0], row[1])


def _stage(view: decl.FeatureView) -> str:
    return f"backfill_stage_{view.name}"


def _rebuilt(view: decl.FeatureView) -> str:
    return f"backfill_new_{view.name}"


def _micros(at: datetime) -> int:
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
