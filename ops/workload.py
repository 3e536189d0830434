"""A seedable workload on the source database: the kinds of change the pipeline must get exactly right.

Inserts of transactions, sessions and reviews; updates of amounts, event times and owners; deletes; rows
backdated up to 29 days; profile updates; account takeovers (bursts of high amounts, mostly at risky merchants,
as in the sample data) and their chargebacks, reported later or never; and bursts of several times the rate. Each
change is its own small transaction, paced in 100 ms ticks to hold the target rate.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import Message, TopicPartition

from cdcf import kafka_clients, pg_clients
from cdcf.contracts import change_topic
from cdcf.settings import Settings
from ops.sample_data import MERCHANTS, fraud_burst, pick_product, report_delay

TICK_S = 0.1
MIX = {  # relative weight of each kind of change
    "insert_txn": 40,
    "insert_session": 12,
    "insert_review": 8,
    "backdated_txn": 5,
    "update_amount": 10,
    "move_event_time": 5,
    "move_owner": 5,
    "delete_txn": 5,
    "update_user": 5,
    "delete_session": 2,
    "move_review": 3,
    "takeover_txn": 2,
    "chargeback": 1,
}


class Workload:
    def __init__(
        self,
        settings: Settings,
        seed: int = 1,
        users: int = 200,
        products: int = 50,
        mix: dict[str, int] | None = None,
        entity_base: int = 0,
    ) -> None:
        """Users and products are ``entity_base`` + 1 .. + ``users`` / ``products``; with a base, updates, moves
        and deletes touch only rows of those entities."""
        self.settings = settings
        self.rng = random.Random(seed)
        self.users, self.products, self.base = users, products, entity_base
        self.mix = mix or MIX
        self.kinds, self.weights = list(self.mix), list(self.mix.values())
        self.counts: Counter[str] = Counter()
        self.takeover: list[tuple[int, float, str]] = []  # the current takeover's transactions still to come
        self.unreported: list[int] = []  # takeover transactions whose chargeback is still to come

    def run(
        self,
        rate: float,
        duration_s: float,
        *,
        burst_every_s: float = 15,
        burst_factor: float = 4,
        per_commit: int = 1,
        progress: Callable[[float, Counter[str]], None] | None = None,
    ) -> Counter[str]:
        """Make changes at ``rate`` per second for ``duration_s`` (one second in ``burst_every_s`` runs at
        ``burst_factor`` times the rate), up to ``per_commit`` changes per transaction; return how many of each
        kind were committed."""
        conn = pg_clients.connect(self.settings)
        try:
            with conn.cursor() as cur:
                self._load_state(cur)
            conn.commit()
            started = time.monotonic()
            next_report, owed = started + 1, 0.0
            while (elapsed := time.monotonic() - started) < duration_s:
                in_burst = burst_every_s > 0 and elapsed % burst_every_s < 1
                owed += rate * TICK_S * (burst_factor if in_burst else 1)
                while owed >= 1:
                    n = min(per_commit, int(owed))
                    self.changes(conn, n)
                    owed -= n
                if progress and time.monotonic() >= next_report:
                    progress(elapsed, self.counts)
                    next_report += 1
                time.sleep(max(0.0, started + (int(elapsed / TICK_S) + 1) * TICK_S - time.monotonic()))
        finally:
            conn.close()
        return self.counts

    def changes(self, conn, n: int = 1) -> None:
        """Commit ``n`` changes of kinds drawn from the mix in one transaction (one statement per kind)."""
        done: Counter[str] = Counter()
        with conn.cursor() as cur:
            for kind, k in Counter(self.rng.choices(self.kinds, self.weights, k=n)).items():
                done[kind] = getattr(self, f"_{kind}")(cur, k)
        conn.commit()
        self.counts.update(+done)

    def _load_state(self, cur) -> None:
        cur.execute(
            "SELECT user_id, age FROM users WHERE user_id BETWEEN %s AND %s", (self.base + 1, self.base + self.users)
        )
        self.ages: dict[int, int] = dict(cur.fetchall())  # who buys what follows the buyer's age
        self.next_id = {}
        self.live: dict[str, list[int]] = {}
        for table, key, owner, count in (
            ("transactions", "txn_id", "user_id", self.users),
            ("sessions", "session_id", "user_id", self.users),
            ("reviews", "review_id", "product_id", self.products),
        ):
            cur.execute(f"SELECT coalesce(max({key}), 0) + 1 FROM {table}")
            self.next_id[table] = cur.fetchone()[0]
            mine = f"WHERE {owner} BETWEEN {self.base + 1} AND {self.base + count}" if self.base else ""
            cur.execute(f"SELECT {key} FROM {table} {mine} ORDER BY {key} DESC LIMIT 5000")
            self.live[table] = [r[0] for r in cur.fetchall()]

    def _new_id(self, table: str) -> int:
        self.next_id[table] += 1
        self.live[table].append(self.next_id[table] - 1)
        return self.next_id[table] - 1

    def _picks(self, table: str, k: int, remove: bool = False) -> list[int]:
        """Up to ``k`` distinct live rows of ``table`` (taken out of the live ones with ``remove``)."""
        ids = self.live[table]
        chosen = sorted(self.rng.sample(range(len(ids)), min(k, len(ids))), reverse=True)
        picked = [ids[i] for i in chosen]
        if remove:
            for i in chosen:  # highest first, so each swap-and-pop leaves the lower positions valid
                ids[i] = ids[-1]
                ids.pop()
        return picked

    def _user(self) -> int:
        return self.base + self.rng.randint(1, self.users)

    def _product(self) -> int:
        return self.base + self.rng.randint(1, self.products)

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _insert(self, cur, table: str, types: tuple[str, ...], rows: list[tuple], upsert: str = "DO NOTHING") -> int:
        cur.execute(
            f"INSERT INTO {table} SELECT * FROM unnest({', '.join(f'%s::{t}[]' for t in types)}) ON CONFLICT {upsert}",
            [list(column) for column in zip(*rows, strict=True)],
        )
        return cur.rowcount

    def _insert_txn(self, cur, k: int, backdate: Callable[[], timedelta] = lambda: timedelta(0)) -> int:
        now = self._now()
        return self._insert(
            cur,
            "transactions",
            ("bigint", "bigint", "bigint", "numeric", "text", "timestamptz", "timestamptz"),
            [
                (
                    self._new_id("transactions"),
                    user,
                    self.base + pick_product(self.rng, self.ages.get(user), self.products),
                    round(self.rng.uniform(1, 500), 2),
                    self.rng.choice(MERCHANTS[:3]),
                    now - backdate(),
                    now,
                )
                for user in (self._user() for _ in range(k))
            ],
        )

    def _backdated_txn(self, cur, k: int) -> int:
        return self._insert_txn(cur, k, lambda: timedelta(seconds=self.rng.randrange(60, 29 * 86_400)))

    def _takeover_txn(self, cur, k: int) -> int:
        """The next ``k`` transactions of account takeovers: a burst for one user, then the next user's."""
        rows = []
        for _ in range(k):
            if not self.takeover:
                user = self._user()
                self.takeover = [(user, amount, merchant) for amount, merchant, _ in fraud_burst(self.rng, self._now())]
            user, amount, merchant = self.takeover.pop()
            txn_id = self._new_id("transactions")
            if report_delay(self.rng) is not None:
                self.unreported.append(txn_id)
            rows.append((txn_id, user, self._product(), amount, merchant, self._now(), self._now()))
        return self._insert(
            cur, "transactions", ("bigint", "bigint", "bigint", "numeric", "text", "timestamptz", "timestamptz"), rows
        )

    def _chargeback(self, cur, k: int) -> int:
        """Report up to ``k`` earlier takeover transactions as charged back (now, so days early in event time)."""
        reported, self.unreported = self.unreported[:k], self.unreported[k:]
        if not reported:
            return 0
        cur.execute(
            "INSERT INTO chargebacks SELECT txn_id, txn_id, now() FROM unnest(%s::bigint[]) txn_id "
            "ON CONFLICT DO NOTHING",
            (reported,),
        )
        return cur.rowcount

    def _insert_session(self, cur, k: int) -> int:
        return self._insert(
            cur,
            "sessions",
            ("bigint", "bigint", "timestamptz", "int"),
            [(self._new_id("sessions"), self._user(), self._now(), self.rng.randint(5, 3600)) for _ in range(k)],
        )

    def _insert_review(self, cur, k: int) -> int:
        return self._insert(
            cur,
            "reviews",
            ("bigint", "bigint", "bigint", "int", "timestamptz"),
            [
                (self._new_id("reviews"), self._product(), self._user(), self.rng.randint(1, 5), self._now())
                for _ in range(k)
            ],
        )

    def _update(self, cur, table: str, key: str, k: int, assign: str, cast: str, value: Callable[[], object]) -> int:
        """Set ``assign`` (in terms of v.value) on up to ``k`` distinct live rows, each with its own value."""
        targets = self._picks(table, k)
        if not targets:
            return 0
        cur.execute(
            f"UPDATE {table} t SET {assign} FROM unnest(%s::bigint[], %s::{cast}[]) v(id, value) WHERE t.{key} = v.id",
            (targets, [value() for _ in targets]),
        )
        return cur.rowcount

    def _update_amount(self, cur, k: int) -> int:
        return self._update(
            cur,
            "transactions",
            "txn_id",
            k,
            "amount = v.value, updated_at = now()",
            "numeric",
            lambda: round(self.rng.uniform(1, 500), 2),
        )

    def _move_event_time(self, cur, k: int) -> int:
        return self._update(
            cur,
            "transactions",
            "txn_id",
            k,
            "created_at = least(t.created_at + v.value * interval '1 second', now()), updated_at = now()",
            "int",
            lambda: self.rng.randint(-3 * 86_400, 3_600),
        )

    def _move_owner(self, cur, k: int) -> int:
        return self._update(
            cur, "transactions", "txn_id", k, "user_id = v.value, updated_at = now()", "bigint", self._user
        )

    def _move_review(self, cur, k: int) -> int:
        return self._update(cur, "reviews", "review_id", k, "product_id = v.value", "bigint", self._product)

    def _delete(self, cur, table: str, key: str, k: int) -> int:
        targets = self._picks(table, k, remove=True)
        if not targets:
            return 0
        cur.execute(f"DELETE FROM {table} WHERE {key} = ANY(%s)", (targets,))
        return cur.rowcount

    def _delete_txn(self, cur, k: int) -> int:
        return self._delete(cur, "transactions", "txn_id", k)

    def _delete_session(self, cur, k: int) -> int:
        return self._delete(cur, "sessions", "session_id", k)

    def _update_user(self, cur, k: int) -> int:
        users = list(dict.fromkeys(self._user() for _ in range(k)))  # an upsert may touch each row once
        for u in users:
            self.ages.setdefault(u, self.rng.randint(18, 80))  # a new row's age (an update keeps the age)
        return self._insert(
            cur,
            "users",
            ("bigint", "int", "numeric", "text", "date", "timestamptz"),
            [
                (
                    u,
                    self.ages[u],
                    round(self.rng.uniform(15_000, 180_000), 2),
                    self.rng.choice(("active", "active", "suspended", "closed")),
                    self._now().date(),
                    self._now(),
                )
                for u in users
            ],
            "(user_id) DO UPDATE SET income = EXCLUDED.income, account_status = "
            "EXCLUDED.account_status, updated_at = now()",
        )


