"""The SQL of the feature state, generated from the one feature declaration (pure: strings only, no clients).

State, in the offline-store database:
- ``stream_<table>``: the current version of every source row the features read (mirror), with the LSN of the
  change that made it and a tombstone for deleted rows. A change is applied only if its LSN is newer than the
  stored one, so duplicates and replays are no-ops and every retraction is taken from the stored version.
- ``stream_entities``: per entity, the as-of time of its last emitted values and when they next change with no
  new event (a row entering or leaving a window), rounded up to the window's hop.
Values are computed from the mirror for exactly the window (T - W, T] at the entity's as-of time T, so count,
sum, average and max are all exact, whatever the order of updates, deletes and owner or event-time moves.
"""

from __future__ import annotations

from dataclasses import dataclass

from cdcf import features as decl
from cdcf.features import EVENT_TIMESTAMP, ColumnFeature, Entity, FeatureView, Table, WindowFeature
from connectors.contracts import Column, row_contracts

ENTITIES_TABLE = "stream_entities"
PG_TYPES = {"long": "BIGINT", "int": "INTEGER", "string": "TEXT", "date": "DATE", "timestamp": "TIMESTAMPTZ"}
TOUCHED = "stream_touched"
DUE = "stream_due"


@dataclass(frozen=True)
class Mirror:
    """What the job keeps of one source table: its key and the columns some feature reads."""

    table: Table
    key: str
    columns: tuple[Column, ...]
    owners: tuple[Entity, ...]  # entities whose values depend on this table's rows

    @property
    def name(self) -> str:
        return f"stream_{self.table.name}"

    @property
    def stage(self) -> str:
        return f"{self.name}_stage"

    @property
    def copy_columns(self) -> tuple[str, ...]:
        return (self.key, "lsn", "deleted", *(c.name for c in self.columns if c.name != self.key))


def mirrors() -> tuple[Mirror, ...]:
    """The tables some feature reads, in declaration order, each with the columns it needs."""
    needed: dict[Table, set[str]] = {}
    owners: dict[Table, list[Entity]] = {}
    for view in decl.FEATURE_VIEWS:
        for feature in view.features:
            table = view.table if isinstance(feature, ColumnFeature) else feature.table
            cols = needed.setdefault(table, set())
            cols.add(view.entity.join_key)
            cols.update(c for c in (getattr(feature, "column", None), table.event_time) if c)
            if view.entity not in owners.setdefault(table, []):
                owners[table].append(view.entity)
    result = []
    for table in decl.TABLES:
        if table in needed:
            contract = row_contracts()[table.name]
            columns = tuple(c for c in contract.columns if c.name in needed[table])
            result.append(Mirror(table, contract.key, columns, tuple(owners[table])))
    return tuple(result)


def _pg_type(column: Column) -> str:
    return f"NUMERIC({column.precision},{column.scale})" if column.kind == "decimal" else PG_TYPES[column.kind]


def ddl() -> list[str]:
    """Statements creating the state tables (idempotent)."""
    statements = []
    for m in mirrors():
        columns = "".join(f", {c.name} {_pg_type(c)}" for c in m.columns if c.name != m.key)
        statements.append(f"CREATE TABLE IF NOT EXISTS {m.name} ({m.key} BIGINT PRIMARY KEY, lsn BIGINT NOT NULL, "
                          f"deleted BOOLEAN NOT NULL{columns})")
        for entity in m.owners:
            if entity.join_key != m.key:
                time_col = f", {m.table.event_time}" if m.table.event_time else ""
                statements.append(f"CREATE INDEX IF NOT EXISTS {m.name}_{entity.join_key} ON {m.name} "
                                  f"({entity.join_key}{time_col}) WHERE NOT deleted")
    statements.append(f"CREATE TABLE IF NOT EXISTS {ENTITIES_TABLE} (entity TEXT NOT NULL, id BIGINT NOT NULL, "
                      f"as_of TIMESTAMPTZ NOT NULL, due_at TIMESTAMPTZ, PRIMARY KEY (entity, id))")
    statements.append(f"CREATE INDEX IF NOT EXISTS {ENTITIES_TABLE}_due ON {ENTITIES_TABLE} (due_at) "
                      "WHERE due_at IS NOT NULL")
    return statements


