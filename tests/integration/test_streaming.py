"""The streaming feature job on the real stack, read back through Feast and compared with the oracle.

Every check reads what `get_online_features` serves (values and as-of time T), asks the oracle (tests/oracle.py:
the change history, in plain Python) for the values at T, and finds the same row at T in the offline store.
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from datetime import UTC, datetime, timedelta

import pandas as pd
import pyarrow as pa
import pytest
from feast.data_source import PushMode

from cdcf import features as decl
from cdcf import layout, pg_clients
from cdcf.errors import ServiceError
from cdcf.feast_config import feature_store
from online.writer import OnlineWriter
from ops.stack.background import STREAMING
from ops.workload import redeliver
from tests import oracle
from tests.conftest import fresh_workload, run_cli, wait_for

pytestmark = pytest.mark.integration

USER_VIEWS = (decl.USER_PROFILE, decl.USER_ACTIVITY, decl.TRANSACTION_RISK)


@pytest.fixture(scope="module")
def store(settings):
    return feature_store(settings, "writer")  # a test pushes a stale row through it


def _sql(settings, statement: str, params=None) -> datetime:
    """Run one statement in its own transaction; return the transaction's start time (<= its commit time)."""
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute(statement, params)
        cur.execute("SELECT now()")
        started = cur.fetchone()[0]
    return started


def _ids(n: int) -> list[int]:
    base = random.randrange(10**12, 10**13)
    return list(range(base, base + n))


def served(store, view: decl.FeatureView, entity_id: int) -> tuple[dict, datetime | None]:
    """What Feast serves for one entity: the view's values and their as-of time."""
    response = store.get_online_features(
        features=[f"{view.name}:{f.name}" for f in view.features], entity_rows=[{view.entity.join_key: entity_id}]
    )
    names = list(response.proto.metadata.feature_names.val)
    values = response.to_dict()
    stamps = [
        r.event_timestamps[0].ToDatetime(tzinfo=datetime.now().astimezone().tzinfo)
        for name, r in zip(names, response.proto.results, strict=True)
        if name != view.entity.join_key and r.event_timestamps and r.event_timestamps[0].seconds
    ]
    return {f.name: values[f.name][0] for f in view.features}, (max(stamps) if stamps else None)


def offline_row(settings, view: decl.FeatureView, entity_id: int, as_of: datetime) -> dict | None:
    rows = offline_rows(settings, view, entity_id, f"{decl.EVENT_TIMESTAMP} = %s", as_of)
    return rows[as_of] if rows else None


def offline_rows(settings, view: decl.FeatureView, entity_id: int, where: str, *params) -> dict[datetime, dict]:
    """The entity's offline rows that satisfy ``where``, by as-of time."""
    conn = pg_clients.connect_offline(settings)
    try:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT {decl.EVENT_TIMESTAMP}, {', '.join(f.name for f in view.features)} FROM {view.name} "
                f"WHERE {view.entity.join_key} = %s AND {where}",
                (entity_id, *params),
            )
            return {t: dict(zip([f.name for f in view.features], values, strict=True)) for t, *values in cur}
    finally:
        conn.close()


def assert_exact(settings, store, view, entity_id: int, since: datetime | None, timeout_s: float = 60) -> datetime:
    """Wait until the view serves a value (as of ``since`` or later, if given); then it must equal the oracle at
    its as-of time (given the archive a moment to catch up) and the offline row at that time. Return the as-of
    time."""
    deadline = time.monotonic() + timeout_s
    while True:
        values, as_of = served(store, view, entity_id)
        if as_of is not None and (since is None or as_of >= since):
            break
        assert time.monotonic() < deadline, f"{view.name}[{entity_id}] not served as of {since} (last {as_of})"
        time.sleep(0.2)
    while wrong := oracle.mismatches(view, values, oracle.expected(settings, view, entity_id, as_of)):
        assert time.monotonic() < deadline, f"{view.name}[{entity_id}] as of {as_of}: (served, oracle) {wrong}"
        time.sleep(0.5)
    # Redis is written just before the offline rows commit (so a crash can never lose the online write)
    offline = wait_for(lambda: offline_row(settings, view, entity_id, as_of), 10, f"the offline row at {as_of}")
    assert not oracle.mismatches(view, offline, values), (offline, values)
    return as_of


