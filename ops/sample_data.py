"""A small, seeded sample of the source database (docs/semantics.md#source) for the demo and the tests.

Besides ordinary activity it holds fraud, as the fraud model has to learn it: some users' accounts are taken over,
and each takeover is a burst of high amounts within an hour, mostly at merchants ordinary users seldom use. Most
fraudulent transactions are reported as chargebacks days later (some never are, and some reports would lie in the
future, so they are not there yet); a few ordinary transactions are charged back too (friendly fraud). And it holds
taste, as the recommendation model has to learn it: users mostly buy the products made for their age band, the
popular ones most.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from functools import cache
from itertools import accumulate

from psycopg2.extras import execute_values

from cdcf import pg_clients
from cdcf.settings import Settings

STATUSES = ("active", "active", "active", "suspended", "closed")
CATEGORIES = ("books", "electronics", "garden", "toys", "grocery")
MERCHANTS = ("acme", "globex", "initech", "umbrella", "hooli")
RISKY_MERCHANTS = ("quickcash", "giftcardz", "cryptox")  # where stolen accounts spend
TAKEOVER_SHARE = 0.08  # of users, once each in the sample's span
REPORTED_SHARE = 0.85  # of fraudulent transactions, within REPORT_DAYS
REPORT_DAYS = (1, 45)
FRIENDLY_FRAUD_SHARE = 0.003  # of ordinary transactions


AGE_BANDS = (35, 55)  # under 35, 35 to 54, 55 and over
IN_BAND_SHARE = 0.75  # of purchases, from the products made for the buyer's band


def age_band(age: int) -> int:
    return sum(age >= edge for edge in AGE_BANDS)


@cache
def _catalog(products: int) -> dict[int | None, tuple[list[int], list[float]]]:
    """Per age band (None: any), the products made for it (product id modulo 3) and their cumulative weights: a
    product's popularity falls with its id (1 / sqrt(id))."""

    def weighted(ids: list[int]) -> tuple[list[int], list[float]]:
        return ids, list(accumulate(1 / p**0.5 for p in ids))

    every = list(range(1, products + 1))
    return {
        None: weighted(every),
        **{band: weighted([p for p in every if p % 3 == band] or every) for band in range(len(AGE_BANDS) + 1)},
    }


def pick_product(rng: random.Random, age: int | None, products: int) -> int:
    """The product (1 .. ``products``) a user of ``age`` buys: most often one made for their age band, the popular
    ones most; otherwise any product, by popularity alone."""
    band = age_band(age) if age is not None and rng.random() < IN_BAND_SHARE else None
    ids, weights = _catalog(products)[band]
    return rng.choices(ids, cum_weights=weights)[0]


def user_row(rng: random.Random, user: int, now: datetime, age: int | None = None) -> tuple:
    return (
        user,
        age or rng.randint(18, 80),
        round(rng.uniform(15_000, 180_000), 2),
        rng.choice(STATUSES),
        (now - timedelta(days=rng.randint(30, 3 * 365))).date(),
        now,
    )


def add_users(settings: Settings, ids: range, seed: int = 7) -> None:
    """Users rows for ``ids`` (those not there yet), so that a workload over them buys by age."""
    rng, now = random.Random(seed), datetime.now(UTC)
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        execute_values(
            cur,
            "INSERT INTO users VALUES %s ON CONFLICT DO NOTHING",
            [user_row(rng, u, now) for u in ids],
            page_size=5000,
        )


def fraud_burst(rng: random.Random, start: datetime) -> list[tuple[float, str, datetime]]:
    """(amount, merchant, created_at) of one account takeover: 3 to 6 high amounts within an hour of ``start``."""
    return [
        (
            round(rng.uniform(400, 2500), 2),
            rng.choice(RISKY_MERCHANTS) if rng.random() < 0.8 else rng.choice(MERCHANTS),
            start + timedelta(seconds=rng.randrange(3600)),
        )
        for _ in range(rng.randint(3, 6))
    ]


def report_delay(rng: random.Random) -> timedelta | None:
    """How long after a fraudulent transaction its chargeback comes, or None if it never does."""
    return timedelta(days=rng.uniform(*REPORT_DAYS)) if rng.random() < REPORTED_SHARE else None


def seed(
    settings: Settings,
    *,
    users: int = 200,
    products: int = 50,
    days: int = 30,
    seed: int = 7,
    now: datetime | None = None,
) -> dict[str, int]:
    """Insert users, products and ~``days`` of transactions, sessions, reviews and chargebacks; idempotent for one
    seed."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)

    def when() -> datetime:
        return now - timedelta(seconds=rng.randrange(days * 86_400))

    ages = [rng.randint(18, 80) for _ in range(users)]
    rows = {
        "users": [user_row(rng, u, now, ages[u - 1]) for u in range(1, users + 1)],
        "products": [(p, rng.choice(CATEGORIES), round(rng.uniform(2, 900), 2), now) for p in range(1, products + 1)],
        "transactions": [
            (
                t,
                user,
                pick_product(rng, ages[user - 1], products),
                round(rng.uniform(1, 500), 2),
                rng.choice(MERCHANTS),
                when(),
                now,
            )
            for t, user in enumerate((rng.randint(1, users) for _ in range(users * 10)), 1)
        ],
        "sessions": [(s, rng.randint(1, users), when(), rng.randint(5, 3_600)) for s in range(1, users * 5 + 1)],
        "reviews": [
            (r, rng.randint(1, products), rng.randint(1, users), rng.randint(1, 5), when())
            for r in range(1, products * 6 + 1)
        ],
    }
    reports = [
        (txn[0], txn[5] + timedelta(days=rng.uniform(*REPORT_DAYS)))
        for txn in rows["transactions"]
        if rng.random() < FRIENDLY_FRAUD_SHARE
    ]
    for user in rng.sample(range(1, users + 1), int(users * TAKEOVER_SHARE)):
        for amount, merchant, at in fraud_burst(rng, when()):
            txn_id = len(rows["transactions"]) + 1
            rows["transactions"].append((txn_id, user, rng.randint(1, products), amount, merchant, at, now))
            if (delay := report_delay(rng)) is not None:
                reports.append((txn_id, at + delay))
    # one chargeback per transaction at most: its id is the transaction's
    rows["chargebacks"] = [(txn_id, txn_id, at) for txn_id, at in reports if at <= now]
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        for table, values in rows.items():
            execute_values(cur, f"INSERT INTO {table} VALUES %s ON CONFLICT DO NOTHING", values)
    return {table: len(values) for table, values in rows.items()}
