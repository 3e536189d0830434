"""The feature state on the real Postgres and Redis: newest LSN wins, whatever order and batching the changes
arrive in, and re-applying them changes nothing."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2
import pyarrow as pa
import pytest

from cdcf import features as decl
from streaming.changes import arrow_schema
from streaming.state import FeatureState

pytestmark = pytest.mark.integration


def _history(txn: int, user: int, other: int, t0: datetime) -> list[dict]:
    """One transaction's life: insert, amount update, event-time move, owner move, delete, re-insert."""
    def version(lsn: int, owner: int | None, amount: str | None, minutes_ago: int | None, deleted=False) -> dict:
        return {"table": "transactions", "key": txn, "lsn": lsn, "deleted": deleted,
                "commit_ts": t0 + timedelta(milliseconds=lsn), "user_id": owner, "product_id": None,
                "amount": None if amount is None else Decimal(amount),
                "created_at": None if minutes_ago is None else t0 - timedelta(minutes=minutes_ago)}
    return [version(10, user, "5.00", 5), version(20, user, "7.25", 5), version(30, user, "7.25", 90),
            version(40, other, "7.25", 90), version(50, None, None, None, deleted=True),
            version(60, user, "1.50", 2)]


def _served_state(settings, users: list[int]) -> dict:
    with psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user)) as conn:
        with conn.cursor() as cur:
            names = ", ".join(f.name for f in decl.TRANSACTION_RISK.features)
            cur.execute(f"SELECT DISTINCT ON (user_id) user_id, {names} FROM {decl.TRANSACTION_RISK.name} "
                        f"WHERE user_id = ANY(%s) ORDER BY user_id, event_timestamp DESC", (users,))
            return {row[0]: row[1:] for row in cur.fetchall()}


@pytest.mark.parametrize("order", ["ascending", "descending", "shuffled"])
def test_newest_lsn_wins_in_any_order_and_batching(settings, order):
    state = FeatureState(settings)
    try:
        t0 = datetime.now(UTC)
        base = random.randrange(10**12, 10**13)
        user, other, txn, twin = base, base + 1, base + 2, base + 3
        history, twin_history = _history(txn, user, other, t0), _history(twin, user, other, t0)
        arrived = {"ascending": history, "descending": history[::-1],
                   "shuffled": random.sample(history, len(history))}[order]
        for change in arrived:  # one batch per change, in the order under test
            state.apply(pa.Table.from_pylist([change], schema=arrow_schema()))
        state.apply(pa.Table.from_pylist(twin_history[::-1] + twin_history, schema=arrow_schema()))  # one batch
        state.apply(pa.Table.from_pylist(history, schema=arrow_schema()))  # everything again: a no-op
        with psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user)) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT txn_id, lsn, user_id, amount FROM stream_transactions WHERE txn_id IN (%s, %s) "
                            "ORDER BY txn_id", (txn, twin))
                mirror = cur.fetchall()
        assert mirror == [(txn, 60, user, Decimal("1.50")), (twin, 60, user, Decimal("1.50"))]
        # the user ends with two live rows (one per transaction) of 1.50, two minutes old; the other with none
        final = _served_state(settings, [user, other])
        assert final[user] == (2, 3.0, 1.5)
        assert final.get(other, (0, 0.0, None)) == (0, 0.0, None)  # touched only if the move came before the rest
    finally:
        state.close()


def test_the_owner_of_a_version_born_and_gone_within_one_batch_is_emitted_as_of_its_end(settings):
    """Insert for A, a second insert for A, then the first moved to B, all in one batch: the mirror only ever
    holds the final version, yet A must be emitted as of the move (its values were different before it)."""
    state = FeatureState(settings)
    try:
        t0 = datetime.now(UTC)
        base = random.randrange(10**12, 10**13)
        a, b, first, second = base, base + 1, base + 2, base + 3

        def change(lsn: int, txn: int, owner: int, amount: str) -> dict:
            return {"table": "transactions", "key": txn, "lsn": lsn, "deleted": False,
                    "commit_ts": t0 + timedelta(milliseconds=lsn), "user_id": owner, "product_id": None,
                    "amount": Decimal(amount), "created_at": t0 - timedelta(minutes=1)}

        state.apply(pa.Table.from_pylist([change(10, first, a, "4.00"), change(20, second, a, "6.00"),
                                          change(30, first, b, "4.00")], schema=arrow_schema()))
        with psycopg2.connect(settings.pg_dsn(settings.offline_db, user=settings.feast_user)) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT id, as_of FROM stream_entities WHERE entity = 'user' AND id IN (%s, %s)", (a, b))
                as_of = dict(cur.fetchall())
        assert as_of == {a: t0 + timedelta(milliseconds=30), b: t0 + timedelta(milliseconds=30)}
        assert _served_state(settings, [a, b]) == {a: (1, 6.0, 6.0), b: (1, 4.0, 4.0)}
    finally:
        state.close()