def session_ddl() -> list[str]:
    """Per-connection temporary tables: staged changes, touched entities, entities to compute."""
    statements = [f"CREATE TEMP TABLE IF NOT EXISTS {m.stage} (LIKE {m.name}) ON COMMIT DELETE ROWS" for m in mirrors()]
    statements.append(f"CREATE TEMP TABLE IF NOT EXISTS {TOUCHED} (entity TEXT, id BIGINT, PRIMARY KEY (entity, id)) "
                      "ON COMMIT DELETE ROWS")
    statements.append(f"CREATE TEMP TABLE IF NOT EXISTS {DUE} (id BIGINT PRIMARY KEY, as_of TIMESTAMPTZ NOT NULL) "
                      "ON COMMIT DELETE ROWS")
    return statements


def apply_changes(m: Mirror) -> str:
    """Move the staged changes of one table into its mirror (newest LSN per row wins, older ones are no-ops) and
    record every entity that owned the row before or owns it after."""
    cols = m.copy_columns
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
    owners = [e for e in m.owners]
    old = ", ".join(f"m.{e.join_key} AS o_{e.join_key}" for e in owners)
    new = ", ".join(f"m.{e.join_key} AS n_{e.join_key}" for e in owners)
    touched = " UNION ".join(
        f"SELECT '{e.name}', o_{e.join_key} FROM old UNION SELECT '{e.name}', n_{e.join_key} FROM new" for e in owners)
    return (
        f"WITH incoming AS (SELECT DISTINCT ON ({m.key}) * FROM {m.stage} ORDER BY {m.key}, lsn DESC), "
        f"old AS (SELECT {old} FROM {m.name} m JOIN incoming i USING ({m.key}) "
        f"WHERE m.lsn < i.lsn AND NOT m.deleted), "
        f"new AS (INSERT INTO {m.name} AS m ({', '.join(cols)}) SELECT {', '.join(cols)} FROM incoming "
        f"ON CONFLICT ({m.key}) DO UPDATE SET {updates} WHERE m.lsn < excluded.lsn RETURNING {new}) "
        f"INSERT INTO {TOUCHED} SELECT * FROM ({touched}) t(entity, id) WHERE id IS NOT NULL ON CONFLICT DO NOTHING"
    )


def due_from_touched(entity: Entity) -> str:
    """Entities touched by this batch, computed at the batch's time %(as_of)s — or just after their last
    emitted as-of time, so that a correction is always newer than the value it replaces."""
    return (f"INSERT INTO {DUE} SELECT t.id, GREATEST(%(as_of)s, e.as_of + interval '1 microsecond') "
            f"FROM {TOUCHED} t LEFT JOIN {ENTITIES_TABLE} e ON e.entity = t.entity AND e.id = t.id "
            f"WHERE t.entity = '{entity.name}'")


def due_from_decay(entity: Entity) -> str:
    """Entities whose windows changed by time passing, up to %(clock)s, at most %(limit)s of them."""
    return (f"INSERT INTO {DUE} SELECT id, GREATEST(due_at, as_of + interval '1 microsecond') FROM {ENTITIES_TABLE} "
            f"WHERE entity = '{entity.name}' AND due_at <= %(clock)s ORDER BY due_at LIMIT %(limit)s")


def views_of(entity: Entity) -> tuple[FeatureView, ...]:
    return tuple(v for v in decl.FEATURE_VIEWS if v.entity == entity)


