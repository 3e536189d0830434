"""Random, valid histories of the source tables as Debezium would emit them, in micro-batches, with Connect's
offset commits: the window engine's twin tests (tests/unit/test_engine.py) run them through the job and through
its pure twin (tests/engine_model.py)."""

from __future__ import annotations

import bisect
import json
import random
from datetime import UTC, datetime, timedelta

from tests.cdc_cases import PREFIX

START = datetime(2026, 10, 1, tzinfo=UTC)


class History:
    """A random, valid history of the source tables as Debezium would emit it (LSNs and commit times rise)."""

    def __init__(self, seed: int, redelivery: timedelta | None = None) -> None:
        """``redelivery``: how far back a re-delivered event may date (default: anything sent before)."""
        self.rnd = random.Random(seed)
        self.redelivery = redelivery
        self.rows: dict[tuple[str, int], dict] = {}
        self.lsn, self.now = 1000, START
        self.sent: list[tuple[str, bytes]] = []
        self.sent_at: list[datetime] = []

    def _ts(self, at: datetime) -> str:
        return at.isoformat().replace("+00:00", "Z")

    def _event(
        self, table: str, op: str, before: dict | None, after: dict | None, same_commit: bool = False
    ) -> tuple[str, bytes]:
        """``same_commit``: in the transaction of the event before (the same commit time)."""
        self.lsn += self.rnd.randrange(1, 50)
        if not same_commit:
            self.now += timedelta(seconds=self.rnd.choice([1, 5, 30, 120, 600, 1800]))
        source = {
            "version": "3.6.1.Final",
            "connector": "postgresql",
            "name": PREFIX,
            "ts_ms": 0,
            "ts_us": int(self.now.timestamp() * 1_000_000),
            "schema": "public",
            "table": table,
            "txId": self.lsn,
            "lsn": self.lsn,
        }
        value = json.dumps({"before": before, "after": after, "source": source, "op": op}).encode()
        message = (f"{PREFIX}.public.{table}", value)
        self.sent.append(message)
        self.sent_at.append(self.now)
        return message

    def _when(self) -> str:
        back = self.rnd.choice(
            [
                timedelta(minutes=self.rnd.randrange(0, 90)),
                timedelta(hours=self.rnd.randrange(0, 30)),
                timedelta(days=self.rnd.randrange(0, 40)),
                -timedelta(minutes=self.rnd.randrange(1, 20)),
            ]
        )
        return self._ts(self.now - back)

    def _new(self, table: str, key: int) -> dict:
        users, products = list(range(1, 9)), [11, 12, 13, 14]
        if table == "transactions":
            return {
                "txn_id": key,
                "user_id": self.rnd.choice(users),
                "product_id": self.rnd.choice(products + [None]),
                "amount": f"{self.rnd.randrange(1, 100000) / 100:.2f}",
                "merchant": "m",
                "created_at": self._when(),
                "updated_at": None,
            }
        if table == "sessions":
            return {
                "session_id": key,
                "user_id": self.rnd.choice(users),
                "started_at": self._when(),
                "duration_s": self.rnd.randrange(1, 5000),
            }
        if table == "reviews":
            return {
                "review_id": key,
                "product_id": self.rnd.choice(products),
                "user_id": None,
                "rating": self.rnd.randrange(1, 6),
                "created_at": self._when(),
            }
        return {
            "user_id": key,
            "age": self.rnd.choice([None, 30, 41]),
            "income": self.rnd.choice([None, "1000.50"]),
            "account_status": self.rnd.choice(["active", "vip"]),
            "signup_date": 20000,
            "updated_at": None,
        }

    def quiet(self, hours: int) -> tuple[str, bytes]:
        """Nothing but a heartbeat, ``hours`` later: the clock moves and windows decay."""
        self.now += timedelta(hours=hours)
        return self._event(
            "cdc_heartbeat", "u", {"id": 1, "beat_at": self._ts(self.now)}, {"id": 1, "beat_at": self._ts(self.now)}
        )

    def step(self) -> tuple[str, bytes]:
        rnd = self.rnd
        recent = (
            len(self.sent)
            if self.redelivery is None
            else len(self.sent) - bisect.bisect_left(self.sent_at, self.now - self.redelivery)
        )
        if rnd.random() < 0.08 and recent:  # Debezium re-delivers an earlier event
            message = rnd.choice(self.sent[-recent:])
            self.sent.append(message)
            self.sent_at.append(self.now)
            return message
        if rnd.random() < 0.05:
            return self.quiet(0)
        table = rnd.choice(["transactions", "transactions", "sessions", "reviews", "users"])
        key = rnd.randrange(1, 9) if table == "users" else rnd.randrange(1, 25)
        old = self.rows.get((table, key))
        if old is None:
            new = self._new(table, key)
            self.rows[(table, key)] = new
            return self._event(table, "c", None, new)
        if rnd.random() < 0.2:
            del self.rows[(table, key)]
            return self._event(table, "d", old, None)
        new = dict(old)
        fresh = self._new(table, key)
        for column in rnd.sample(sorted(set(fresh) - {list(fresh)[0]}), rnd.randrange(1, 3)):
            new[column] = fresh[column]  # owner moves, event-time moves, new amounts ...
        self.rows[(table, key)] = new
        return self._event(table, "u", old, new)


OFFSETS = "cdcf-connect-offsets"


def offset_commit(at_us: int, server: str = PREFIX, phase: str = "streaming") -> tuple:
    """Connect's record of our connector's source offset, committed once every change up to ``at_us`` is in Kafka;
    as Debezium writes it while streaming, during a snapshot, or when streaming starts after a snapshot."""
    offset = {"lsn_proc": 2, "messageType": "INSERT", "lsn_commit": 1, "lsn": 2, "txId": 1, "ts_usec": at_us}
    if phase == "snapshot":
        offset = {
            "last_snapshot_record": True,
            "lsn": 1,
            "txId": 1,
            "ts_usec": at_us,
            "snapshot": "INITIAL",
            "snapshot_completed": True,
        }
    elif phase == "after snapshot":
        offset = {"lsn": 1, "txId": 1, "ts_usec": at_us}
    return (OFFSETS, json.dumps(offset).encode(), json.dumps(["cdcf-app", {"server": server}]).encode())


def random_batches(seed: int, redelivery: timedelta | None = None, clocked: bool = False) -> list[list[tuple]]:
    """About 500 random changes in micro-batches of 1 to 60, with quiet spells of 1 to 200 hours between.
    ``clocked``: most batches end with an offset commit at the time the history had reached zero to two batches
    before (the changes since wait for a later one)."""
    history = History(seed, redelivery)
    rnd = random.Random(seed)
    batches, steps, reached = [], 0, []
    while steps < 500:
        if rnd.random() < 0.2:
            batches.append([history.quiet(rnd.choice([1, 2, 25, 200]))])
        else:
            size = rnd.choice([1, 2, 5, 20, 60])
            batches.append([history.step() for _ in range(size)])
            steps += size
        reached.append(int(history.now.timestamp() * 1_000_000))
        if clocked and rnd.random() < 0.8:
            batches[-1].append(offset_commit(reached[max(0, len(reached) - 1 - rnd.randrange(3))]))
    return batches
