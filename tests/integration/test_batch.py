"""The batch jobs on the real stack: online seeding, the Spark backfill, point-in-time training sets and Feast.

A seeded workload (inserts, updates, deletes, owner and event-time moves, backdated rows) runs through Debezium
into the archive and the streaming job, which is then stopped so the stores hold still for the module (and
restarted after it). Backfilled values are compared with what streaming wrote at the same as-of times, with the
oracle (tests/oracle.py), and between incremental and full runs.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from batch.backfill import run_backfill
from cdcf import features as decl
from cdcf import layout, pg_clients
from cdcf.feast_config import feature_store
from cdcf.redis_clients import redis_client
from cdcf.spark import spark_session
from offline.training import TrainingSetError, training_set
from online.writer import OnlineWriter
from ops.stack.background import STREAMING
from streaming.reseed import seed_online
from tests import oracle
from tests.conftest import fresh_workload, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]


def _query(settings, statement: str, params=None, db: str | None = None) -> list[tuple]:
    db = db or settings.offline_db
    user = settings.feast_user if db == settings.offline_db else None
    with pg_clients.session(settings, db, user=user) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        rows = cur.fetchall() if cur.description else []
    return rows


@pytest.fixture(scope="module")
def history(settings):
    """The workload's start; by then its changes are archived and served, and the streaming job is stopped."""
    started = _query(settings, "SELECT now()")[0][0]
    fresh_workload(settings).run(300, 15, burst_every_s=0)
    marker = random.randrange(10**13, 10**14)
    _query(
        settings,
        "INSERT INTO transactions VALUES (%s, %s, NULL, 1.00, 'marker', now(), now())",
        (marker, marker),
        db=settings.app_db,
    )
    wait_for(
        lambda: _query(
            settings, "SELECT 1 FROM cdc_changelog WHERE source_table = 'transactions' AND row_key = %s", (marker,)
        ),
        60,
        "the archive to catch up",
    )
    wait_for(
        lambda: _query(settings, f"SELECT 1 FROM {decl.TRANSACTION_RISK.name} WHERE user_id = %s", (marker,)),
        120,
        "the streaming job to catch up",
    )
    STREAMING.stop(settings)
    yield started
    STREAMING.start(settings)


@pytest.fixture(scope="module")
def spark(settings):
    session = spark_session(settings, "cdcf-tests")
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def _workload_entities(settings, since: datetime) -> dict[decl.Entity, list[int]]:
    return {
        e: [
            r[0]
            for r in _query(
                settings, f"SELECT DISTINCT {e.join_key} FROM {v.name} WHERE {decl.EVENT_TIMESTAMP} >= %s", (since,)
            )
        ]
        for e, v in ((decl.USER, decl.USER_ACTIVITY), (decl.PRODUCT, decl.PRODUCT_STATS))
    }


def _key(settings, entity: decl.Entity, entity_id: int) -> bytes:
    return layout.entity_key(layout.key_prefix(entity.join_key), entity_id, settings.feast_project.encode())


def _redis_dump(settings, entities: dict[decl.Entity, list[int]]) -> dict[bytes, dict]:
    client = redis_client(settings, "reader")
    try:
        keys = [_key(settings, e, i) for e, ids in entities.items() for i in ids]
        return {key: client.hgetall(key) for key in keys}
    finally:
        client.close()