def topic_end(settings: Settings, table: str) -> int:
    """The next offset of ``table``'s change topic (one partition)."""
    consumer = kafka_clients.consumer(settings, "admin", "cdcf-offsets")
    try:
        return consumer.get_watermark_offsets(TopicPartition(_topic(settings, table), 0), timeout=10)[1]
    finally:
        consumer.close()


def redeliver(settings: Settings, table: str, pick: Callable[[Message], bool], start: int = 0) -> int:
    """Produce again the change events of ``table``'s topic from offset ``start`` that ``pick`` selects (not
    tombstones), as Debezium does after a crash: it is at-least-once. Return how many were produced."""
    topic = _topic(settings, table)
    consumer = kafka_clients.consumer(settings, "admin", f"redeliver-{time.time()}", **{"enable.auto.commit": False})
    end = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
    consumer.assign([TopicPartition(topic, 0, start)])
    chosen = []
    while start < end:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        if msg.value() is not None and pick(msg):
            chosen.append(msg)
        if msg.offset() >= end - 1:
            break
    consumer.close()
    producer = kafka_clients.producer(settings, "admin")
    for msg in chosen:
        producer.produce(topic, key=msg.key(), value=msg.value())
    if producer.flush(30):
        raise RuntimeError(f"could not produce {len(chosen)} redeliveries to {topic}")
    return len(chosen)


def _topic(settings: Settings, table: str) -> str:
    return change_topic(settings.topic_prefix, table)
