"""A brute-force SQL oracle: every feature of docs/semantics.md#windows recomputed in one Postgres query per view and
table, straight from the change history (cdc_changelog), sharing no code with the pipeline's computation.

For an entity and an as-of time T: take, for every row the entity ever owned, the version current at T (its latest
change committed at or before T); keep the versions the entity owns whose event time t satisfies T - W < t <= T;
aggregate. Averages are float8(exact sum) / count, the same two roundings the pipeline promises.

`compare_online` reads every online value of a set of entities (with each view's as-of time) and `compare_offline`
samples offline rows; both return match fractions and every mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.features import ColumnFeature, FeatureView, WindowFeature
from online.client import FeatureClient

CAST = {"int64": "::bigint", "float64": "::numeric::float8", "string": ""}


@dataclass
class Verdict:
    """Compared values (one per feature of every checked entity/row) and each mismatch."""

    compared: int = 0
    mismatches: list[dict] = field(default_factory=list)

    @property
    def match(self) -> float:
        return 1.0 if self.compared == 0 else 1 - len(self.mismatches) / self.compared

    def add(
        self, view: FeatureView, entity_id: int, as_of: datetime | None, served: dict, wanted: dict, where: str
    ) -> None:
        for f in view.features:
            self.compared += 1
            got, want = served.get(f.name), wanted.get(f.name)
            if not (got == want and type(got) is type(want)):
                self.mismatches.append(
                    {
                        "where": where,
                        "view": view.name,
                        "entity": entity_id,
                        "as_of": None if as_of is None else as_of.isoformat(),
                        "feature": f.name,
                        "served": got,
                        "oracle": want,
                    }
                )

    def merge(self, other: Verdict) -> Verdict:
        return Verdict(self.compared + other.compared, self.mismatches + other.mismatches)


def _window_sql(f: WindowFeature, owner: str) -> str:
    event = f"(after->>'{f.table.event_time}')::timestamptz"
    inside = f"{event} > p.t - interval '{int(f.window.total_seconds())} seconds' AND {event} <= p.t"
    value = f"(after->>'{f.column}')::numeric" if f.column else None
    return {
        "count": f"count(*) FILTER (WHERE {inside})",
        "sum": f"coalesce(sum({value}) FILTER (WHERE {inside}), 0)::float8",
        "avg": f"(sum({value}) FILTER (WHERE {inside}))::float8 / nullif(count(*) FILTER (WHERE {inside}), 0)",
        "max": f"(max({value}) FILTER (WHERE {inside}))::float8",
    }[f.aggregate]


def _table_query(table: str, owner: str, features: list[WindowFeature]) -> str:
    """Window features of one table for every probe (id, t): owned rows -> version current at t -> aggregate."""
    return f"""
        WITH probe AS (SELECT DISTINCT id, t FROM unnest(%(ids)s::bigint[], %(ts)s::timestamptz[]) AS p(id, t)),
        owned AS (
            SELECT DISTINCT p.id, p.t, c.row_key FROM probe p JOIN cdc_changelog c
              ON c.source_table = '{table}' AND c.after->>'{owner}' = p.id::text),
        current AS (
            SELECT o.id, o.t, v.after FROM owned o CROSS JOIN LATERAL (
                SELECT after FROM cdc_changelog c WHERE c.source_table = '{table}' AND c.row_key = o.row_key
                AND c.commit_ts <= o.t ORDER BY c.lsn DESC LIMIT 1) v
            WHERE v.after->>'{owner}' = o.id::text)
        SELECT p.id, p.t, {", ".join(_window_sql(f, owner) for f in features)}
        FROM probe p LEFT JOIN current ON current.id = p.id AND current.t = p.t GROUP BY p.id, p.t"""


def _profile_query(view: FeatureView) -> str:
    values = ", ".join(f"(v.after->>'{f.column}'){CAST[f.dtype]}" for f in view.features)
    return f"""
        WITH probe AS (SELECT DISTINCT id, t FROM unnest(%(ids)s::bigint[], %(ts)s::timestamptz[]) AS p(id, t))
        SELECT p.id, p.t, {values} FROM probe p LEFT JOIN LATERAL (
            SELECT after FROM cdc_changelog c WHERE c.source_table = '{view.table.name}' AND c.row_key = p.id
            AND c.commit_ts <= p.t ORDER BY c.lsn DESC LIMIT 1) v ON true"""


def expected(conn, view: FeatureView, probes: list[tuple[int, datetime]]) -> dict[tuple[int, datetime], dict]:
    """The oracle's values of every feature of ``view`` for each probe (entity id, as-of time)."""
    params = {"ids": [i for i, _ in probes], "ts": [t for _, t in probes]}
    out: dict[tuple[int, datetime], dict] = {probe: {} for probe in probes}
    if all(isinstance(f, ColumnFeature) for f in view.features):
        groups = [(_profile_query(view), list(view.features))]
    else:
        tables = dict.fromkeys(f.table.name for f in view.features)
        groups = [
            (_table_query(t, view.entity.join_key, fs), fs)
            for t in tables
            if (fs := [f for f in view.features if f.table.name == t])
        ]
    with conn.cursor() as cur:
        for sql, features in groups:
            cur.execute(sql, params)
            for entity_id, t, *values in cur.fetchall():
                out[(entity_id, t)].update({f.name: v for f, v in zip(features, values, strict=True)})
    return out