def test_seeding_rebuilds_a_flushed_online_store_exactly(settings, history):
    """Every view's latest rows come back, a batch-scored one's (user segments) too."""
    entities = _workload_entities(settings, history)
    assert len(entities[decl.USER]) > 50 and len(entities[decl.PRODUCT]) > 10
    scored, at = entities[decl.USER][0], datetime.now(UTC)
    for as_of, segment in ((at - timedelta(seconds=1), 3), (at, 2)):  # the latest is seeded
        _query(
            settings,
            f"INSERT INTO {decl.USER_SEGMENT.offline_table} (user_id, {decl.EVENT_TIMESTAMP}, segment, model_version) "
            "VALUES (%s, %s, %s, 'test')",
            (scored, as_of, segment),
        )
    writer = OnlineWriter(settings)
    writer.write(decl.USER_SEGMENT, [(scored, at, 2)])
    writer.close()
    before = _redis_dump(settings, entities)
    assert layout.field(decl.USER_SEGMENT.name, "segment") in before[_key(settings, decl.USER, scored)]
    assert all(before.values())
    redis_client(settings, "writer").flushall()
    assert not any(_redis_dump(settings, entities).values())
    written = seed_online(settings)
    assert written[decl.USER_ACTIVITY.name] >= len(entities[decl.USER])
    assert _redis_dump(settings, entities) == before  # every field: values and as-of times, byte for byte


def _bad_history(settings) -> dict[int, str]:
    """Archive rows that break their contract, as an import or a faulty archiver could leave them: LSN -> the
    start of the reason the backfill must give."""
    key, lsn, at = random.randrange(10**13, 10**14), random.randrange(10**9, 10**10), datetime.now(UTC)
    bad = {
        lsn: (
            "transactions",
            '{"txn_id": %d, "amount": "5.00", "created_at": "2026-01-01T00:00:00+00:00"}',
            "missing value for NOT NULL column transactions.user_id",
        ),
        lsn + 1: (
            "transactions",
            '{"txn_id": %d, "user_id": 1, "amount": "5.123", "created_at": "2026-01-01T00:00:00+00:00"}',
            "transactions.amount = '5.123'",
        ),
        lsn + 2: (
            "sessions",
            '{"session_id": %d, "user_id": 1, "duration_s": 3, "started_at": "yesterday"}',
            "sessions.started_at = 'yesterday'",
        ),
        lsn + 3: (
            "reviews",
            '{"review_id": %d, "product_id": 1, "rating": 99999999999, "created_at": "2026-01-01T00:00:00Z"}',
            "reviews.rating = '99999999999'",
        ),
    }
    for n, (table, image, _) in bad.items():
        _query(
            settings,
            "INSERT INTO cdc_changelog (source_table, row_key, lsn, op, commit_ts, after, kafka_topic, "
            "kafka_partition, kafka_offset) VALUES (%s, %s, %s, 'c', %s, %s, 'test', 0, 0)",
            (table, key + n - lsn, n, at - timedelta(seconds=5), image % (key + n - lsn)),
        )
    return {n: why for n, (_, _, why) in bad.items()}


def _served_rows(settings, view: decl.FeatureView, since: datetime) -> pd.DataFrame:
    names = [f.name for f in view.features]
    rows = _query(
        settings,
        f"SELECT {view.entity.join_key}, {decl.EVENT_TIMESTAMP}, {', '.join(names)} "
        f"FROM {view.name} WHERE {decl.EVENT_TIMESTAMP} >= %s",
        (since,),
    )
    return pd.DataFrame(rows, columns=[view.entity.join_key, decl.EVENT_TIMESTAMP, *names])


def _records(frame: pd.DataFrame) -> list[tuple]:
    return [tuple(None if pd.isna(v) else v for v in row) for row in frame.itertuples(index=False)]


