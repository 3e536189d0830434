"""A seedable workload on the source database: the kinds of change the pipeline must get exactly right.

Inserts of transactions, sessions and reviews; updates of amounts, event times and owners; deletes; rows
backdated up to 29 days; profile updates; and bursts of several times the rate. Each change is its own small
transaction, paced in 100 ms ticks to hold the target rate.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg2
from confluent_kafka import Consumer, Message, Producer, TopicPartition

from cdcf.settings import Settings

TICK_S = 0.1
MIX = {  # relative weight of each kind of change
    "insert_txn": 40, "insert_session": 12, "insert_review": 8, "backdated_txn": 5, "update_amount": 10,
    "move_event_time": 5, "move_owner": 5, "delete_txn": 5, "update_user": 5, "delete_session": 2,
    "move_review": 3,
}


class Workload:
    def __init__(self, settings: Settings, seed: int = 1, users: int = 200, products: int = 50,
                 mix: dict[str, int] | None = None, entity_base: int = 0) -> None:
        """Users and products are ``entity_base`` + 1 .. + ``users`` / ``products``; with a base, updates, moves
        and deletes touch only rows of those entities."""
        self.settings = settings
        self.rng = random.Random(seed)
        self.users, self.products, self.base = users, products, entity_base
        self.mix = mix or MIX
        self.kinds, self.weights = list(self.mix), list(self.mix.values())
        self.counts: Counter[str] = Counter()

    def run(self, rate: float, duration_s: float, *, burst_every_s: float = 15, burst_factor: float = 4,
            per_commit: int = 1, progress: Callable[[float, Counter[str]], None] | None = None) -> Counter[str]:
        """Make changes at ``rate`` per second for ``duration_s`` (one second in ``burst_every_s`` runs at
        ``burst_factor`` times the rate), up to ``per_commit`` changes per transaction; return how many of each
        kind were committed."""
        conn = psycopg2.connect(self.settings.pg_dsn())
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
        """Commit ``n`` changes of kinds drawn from the mix in one transaction."""
        done = []
        with conn.cursor() as cur:
            for kind in self.rng.choices(self.kinds, self.weights, k=n):
                if getattr(self, f"_{kind}")(cur):
                    done.append(kind)
        conn.commit()
        self.counts.update(done)

    def _load_state(self, cur) -> None:
        self.next_id = {}
        self.live: dict[str, list[int]] = {}
        for table, key, owner, count in (("transactions", "txn_id", "user_id", self.users),
                                         ("sessions", "session_id", "user_id", self.users),
                                         ("reviews", "review_id", "product_id", self.products)):
            cur.execute(f"SELECT coalesce(max({key}), 0) + 1 FROM {table}")
            self.next_id[table] = cur.fetchone()[0]
            mine = f"WHERE {owner} BETWEEN {self.base + 1} AND {self.base + count}" if self.base else ""
            cur.execute(f"SELECT {key} FROM {table} {mine} ORDER BY {key} DESC LIMIT 5000")
            self.live[table] = [r[0] for r in cur.fetchall()]

    def _new_id(self, table: str) -> int:
        self.next_id[table] += 1
        self.live[table].append(self.next_id[table] - 1)
        return self.next_id[table] - 1

    def _pick(self, table: str, remove: bool = False) -> int | None:
        ids = self.live[table]
        if not ids:
            return None
        i = self.rng.randrange(len(ids))
        if remove:
            ids[i], ids[-1] = ids[-1], ids[i]
            return ids.pop()
        return ids[i]

    def _user(self) -> int:
        return self.base + self.rng.randint(1, self.users)

    def _product(self) -> int:
        return self.base + self.rng.randint(1, self.products)

    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _insert_txn(self, cur, backdate: timedelta = timedelta(0)) -> bool:
        cur.execute("INSERT INTO transactions VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", (
            self._new_id("transactions"), self._user(), self._product(),
            round(self.rng.uniform(1, 500), 2), self.rng.choice(("acme", "globex", "initech")),
            self._now() - backdate, self._now()))
        return cur.rowcount == 1

    def _backdated_txn(self, cur) -> bool:
        return self._insert_txn(cur, timedelta(seconds=self.rng.randrange(60, 29 * 86_400)))

    def _insert_session(self, cur) -> bool:
        cur.execute("INSERT INTO sessions VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING", (
            self._new_id("sessions"), self._user(), self._now(), self.rng.randint(5, 3600)))
        return cur.rowcount == 1

    def _insert_review(self, cur) -> bool:
        cur.execute("INSERT INTO reviews VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING", (
            self._new_id("reviews"), self._product(), self._user(),
            self.rng.randint(1, 5), self._now()))
        return cur.rowcount == 1

    def _update(self, cur, sql: str, table: str, value: object) -> bool:
        target = self._pick(table)
        if target is None:
            return False
        cur.execute(sql, (value, target))
        return cur.rowcount == 1

    def _update_amount(self, cur) -> bool:
        return self._update(cur, "UPDATE transactions SET amount = %s, updated_at = now() WHERE txn_id = %s",
                            "transactions", round(self.rng.uniform(1, 500), 2))

    def _move_event_time(self, cur) -> bool:
        shift = timedelta(seconds=self.rng.randint(-3 * 86_400, 3_600))
        return self._update(cur, "UPDATE transactions SET created_at = least(created_at + %s, now()), "
                                 "updated_at = now() WHERE txn_id = %s", "transactions", shift)

    def _move_owner(self, cur) -> bool:
        return self._update(cur, "UPDATE transactions SET user_id = %s, updated_at = now() WHERE txn_id = %s",
                            "transactions", self._user())

    def _move_review(self, cur) -> bool:
        return self._update(cur, "UPDATE reviews SET product_id = %s WHERE review_id = %s", "reviews",
                            self._product())

    def _delete(self, cur, table: str, key: str) -> bool:
        target = self._pick(table, remove=True)
        if target is None:
            return False
        cur.execute(f"DELETE FROM {table} WHERE {key} = %s", (target,))
        return cur.rowcount == 1

    def _delete_txn(self, cur) -> bool:
        return self._delete(cur, "transactions", "txn_id")

    def _delete_session(self, cur) -> bool:
        return self._delete(cur, "sessions", "session_id")

    def _update_user(self, cur) -> bool:
        cur.execute("INSERT INTO users (user_id, age, income, account_status, signup_date, updated_at) "
                    "VALUES (%(u)s, %(age)s, %(inc)s, %(st)s, current_date, now()) ON CONFLICT (user_id) DO UPDATE "
                    "SET income = EXCLUDED.income, account_status = EXCLUDED.account_status, updated_at = now()",
                    {"u": self._user(), "age": self.rng.randint(18, 80),
                     "inc": round(self.rng.uniform(15_000, 180_000), 2),
                     "st": self.rng.choice(("active", "active", "suspended", "closed"))})
        return cur.rowcount == 1


def topic_end(settings: Settings, table: str) -> int:
    """The next offset of ``table``'s change topic (one partition)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "cdcf-offsets", "log_level": 0})
    try:
        return consumer.get_watermark_offsets(TopicPartition(_topic(settings, table), 0), timeout=10)[1]
    finally:
        consumer.close()


def redeliver(settings: Settings, table: str, pick: Callable[[Message], bool], start: int = 0) -> int:
    """Produce again the change events of ``table``'s topic from offset ``start`` that ``pick`` selects (not
    tombstones), as Debezium does after a crash: it is at-least-once. Return how many were produced."""
    topic = _topic(settings, table)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"redeliver-{time.time()}",
                         "enable.auto.commit": False, "log_level": 0})
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
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for msg in chosen:
        producer.produce(topic, key=msg.key(), value=msg.value())
    if producer.flush(30):
        raise RuntimeError(f"could not produce {len(chosen)} redeliveries to {topic}")
    return len(chosen)


def _topic(settings: Settings, table: str) -> str:
    return f"{settings.topic_prefix}.public.{table}"
