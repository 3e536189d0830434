"""Online/offline consistency, the nightly check (Chronon's consistency metric): a sample of entities' online
values, read from Redis with their as-of times, each against the offline store's row of that entity at that
as-of time. The pipeline writes both from the same rows, so every online value must be an offline row: the match
fraction is 1.0 unless a store lost or changed something. A value whose offline row is not there yet (a write in
flight) is looked up once more after ``RECHECK_S``; an entity with no online value but offline rows is read again
from Redis, since the streaming job writes Redis first and may have written both since the first read.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from datetime import datetime

from psycopg2.extras import execute_values

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.features import EVENT_TIMESTAMP, FeatureView
from cdcf.settings import Settings
from online.client import FeatureClient

RECHECK_S = 2.0
SHOWN = 20  # mismatches kept in the report


@dataclass
class Report:
    compared: int = 0
    matched: int = 0
    mismatches: list[dict] = field(default_factory=list)

    @property
    def match(self) -> float | None:
        return self.matched / self.compared if self.compared else None

    def as_dict(self) -> dict:
        return {
            "validate_match": self.match,
            "validate_compared": self.compared,
            "validate_mismatches": self.mismatches[:SHOWN],
        }


def validate(
    settings: Settings, sample: int = 1000, entities: dict[str, list[int]] | None = None, seed: int | None = None
) -> Report:
    """Compare ``sample`` entities per view (random ones of the offline store, or the ``entities`` given per join
    key) across the two stores."""
    rng = random.Random(seed)
    report = Report()
    conn = pg_clients.connect_offline(settings)
    try:
        for view in decl.ALL_VIEWS:
            key = view.entity.join_key
            ids = entities.get(key, []) if entities is not None else _sample(conn, view, sample, rng)
            if ids:
                _compare(settings, conn, view, ids, report)
    finally:
        conn.close()
    return report


def _sample(conn, view: FeatureView, size: int, rng: random.Random) -> list[int]:
    """About ``size`` distinct entities of the view's offline table, from a sample of its rows (no full sort)."""
    key = view.entity.join_key
    with conn.cursor() as cur:
        cur.execute("SELECT greatest(reltuples, 1) FROM pg_class WHERE relname = %s", (view.offline_table,))
        percent = min(100.0, 100.0 * size * 10 / cur.fetchone()[0])
        cur.execute(
            f"SELECT DISTINCT {key} FROM {view.offline_table} TABLESAMPLE BERNOULLI (%s) REPEATABLE (%s) LIMIT %s",
            (percent, rng.randrange(2**31), size),
        )
        found = [r[0] for r in cur.fetchall()]
    conn.commit()
    return found


def _compare(settings: Settings, conn, view: FeatureView, ids: list[int], report: Report) -> None:
    client = FeatureClient.for_features(settings, [(view.name, f.name) for f in view.features])
    try:
        online = _online(client, view, ids)
        latest = _latest(conn, view, [e for e, (as_of, _) in online.items() if as_of is None])
        if latest:  # written since they were read (the job writes Redis before the offline row): read them again
            online.update(_online(client, view, sorted(latest)))
    finally:
        client.close()
    offline = _offline_rows(conn, view, online)
    late = [e for e, (as_of, _) in online.items() if as_of is not None and (e, as_of) not in offline]
    if late:
        time.sleep(RECHECK_S)
        offline.update(_offline_rows(conn, view, {e: online[e] for e in late}))
    for entity, (as_of, values) in online.items():
        report.compared += 1
        if as_of is None:
            why = None if entity not in latest else "offline rows but no online value"
        else:
            held = offline.get((entity, as_of))
            why = (
                "no offline row at the online as-of time"
                if held is None
                else (None if held == values else f"online {values} != offline {held}")
            )
        if why is None:
            report.matched += 1
        else:
            report.mismatches.append(
                {"view": view.name, "entity": entity, "as_of": as_of.isoformat() if as_of else None, "why": why}
            )


def _online(client: FeatureClient, view: FeatureView, ids: list[int]) -> dict[int, tuple[datetime | None, list]]:
    """Each entity's online as-of time (None: no value) and values of ``view``."""
    fetched = client.fetch(ids)
    return {entity: (fetched.as_of_row(n)[view.name], fetched.row(n)) for n, entity in enumerate(ids)}


def _offline_rows(conn, view: FeatureView, online: dict[int, tuple[datetime | None, list]]) -> dict:
    """(entity, as-of time) -> the offline row's values, for the online values' own as-of times."""
    keys = [(entity, as_of) for entity, (as_of, _) in online.items() if as_of is not None]
    if not keys:
        return {}
    key = view.entity.join_key
    names = [f.name for f in view.features]
    with conn.cursor() as cur:
        rows = execute_values(
            cur,
            f"SELECT v.{key}, v.{EVENT_TIMESTAMP}, {', '.join(f'v.{n}' for n in names)} "
            f"FROM {view.offline_table} v JOIN (VALUES %s) k(id, at) ON v.{key} = k.id AND "
            f"v.{EVENT_TIMESTAMP} = k.at",
            keys,
            template="(%s::bigint, %s::timestamptz)",
            fetch=True,
            page_size=len(keys),
        )
    conn.commit()
    return {(r[0], r[1]): list(r[2:]) for r in rows}


def _latest(conn, view: FeatureView, ids: list[int]) -> set[int]:
    """Those of ``ids`` the offline store has rows of."""
    if not ids:
        return set()
    key = view.entity.join_key
    with conn.cursor() as cur:
        cur.execute(f"SELECT DISTINCT {key} FROM {view.offline_table} WHERE {key} = ANY(%s)", (ids,))
        found = {r[0] for r in cur.fetchall()}
    conn.commit()
    return found