def test_backfill_equals_what_streaming_served_and_the_oracle(settings, history, spark):
    streamed = {view: _served_rows(settings, view, history) for view in decl.FEATURE_VIEWS}
    bad = _bad_history(settings)
    try:
        result = run_backfill(spark, settings)
    finally:
        _query(settings, "DELETE FROM cdc_changelog WHERE kafka_topic = 'test'")
    reasons = {lsn: why for _, _, lsn, why in result.rejects}
    for lsn, why in bad.items():
        assert reasons.get(lsn, "").startswith(why), (lsn, reasons.get(lsn), why)
    assert result.rows[decl.USER_ACTIVITY.name] > 0

    for view, rows in streamed.items():  # every row streaming wrote, read back at its as-of time
        assert len(rows) > 20, view.name
        names = [f"{view.name}:{f.name}" for f in view.features]
        rebuilt = training_set(settings, rows[[view.entity.join_key, decl.EVENT_TIMESTAMP]], names).to_pandas()
        rebuilt[decl.EVENT_TIMESTAMP] = rows[decl.EVENT_TIMESTAMP]
        assert _records(rebuilt) == _records(rows), view.name

    for view in decl.FEATURE_VIEWS:  # and rows of the backfill's own, against the oracle
        names = [f.name for f in view.features]
        sample = _query(
            settings,
            f"SELECT {view.entity.join_key}, {decl.EVENT_TIMESTAMP}, {', '.join(names)} "
            f"FROM {view.name} WHERE {decl.EVENT_TIMESTAMP} >= %s ORDER BY random() LIMIT 15",
            (history,),
        )
        for key, as_of, *values in sample:
            served = dict(zip(names, values, strict=True))
            assert not oracle.mismatches(view, served, oracle.expected(settings, view, key, as_of)), (key, as_of)


def _fingerprint(settings, end: datetime) -> dict[str, tuple]:
    return {
        v.name: _query(
            settings,
            f"SELECT count(*), md5(string_agg(t::text, '|' ORDER BY {v.entity.join_key}, "
            f"{decl.EVENT_TIMESTAMP})) FROM {v.name} t WHERE {decl.EVENT_TIMESTAMP} < %s",
            (end,),
        )[0]
        for v in decl.FEATURE_VIEWS
    }


def test_incremental_backfill_of_late_changes_equals_a_full_rebuild(settings, history, spark):
    users = _query(settings, "SELECT user_id FROM users ORDER BY random() LIMIT 3", db=settings.app_db)
    late_owner, mover, receiver = (u for (u,) in users)
    txn = random.randrange(10**13, 10**14)
    # a late row (event time 20 days back) for one user, and a transaction moved between two others
    _query(
        settings,
        "INSERT INTO transactions VALUES (%s, %s, NULL, 12.34, 'late', now() - interval '20 days', now())",
        (txn, late_owner),
        db=settings.app_db,
    )
    _query(
        settings,
        "UPDATE transactions SET user_id = %s WHERE txn_id = (SELECT txn_id FROM transactions "
        "WHERE user_id = %s LIMIT 1)",
        (receiver, mover),
        db=settings.app_db,
    )
    wait_for(lambda: _query(settings, "SELECT 1 FROM cdc_changelog WHERE row_key = %s", (txn,)), 60, "the archive")
    end = _query(settings, "SELECT max(commit_ts) + interval '1 microsecond' FROM cdc_changelog")[0][0]

    incremental = run_backfill(spark, settings, end=end, incremental=True)
    assert incremental.incremental and incremental.touched >= 3
    after_incremental = _fingerprint(settings, end)
    full = run_backfill(spark, settings, end=end)
    assert not full.incremental
    assert _fingerprint(settings, end) == after_incremental  # same rows; and rerunning changed nothing
    late = oracle.expected(settings, decl.USER_ACTIVITY, late_owner, end)
    assert late["txn_count_30d"] >= 1
    served = _query(
        settings,
        f"SELECT txn_count_30d, txn_amount_sum_30d FROM {decl.USER_ACTIVITY.name} "
        "WHERE user_id = %s ORDER BY event_timestamp DESC LIMIT 1",
        (late_owner,),
    )[0]
    assert served == (late["txn_count_30d"], late["txn_amount_sum_30d"])