def test_the_writer_writes_the_bytes_feast_push_writes(settings, store):
    """The streaming writer packs its HSETs by hand: each view's hash must be byte for byte what Feast's own push
    writes for the same values (its nulls are read back as None)."""
    writer = OnlineWriter(settings)
    ours, theirs, empty = _ids(3)
    at = datetime(2026, 11, 27, 12, 30, 15, 123456, tzinfo=UTC)
    samples = {"int64": -(2**40) - 7, "float64": 1234.5678, "string": "naïve ✓"}
    for view in decl.FEATURE_VIEWS:
        values = [samples[f.dtype] for f in view.features]
        writer.write(view, [(ours, at, *values), (empty, at, *[None] * len(view.features))])
        store.push(
            view.push_source,
            pd.DataFrame(
                [(theirs, at, *values)],
                columns=[view.entity.join_key, decl.EVENT_TIMESTAMP, *(f.name for f in view.features)],
            ),
            to=PushMode.ONLINE,
        )
        assert served(store, view, empty) == ({f.name: None for f in view.features}, at)
    prefix, project = layout.key_prefix, settings.feast_project.encode()
    for join_key in {v.entity.join_key for v in decl.FEATURE_VIEWS}:
        hashes = [writer.client.hgetall(layout.entity_key(prefix(join_key), i, project)) for i in (ours, theirs)]
        assert hashes[0] == hashes[1] and len(hashes[0]) >= 4
    writer.close()


def test_the_cdc_story_is_exact_for_every_aggregate(settings, store):
    user, other, product = _ids(3)
    txn = _ids(6)
    views = [(v, user) for v in USER_VIEWS] + [(v, other) for v in USER_VIEWS] + [(decl.PRODUCT_STATS, product)]

    def check(since: datetime, *changed: int) -> None:
        """Every value exact; those of the ``changed`` entities (default all) served as of ``since`` or later."""
        for v, i in views:
            assert_exact(settings, store, v, i, since if i in (changed or (user, other, product)) else None)

    def values() -> dict:
        return {(v.name, i): served(store, v, i) for v, i in views}

    _sql(settings, "INSERT INTO users VALUES (%s, 30, 1000.50, 'active', '2026-01-01', now())", (user,))
    _sql(settings, "INSERT INTO users VALUES (%s, 41, 99.99, 'trial', '2026-02-01', now())", (other,))
    rows = [
        (txn[0], user, product, "10.10", "10 minutes"),
        (txn[1], user, product, "20.00", "3 days"),
        (txn[2], user, product, "7.50", "20 days"),
        (txn[3], other, product, "1.00", "2 hours"),
        (txn[5], user, None, "15.00", "3 hours"),
    ]
    for key, owner, prod, amount, ago in rows:
        _sql(
            settings,
            "INSERT INTO transactions VALUES (%s, %s, %s, %s, 'm', now() - %s::interval, now())",
            (key, owner, prod, amount, ago),
        )
    _sql(
        settings,
        "INSERT INTO sessions VALUES (%s, %s, now() - interval '2 days', 300), (%s, %s, now() - interval '8 days', 60)",
        (txn[0], user, txn[1], user),
    )
    last = _sql(
        settings,
        "INSERT INTO reviews VALUES (%s, %s, %s, 4, now() - interval '1 day'), "
        "(%s, %s, %s, 2, now() - interval '40 days')",
        (txn[0], product, user, txn[1], product, user),
    )
    check(last, product)
    check(last - timedelta(seconds=1))
    assert served(store, decl.TRANSACTION_RISK, user)[0] == {
        "txn_count_1h": 1,
        "txn_amount_sum_1h": 10.10,
        "txn_amount_max_24h": 15.0,
    }  # spelled out once

    check(_sql(settings, "UPDATE transactions SET amount = 99.99 WHERE txn_id = %s", (txn[0],)), user, product)
    check(
        _sql(settings, "UPDATE transactions SET created_at = now() - interval '40 days' WHERE txn_id = %s", (txn[1],)),
        user,
        product,
    )  # leaves every window
    check(
        _sql(settings, "UPDATE transactions SET user_id = %s WHERE txn_id = %s", (other, txn[0])), user, other
    )  # owner move
    check(
        _sql(
            settings,
            "INSERT INTO transactions VALUES (%s, %s, %s, 500.00, 'm', now() - interval '5 minutes', now())",
            (txn[4], user, product),
        ),
        user,
        product,
    )  # a new maximum is served ...
    assert served(store, decl.TRANSACTION_RISK, user)[0]["txn_amount_max_24h"] == 500.0
    check(_sql(settings, "DELETE FROM transactions WHERE txn_id = %s", (txn[4],)), user, product)  # ... and retracted
    assert served(store, decl.TRANSACTION_RISK, user)[0]["txn_amount_max_24h"] == 15.0
    check(
        _sql(
            settings,
            "INSERT INTO transactions VALUES (%s, %s, %s, 3.33, 'late', now() - interval '29 days', now())",
            (_ids(1)[0], user, product),
        ),
        user,
        product,
    )  # a late row inside 30 days counts
    check(_sql(settings, "UPDATE users SET income = 2000.00, account_status = 'vip' WHERE user_id = %s", (user,)), user)
    check(_sql(settings, "DELETE FROM users WHERE user_id = %s", (user,)), user)
    assert served(store, decl.USER_PROFILE, user)[0] == {"age": None, "income": None, "account_status": None}

    # Debezium is at-least-once: the same change events again change nothing, not even the as-of times
    before, read_before = values(), _status(settings)["changes"]
    replayed = redeliver(settings, "transactions", lambda msg: _txn_id(msg.key()) in set(txn))
    assert replayed >= 8
    wait_for(lambda: _status(settings)["changes"] >= read_before + replayed, 60, "the job to read the duplicates")
    assert values() == before