def compute_view(view: FeatureView) -> str:
    """Compute the view for every entity in the due table at its as-of time, append the rows to the view's
    offline table (idempotent on replay) and return them."""
    key = view.entity.join_key
    names = [f.name for f in view.features]
    if view.table is not None:
        m = _mirror(view.table)
        values = ", ".join(_cast(f"r.{f.column}", f.dtype) for f in view.features)
        source = f"LEFT JOIN {m.name} r ON r.{m.key} = d.id AND NOT r.deleted"
    else:
        values, laterals = _window_values(view)
        source = " ".join(laterals)
    return (
        f"INSERT INTO {view.name} ({key}, {EVENT_TIMESTAMP}, {', '.join(names)}) "
        f"SELECT d.id, d.as_of, {values} FROM {DUE} d {source} "
        f"ON CONFLICT ({key}, {EVENT_TIMESTAMP}) DO UPDATE SET "
        f"{', '.join(f'{n} = excluded.{n}' for n in names)} "
        f"RETURNING {key}, {EVENT_TIMESTAMP}, {', '.join(names)}"
    )


def _window_values(view: FeatureView) -> tuple[str, list[str]]:
    """The select list and one LATERAL aggregate per source table of a view of window features."""
    key = view.entity.join_key
    by_table: dict[Table, list[WindowFeature]] = {}
    for f in view.features:
        by_table.setdefault(f.table, []).append(f)
    laterals, alias = [], {}
    for i, (table, feats) in enumerate(by_table.items()):
        t, widest = table.event_time, max(f.window for f in feats)
        aggs = ", ".join(f"{_aggregate(f, f'r.{t} > d.as_of - {_interval(f.window)}')} AS {f.name}" for f in feats)
        laterals.append(
            f"LEFT JOIN LATERAL (SELECT {aggs} FROM {_mirror(table).name} r WHERE r.{key} = d.id AND NOT r.deleted "
            f"AND r.{t} > d.as_of - {_interval(widest)} AND r.{t} <= d.as_of) s{i} ON true")
        alias.update({f.name: f"s{i}" for f in feats})
    return ", ".join(f"{alias[f.name]}.{f.name}" for f in view.features), laterals


def _aggregate(f: WindowFeature, in_window: str) -> str:
    if f.aggregate == "count":
        return f"count(*) FILTER (WHERE {in_window})"
    inner = f"{f.aggregate}(r.{f.column}) FILTER (WHERE {in_window})"
    return f"coalesce({inner}, 0)::float8" if f.aggregate == "sum" else f"({inner})::float8"


def _cast(expr: str, dtype: str) -> str:
    return {"int64": f"{expr}::bigint", "float64": f"{expr}::float8", "string": f"{expr}::text"}[dtype]


def _interval(window) -> str:
    return f"interval '{int(window.total_seconds())} seconds'"


def record_due(entity: Entity) -> str:
    """Store each computed entity's as-of time and the next time one of its windows changes with no new event:
    a row's event time (it enters) or event time + window (it leaves), rounded up to the window's hop."""
    candidates = []
    for table, windows in _windows_by_table(entity).items():
        t, m = table.event_time, _mirror(table)
        for window, hop in windows:
            hop_s = int(hop.total_seconds())
            moment = (f"(SELECT min(CASE WHEN r.{t} > d.as_of THEN r.{t} ELSE r.{t} + {_interval(window)} END) "
                      f"FROM {m.name} r WHERE r.{entity.join_key} = d.id AND NOT r.deleted "
                      f"AND r.{t} > d.as_of - {_interval(window)})")
            candidates.append(f"to_timestamp(ceil(extract(epoch FROM {moment}) / {hop_s}) * {hop_s})")
    due = f"LEAST({', '.join(candidates)})" if candidates else "NULL::timestamptz"
    return (f"INSERT INTO {ENTITIES_TABLE} (entity, id, as_of, due_at) SELECT '{entity.name}', d.id, d.as_of, {due} "
            f"FROM {DUE} d ON CONFLICT (entity, id) DO UPDATE SET as_of = excluded.as_of, due_at = excluded.due_at")


def _windows_by_table(entity: Entity) -> dict[Table, list[tuple]]:
    result: dict[Table, list[tuple]] = {}
    for view in views_of(entity):
        for f in view.features:
            if isinstance(f, WindowFeature) and (f.window, f.hop) not in result.setdefault(f.table, []):
                result[f.table].append((f.window, f.hop))
    return result


def _mirror(table: Table) -> Mirror:
    (m,) = [m for m in mirrors() if m.table == table]
    return m
