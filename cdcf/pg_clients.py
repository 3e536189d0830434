"""Connections to PostgreSQL: the one place the pipeline opens them, each with a connect timeout.

``session`` is for a unit of work: it commits when the block ends, rolls back when it raises, and closes the
connection on every path (psycopg2's own ``with conn:`` ends the transaction but leaves the connection open).
``connect`` is for a connection a long-lived object owns and closes itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from psycopg2.extensions import connection

from cdcf.settings import Settings

CONNECT_TIMEOUT_S = 10


def connect(
    settings: Settings, db: str | None = None, *, user: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S
) -> connection:
    """A connection as ``user`` (default the app role) to ``db`` (default the app database), over TLS."""
    return psycopg2.connect(settings.pg_dsn(db, user=user), connect_timeout=max(1, round(timeout_s)))


def connect_offline(settings: Settings, *, timeout_s: float = CONNECT_TIMEOUT_S) -> connection:
    """A connection to the offline store (features, the change archive, training sets) as the feast role."""
    return connect(settings, settings.offline_db, user=settings.feast_user, timeout_s=timeout_s)


@contextmanager
def session(
    settings: Settings, db: str | None = None, *, user: str | None = None, timeout_s: float = CONNECT_TIMEOUT_S
) -> Iterator[connection]:
    """One transaction on a fresh connection (see the module's doc); arguments as ``connect``'s."""
    conn = connect(settings, db, user=user, timeout_s=timeout_s)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


def offline_session(settings: Settings, *, timeout_s: float = CONNECT_TIMEOUT_S) -> Iterator[connection]:
    """``session`` on the offline store as the feast role."""
    return session(settings, settings.offline_db, user=settings.feast_user, timeout_s=timeout_s)