def _txn_id(key: bytes | None) -> int | None:
    """The row key of a change event; None for what other tests put on the topic (bad input on purpose)."""
    try:
        return json.loads(key)["txn_id"]
    except (TypeError, ValueError, KeyError):
        return None


def _status(settings) -> dict:
    return json.loads(STREAMING.status_file(settings).read_text())


def test_a_window_decays_with_no_new_events(settings, store):
    user, txn = _ids(1)[0], _ids(1)[0]
    now = _sql(settings, "SELECT 1")
    leaves = (now + timedelta(seconds=70)).replace(second=0, microsecond=0)  # a minute boundary 10-70 s ahead
    _sql(
        settings,
        "INSERT INTO transactions VALUES (%s, %s, NULL, 42.00, 'edge', %s, now())",
        (txn, user, leaves - timedelta(hours=1)),
    )
    assert_exact(settings, store, decl.TRANSACTION_RISK, user, now)
    assert served(store, decl.TRANSACTION_RISK, user)[0]["txn_count_1h"] == 1
    as_of = assert_exact(settings, store, decl.TRANSACTION_RISK, user, leaves, timeout_s=120)  # no new event
    values, _ = served(store, decl.TRANSACTION_RISK, user)
    assert (values["txn_count_1h"], values["txn_amount_sum_1h"], values["txn_amount_max_24h"]) == (0, 0.0, 42.0)
    assert as_of - leaves < timedelta(minutes=1)  # within the declared hop


@pytest.mark.exclusive
def test_kill_9_mid_load_loses_and_double_counts_nothing(settings, store):
    started = _sql(settings, "SELECT 1")
    load = threading.Thread(target=lambda: fresh_workload(settings).run(300, 20))
    load.start()
    time.sleep(8)
    killed = STREAMING.pid(settings)
    os.kill(killed, signal.SIGKILL)
    # nobody starts it again by hand: its supervisor does, and status says so (FAIL) while the restart is recent
    wait_for(lambda: STREAMING.pid(settings) not in (None, killed), 30, "the supervisor to start the job again")
    with pytest.raises(ServiceError, match="was killed by signal 9 and was restarted 1 time"):
        STREAMING.health(settings)
    load.join()
    last_change = _last_change_by_user(settings, started)
    assert len(last_change) > 20
    for user in random.sample(sorted(last_change), 20):  # each must be served as of its last change, exactly
        for view in (decl.USER_ACTIVITY, decl.TRANSACTION_RISK):
            assert_exact(settings, store, view, user, last_change[user], timeout_s=120)


