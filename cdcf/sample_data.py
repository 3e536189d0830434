"""A small, seeded sample of the source database (SPEC section 2) for the demo and the tests."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import psycopg2
from psycopg2.extras import execute_values

from cdcf.settings import Settings

STATUSES = ("active", "active", "active", "suspended", "closed")
CATEGORIES = ("books", "electronics", "garden", "toys", "grocery")
MERCHANTS = ("acme", "globex", "initech", "umbrella", "hooli")


def seed(settings: Settings, *, users: int = 200, products: int = 50, days: int = 30, seed: int = 7,
         now: datetime | None = None) -> dict[str, int]:
    """Insert users, products and ~``days`` of transactions, sessions and reviews; idempotent for one seed."""
    rng = random.Random(seed)
    now = now or datetime.now(UTC)

    def when() -> datetime:
        return now - timedelta(seconds=rng.randrange(days * 86_400))

    rows = {
        "users": [(u, rng.randint(18, 80), round(rng.uniform(15_000, 180_000), 2), rng.choice(STATUSES),
                   (now - timedelta(days=rng.randint(days, 3 * 365))).date(), now) for u in range(1, users + 1)],
        "products": [(p, rng.choice(CATEGORIES), round(rng.uniform(2, 900), 2), now)
                     for p in range(1, products + 1)],
        "transactions": [(t, rng.randint(1, users), rng.randint(1, products), round(rng.uniform(1, 500), 2),
                          rng.choice(MERCHANTS), when(), now) for t in range(1, users * 10 + 1)],
        "sessions": [(s, rng.randint(1, users), when(), rng.randint(5, 3_600)) for s in range(1, users * 5 + 1)],
        "reviews": [(r, rng.randint(1, products), rng.randint(1, users), rng.randint(1, 5), when())
                    for r in range(1, products * 6 + 1)],
    }
    with psycopg2.connect(settings.pg_dsn()) as conn, conn.cursor() as cur:
        for table, values in rows.items():
            execute_values(cur, f"INSERT INTO {table} VALUES %s ON CONFLICT DO NOTHING", values)
    conn.close()
    return {table: len(values) for table, values in rows.items()}