def test_training_sets_equal_feast_historical_features_without_leaks(settings, history):
    rows = _query(
        settings,
        f"SELECT user_id, min(event_timestamp), max(event_timestamp) FROM {decl.USER_ACTIVITY.name} GROUP BY user_id",
    )
    rng = random.Random(5)
    entity_rows = []
    for _ in range(10_000):
        user, first, last = rng.choice(rows)
        entity_rows.append((user, first + (last - first) * rng.random() + timedelta(seconds=rng.uniform(-60, 60))))
    entities = pd.DataFrame(entity_rows, columns=["user_id", decl.EVENT_TIMESTAMP])
    ours = training_set(settings, entities, "fraud_detection_v1", labels=["txn_next_7d"]).to_pandas()
    store = feature_store(settings)
    theirs = store.get_historical_features(entity_df=entities, features=decl.feature_refs("fraud_detection_v1")).to_df()
    names = [f.name for v in (decl.TRANSACTION_RISK, decl.USER_ACTIVITY) for f in v.features]
    key = ["user_id", decl.EVENT_TIMESTAMP]
    theirs[decl.EVENT_TIMESTAMP] = pd.to_datetime(theirs[decl.EVENT_TIMESTAMP], utc=True).dt.floor("us")
    ours[decl.EVENT_TIMESTAMP] = pd.to_datetime(ours[decl.EVENT_TIMESTAMP], utc=True)
    merged = ours.merge(theirs, on=key, suffixes=("", "_feast"), validate="many_to_many")
    assert len(merged) >= 10_000
    for name in names:
        a, b = merged[name].astype(object), merged[f"{name}_feast"].astype(object)
        same = (a.isna() & b.isna()) | (a == b)
        assert same.all(), (name, merged.loc[~same, [*key, name, f"{name}_feast"]].head())
    assert 0 < ours["txn_next_7d"].sum() < len(ours)
    # no leak: one microsecond before a value changes, the training set still has the old value
    changes = _query(
        settings,
        f"SELECT user_id, event_timestamp, txn_count_7d, previous FROM (SELECT user_id, "
        f"event_timestamp, txn_count_7d, lag(txn_count_7d) OVER (PARTITION BY user_id ORDER BY "
        f"event_timestamp) AS previous FROM {decl.USER_ACTIVITY.name}) t "
        "WHERE previous <> txn_count_7d ORDER BY random() LIMIT 20",
    )
    edges = pd.DataFrame(
        [(u, t + d) for u, t, _, _ in changes for d in (timedelta(microseconds=-1), timedelta(0))],
        columns=["user_id", decl.EVENT_TIMESTAMP],
    )
    got = training_set(settings, edges, ["user_activity_features:txn_count_7d"]).column("txn_count_7d").to_pylist()
    assert got == [v for _, _, new, old in changes for v in (old, new)]
    with pytest.raises(TrainingSetError, match="unknown feature service"):
        training_set(settings, entities, "no_such_service")
    with pytest.raises(TrainingSetError, match="lack column.*product_id"):  # two entities: rows carry both keys
        training_set(settings, entities, ["product_features:purchases_7d", "user_activity_features:txn_count_7d"])
    both = training_set(settings, entities.head(200).assign(product_id=1), "recommendation_v1").to_pandas()
    alone = training_set(
        settings,
        pd.DataFrame({"product_id": 1, decl.EVENT_TIMESTAMP: entities.head(200)[decl.EVENT_TIMESTAMP]}),
        "product_ranking_v1",
    ).to_pandas()
    for name in [f.name for f in decl.PRODUCT_STATS.features]:  # each view joined on its own key
        assert [None if pd.isna(v) else v for v in both[name]] == [None if pd.isna(v) else v for v in alone[name]]
    # and labels follow the history: a user with a transaction in the next 7 days is labelled so
    user, at = entity_rows[0]
    expected = bool(
        _query(
            settings,
            "SELECT 1 FROM (SELECT DISTINCT ON (row_key) after FROM cdc_changelog WHERE "
            "source_table = 'transactions' ORDER BY row_key, lsn DESC) t WHERE "
            "(after->>'user_id')::bigint = %s AND (after->>'created_at')::timestamptz > %s "
            "AND (after->>'created_at')::timestamptz <= %s",
            (user, at, at + timedelta(7)),
        )
    )
    assert bool(ours["txn_next_7d"][0]) == expected