def _last_change_by_user(settings, since: datetime) -> dict[int, datetime]:
    """The commit time of the last change, since ``since``, to a row each user owned before or after it."""
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT owner, max(commit_ts) FROM cdc_changelog, LATERAL (VALUES (after->>'user_id'), "
                "(before->>'user_id')) o(owner) WHERE source_table IN ('transactions', 'sessions') "
                "AND commit_ts >= %s AND owner IS NOT NULL GROUP BY owner",
                (since,),
            )
            result = {int(owner): at for owner, at in cur.fetchall()}
    return result


def test_the_feast_push_setting_serves_the_same_values(settings, store):
    """CDCF_STREAM_ONLINE_WRITES=feast-push sends the engine's rows through Feast's push sources instead of the
    packed writer: the same rows give the same served values, as-of times and Redis bytes."""
    from streaming.sink import FeatureSink

    packed_ids, pushed_ids = _ids(2), _ids(2)
    at = int(datetime(2026, 11, 30, 8, 15, 1, 250000, tzinfo=UTC).timestamp() * 1e6)
    names = [f.name for v in decl.FEATURE_VIEWS for f in v.features]

    def rows(ids: list[int]) -> pa.Table:
        values = {
            f.name: (7 if f.dtype == "int64" else 12.5 if f.dtype == "float64" else "vip")
            for v in decl.FEATURE_VIEWS
            for f in v.features
        }
        records = [
            {"entity": "user", "id": ids[0], "as_of_us": at, "decay": False, **values, "avg_order_value_30d": None},
            {"entity": "user", "id": ids[0], "as_of_us": at + 60_000_000, "decay": True, **values},
            {"entity": "product", "id": ids[1], "as_of_us": at, "decay": False, **values},
        ]
        return pa.Table.from_pylist(records).select(["entity", "id", "as_of_us", "decay", *names])

    for ids, writes in ((packed_ids, "packed"), (pushed_ids, "feast-push")):
        sink = FeatureSink(settings.model_copy(update={"stream_online_writes": writes}))
        assert sink.write(rows(ids))["rows"] == 2 * 3 + 1  # two user rows in three views, one product row in one
        sink.close()
    for view in decl.FEATURE_VIEWS:
        which = 1 if view.entity == decl.PRODUCT else 0
        assert served(store, view, packed_ids[which]) == served(store, view, pushed_ids[which])
        assert served(store, view, packed_ids[which])[1] is not None
    client = OnlineWriter(settings).client
    for join_key, which in (("user_id", 0), ("product_id", 1)):
        prefix = layout.key_prefix(join_key)
        hashes = [
            client.hgetall(layout.entity_key(prefix, i[which], settings.feast_project.encode()))
            for i in (packed_ids, pushed_ids)
        ]
        assert hashes[0] == hashes[1]


@pytest.mark.exclusive
def test_an_online_store_that_lost_its_writes_is_reseeded_by_the_job(settings, store):
    """Issue 14's durable online store: Redis comes back empty (flushed here), or from older data (its marker set
    back and a key gone); the job notices before its next micro-batch and re-seeds it from the offline store by
    itself, byte for byte, and says so in its status."""
    from streaming.reseed import MARKER

    txn, user = _ids(2)
    since = _sql(settings, "INSERT INTO transactions VALUES (%s, %s, NULL, 12.50, 'acme', now(), now())", (txn, user))
    assert_exact(settings, store, decl.TRANSACTION_RISK, user, since)
    client = OnlineWriter(settings).client
    key = layout.entity_key(layout.key_prefix("user_id"), user, settings.feast_project.encode())
    before = client.hgetall(key)
    reseeds = _status(settings)["reseeds"]

    client.flushall()
    assert wait_for(
        lambda: client.hgetall(key) == before,
        60,
        lambda: (
            f"the job to re-seed an empty online store (held {client.hgetall(key)}, before {before}; "
            f"the job's status: {_status(settings)})"
        ),
    )
    wait_for(lambda: _status(settings)["reseeds"] == reseeds + 1, 30, "the job to report the re-seed")
    assert "holds no marker (it restarted empty or was flushed)" in _status(settings)["last_reseed"]

    # as a restart from an old snapshot leaves it: an older marker, of another Redis run
    client.hset(f"{settings.feast_project}:{MARKER}", mapping={"as_of_us": 0, "run_id": "an-earlier-run"})
    client.delete(key)
    assert wait_for(lambda: client.hgetall(key) == before, 60, "the job to re-seed an online store of older data")
    wait_for(lambda: _status(settings)["reseeds"] == reseeds + 2, 30, "the job to report the re-seed")
    assert "(it came back from older data)" in _status(settings)["last_reseed"]
    assert served(store, decl.TRANSACTION_RISK, user)[0]["txn_amount_sum_1h"] == 12.5
    client.close()