def owners(conn, view: FeatureView, low: int, high: int) -> list[int]:
    """Entities in [low, high] that some change of the view's tables ever gave a row (so they have values)."""
    tables = sorted({f.table.name for f in view.features if isinstance(f, WindowFeature)})
    with conn.cursor() as cur:
        if not tables:
            cur.execute(
                "SELECT DISTINCT row_key FROM cdc_changelog WHERE source_table = %s AND row_key BETWEEN %s AND %s",
                (view.table.name, low, high),
            )
        else:
            key = view.entity.join_key
            cur.execute(
                f"SELECT DISTINCT (after->>'{key}')::bigint FROM cdc_changelog WHERE source_table = ANY(%s) "
                f"AND after->>'{key}' ~ '^[0-9]+$' AND (after->>'{key}')::bigint BETWEEN %s AND %s",
                (tables, low, high),
            )
        return sorted(r[0] for r in cur.fetchall())


def compare_online(settings, conn, entity_ranges: dict[str, tuple[int, int]]) -> Verdict:
    """Every online value (read with its view's as-of time) of every entity in the ranges (by join key) that has
    rows, against the oracle at that as-of time. An entity the pipeline never served is a mismatch."""
    verdict = Verdict()
    for view in decl.FEATURE_VIEWS:
        ids = owners(conn, view, *entity_ranges[view.entity.join_key])
        if not ids:
            continue
        client = FeatureClient.for_features(settings, [(view.name, f.name) for f in view.features])
        fetched = client.fetch(ids)
        client.close()
        as_of = [fetched.as_of_row(n)[view.name] for n in range(len(ids))]
        wanted = expected(conn, view, [(i, t) for i, t in zip(ids, as_of, strict=True) if t is not None])
        for n, entity_id in enumerate(ids):
            served = dict(zip([f.name for f in view.features], fetched.row(n), strict=True))
            if as_of[n] is None:
                verdict.add(view, entity_id, None, served, {f.name: "(never served)" for f in view.features}, "online")
            else:
                verdict.add(view, entity_id, as_of[n], served, wanted[(entity_id, as_of[n])], "online")
    return verdict


def compare_offline(
    conn, per_view: int, entity_ranges: dict[str, tuple[int, int]] | None = None, seed: float = 0.5
) -> Verdict:
    """A random sample of ``per_view`` rows of each offline table (within the ranges, if given) against the
    oracle at each row's event timestamp."""
    verdict = Verdict()
    with conn.cursor() as cur:
        cur.execute("SELECT setseed(%s)", (seed,))
        for view in decl.FEATURE_VIEWS:
            key = view.entity.join_key
            where = "" if entity_ranges is None else f"WHERE {key} BETWEEN %s AND %s"
            columns = ", ".join(f.name for f in view.features)
            cur.execute(
                f"SELECT {key}, {decl.EVENT_TIMESTAMP}, {columns} FROM {view.name} {where} ORDER BY random() LIMIT %s",
                (*(entity_ranges or {}).get(key, ()), per_view),
            )
            rows = cur.fetchall()
            wanted = expected(conn, view, [(r[0], r[1]) for r in rows])
            for entity_id, t, *values in rows:
                served = dict(zip([f.name for f in view.features], values, strict=True))
                verdict.add(view, entity_id, t, served, wanted[(entity_id, t)], "offline")
    return verdict


def connect(settings, database: str | None = None):
    return pg_clients.connect(settings, database or settings.offline_db, user=settings.feast_user)