@pytest.mark.exclusive
def test_resnapshot_brings_every_feature_back_after_capture_lost_its_slot(settings, store):
    """Capture stops and its slot is dropped (as an invalidated slot leaves it); meanwhile a transaction is updated,
    one deleted, one inserted and one moved to another user. `cdcf resnapshot` snapshots every row again and sends
    a delete for the row gone and for the row moved (a snapshot record has no before image to take it from its old
    owner), and both users' and the product's features are exact again, online and in every offline row from the
    snapshot on (the deletes reach the job before its clock passes their time)."""
    from connectors.connect import ConnectClient, connector_config

    kept, gone, new, moved, user, other, product = _ids(7)
    since = _sql(
        settings,
        "INSERT INTO transactions VALUES (%s, %s, %s, 10.00, 'acme', now(), now()), "
        "(%s, %s, %s, 20.00, 'acme', now(), now()), (%s, %s, NULL, 7.00, 'acme', now(), now())",
        (kept, user, product, gone, user, product, moved, user),
    )
    assert_exact(settings, store, decl.TRANSACTION_RISK, user, since)
    name, _ = connector_config(settings)
    client = ConnectClient(settings)
    try:
        client.stop(name)
        wait_for(lambda: client.status(name)["connector"]["state"] == "STOPPED", 60, "the connector to stop")
        with pg_clients.session(settings, user=settings.debezium_user) as conn, conn.cursor() as cur:
            wait_for(lambda: not _slot_active(cur, settings.replication_slot), 60, "the slot to be released")
            cur.execute("SELECT pg_drop_replication_slot(%s)", (settings.replication_slot,))
        _sql(settings, "UPDATE transactions SET amount = 15.00 WHERE txn_id = %s", (kept,))
        _sql(settings, "DELETE FROM transactions WHERE txn_id = %s", (gone,))
        _sql(settings, "INSERT INTO transactions VALUES (%s, %s, %s, 5.00, 'acme', now(), now())", (new, user, product))
        _sql(settings, "UPDATE transactions SET user_id = %s WHERE txn_id = %s", (other, moved))
        missed = _sql(settings, "SELECT 1")
        done = run_cli("resnapshot", timeout=900)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "deletes sent for rows removed or moved to other owners during the gap" in done.stdout
        assert client.status(name)["connector"]["state"] == "RUNNING"
    finally:
        if client.status(name)["connector"]["state"] != "RUNNING":
            run_cli("connector", "apply")
        client.close()
    # the source's truth: 15.00 and 5.00 (the 20.00 was deleted, the 7.00 moved away while capture was down), two
    # purchases of the product, and the 7.00 with the other user
    wait_for(
        lambda: served(store, decl.TRANSACTION_RISK, user)[0]["txn_amount_sum_1h"] == 20.0,
        300,
        lambda: f"the user's windows to hold the source's rows (served {served(store, decl.TRANSACTION_RISK, user)})",
    )
    wait_for(lambda: served(store, decl.TRANSACTION_RISK, other)[0]["txn_amount_sum_1h"] == 7.0, 60, "the other's")
    wait_for(lambda: served(store, decl.PRODUCT_STATS, product)[0]["purchases_7d"] == 2, 60, "the product's count")
    for view, entity in (
        (decl.TRANSACTION_RISK, user),
        (decl.USER_ACTIVITY, user),
        (decl.TRANSACTION_RISK, other),
        (decl.PRODUCT_STATS, product),
    ):
        assert_exact(settings, store, view, entity, missed)
        rows = offline_rows(settings, view, entity, f"{decl.EVENT_TIMESTAMP} >= %s", missed)
        assert rows, f"{view.name}[{entity}] has no offline row from the snapshot on"
        for as_of, values in rows.items():
            wrong = oracle.mismatches(view, values, oracle.expected(settings, view, entity, as_of))
            assert not wrong, f"{view.name}[{entity}] offline as of {as_of}: (stored, oracle) {wrong}"


def _slot_active(cur, slot: str) -> bool:
    cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    row = cur.fetchone()
    return bool(row and row[0])
