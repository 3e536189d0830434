"""Point-in-time training sets from the offline store.

For each row of an entity dataframe (join key + ``event_timestamp``), each requested feature's value as of that
time: the offline row with the latest as-of time at or before it (never after: no future value leaks). The offline
rows are the ones the streaming job served and the backfill rebuilds, so a training value is what the online path
served as of that time. Postgres does the join (an index probe per row and view, on the offline tables' primary
keys); the result comes back through COPY as Arrow.

Labels come from the change history in the same query: ``txn_next_7d`` is whether the user has a transaction with
event time in (T, T + 7 days], as the history stands now (so labels use later corrections, features never do).
The fraud label is per transaction (``labelled_transactions``): a chargeback reported within 60 days of it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.changelog import TABLE as CHANGELOG
from cdcf.errors import PipelineError
from cdcf.features import EVENT_TIMESTAMP, Entity, FeatureView, Table
from cdcf.settings import Settings
from offline.writer import csv_buffer

ENTITY_ROWS = "training_entity_rows"


class TrainingSetError(PipelineError):
    """The request cannot be served: unknown features, a missing key or timestamp column, mixed entities."""


@dataclass(frozen=True)
class Label:
    """Whether the entity owns a row of ``table`` with event time in (T, T + horizon]."""

    name: str
    entity: Entity
    table: Table
    horizon: timedelta


LABELS = {label.name: label for label in (Label("txn_next_7d", decl.USER, decl.TRANSACTIONS, timedelta(days=7)),)}


CHARGEBACK_HORIZON = timedelta(days=60)


def labelled_transactions(settings: Settings) -> pd.DataFrame:
    """Every transaction as the history stands now (its latest version; deleted ones left out) with ``fraud``:
    whether a chargeback of it was reported within ``CHARGEBACK_HORIZON`` of its ``created_at``. Columns txn_id,
    user_id, product_id, amount, merchant, created_at (UTC), fraud."""
    latest = "SELECT DISTINCT ON (row_key) after FROM {log} WHERE source_table = '{table}' ORDER BY row_key, lsn DESC"
    horizon = int(CHARGEBACK_HORIZON.total_seconds())
    query = (
        f"WITH txn AS ({latest.format(log=CHANGELOG, table=decl.TRANSACTIONS.name)}), "
        # each transaction's first chargeback (one join, not a lookup per transaction)
        "cb AS (SELECT (after->>'txn_id')::bigint AS txn_id, min((after->>'reported_at')::timestamptz) AS reported_at "
        f"FROM ({latest.format(log=CHANGELOG, table=decl.CHARGEBACKS.name)}) c WHERE after IS NOT NULL GROUP BY 1) "
        "SELECT (t.after->>'txn_id')::bigint AS txn_id, (t.after->>'user_id')::bigint AS user_id, "
        "(t.after->>'product_id')::bigint AS product_id, "
        "(t.after->>'amount')::float8 AS amount, t.after->>'merchant' AS merchant, "
        "(t.after->>'created_at')::timestamptz AS created_at, coalesce(cb.reported_at <= "
        f"(t.after->>'created_at')::timestamptz + interval '{horizon} seconds', false) AS fraud "
        "FROM txn t LEFT JOIN cb ON cb.txn_id = (t.after->>'txn_id')::bigint WHERE t.after IS NOT NULL ORDER BY 1"
    )
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(query)
            frame = pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def resolve(features: str | Sequence[str]) -> list[tuple[FeatureView, list[str]]]:
    """A feature service name, or "view:feature" references, as (view, feature names) in request order."""
    if isinstance(features, str):
        services = {s.name: s for s in decl.FEATURE_SERVICES}
        if features not in services:
            raise TrainingSetError(f"unknown feature service {features!r}; known: {', '.join(services)}")
        return [(v, [f.name for f in v.features]) for v in services[features].views]
    views = {v.name: v for v in decl.ALL_VIEWS}
    chosen: dict[str, list[str]] = {}
    for ref in features:
        view_name, _, feature = ref.partition(":")
        view = views.get(view_name)
        if view is None or feature not in {f.name for f in view.features}:
            raise TrainingSetError(
                f"unknown feature {ref!r}: write it as view:feature, e.g. user_activity_features:txn_count_7d"
            )
        chosen.setdefault(view_name, []).append(feature)
    return [(views[name], names) for name, names in chosen.items()]


def load_entities(source: pd.DataFrame | str | Path, settings: Settings | None = None) -> pd.DataFrame:
    """An entity dataframe from a DataFrame, a Parquet or CSV file, or a table of the offline database."""
    if isinstance(source, pd.DataFrame):
        return source
    path = Path(source)
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, parse_dates=[EVENT_TIMESTAMP])
    if settings is None or not str(source).replace("_", "").isalnum():
        raise TrainingSetError(f"{source}: expected a .parquet or .csv file, or the name of an offline-store table")
    with pg_clients.offline_session(settings) as conn:
        frame = pd.read_sql_query(f"SELECT * FROM {source}", conn)  # noqa: S608 - a checked identifier
    return frame


def training_set(
    settings: Settings,
    entities: pd.DataFrame | str | Path,
    features: str | Sequence[str],
    *,
    labels: Sequence[str] = (),
    out: Path | None = None,
) -> pa.Table:
    """The point-in-time training set: the entity rows in their order, with each feature and label appended.
    Features of several entities (recommendation_v1: user and product) need rows carrying every join key; each
    view is joined on its own."""
    wanted = resolve(features)
    keys = list(dict.fromkeys(view.entity for view, _ in wanted))
    unknown = [name for name in labels if name not in LABELS or LABELS[name].entity not in keys]
    if unknown:
        raise TrainingSetError(
            f"unknown label(s) {', '.join(unknown)} for {', '.join(e.name for e in keys)}; known: {', '.join(LABELS)}"
        )
    frame = load_entities(entities, settings)
    missing = [c for c in [e.join_key for e in keys] + [EVENT_TIMESTAMP] if c not in frame.columns]
    if missing:
        raise TrainingSetError(f"the entity rows lack column(s) {', '.join(missing)}")
    # the store keeps microseconds: a row at r is at or before t exactly when r <= t floored to the microsecond
    stamps = pd.to_datetime(frame[EVENT_TIMESTAMP], utc=True).dt.floor("us")
    rows = pa.table(
        {
            **{e.join_key: pa.array(frame[e.join_key], pa.int64()) for e in keys},
            EVENT_TIMESTAMP: pa.array(stamps, pa.timestamp("us", "UTC")),
        }
    )
    chosen = [LABELS[name] for name in labels]
    query, schema = _query(keys, wanted, chosen)
    columns = ", ".join(e.join_key for e in keys)
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute("SET jit = off; SET TimeZone = 'UTC'")
            for label in chosen:
                cur.execute(_label_table(label))
                cur.execute(f"CREATE INDEX ON label_{label.name} (owner, event_time)")
            cur.execute(
                f"CREATE TEMP TABLE {ENTITY_ROWS} (row_id BIGSERIAL PRIMARY KEY, "
                f"{', '.join(f'{e.join_key} BIGINT' for e in keys)}, {EVENT_TIMESTAMP} TIMESTAMPTZ) "
                "ON COMMIT DROP"
            )
            cur.copy_expert(
                f"COPY {ENTITY_ROWS} ({columns}, {EVENT_TIMESTAMP}) FROM STDIN WITH (FORMAT csv)", csv_buffer(rows)
            )
            cur.execute(f"ANALYZE {ENTITY_ROWS}")
            result = io.BytesIO()
            cur.copy_expert(f"COPY ({query}) TO STDOUT WITH (FORMAT csv)", result)
    result.seek(0)
    table = pa_csv.read_csv(
        result,
        read_options=pa_csv.ReadOptions(column_names=schema.names),
        convert_options=pa_csv.ConvertOptions(
            column_types=schema,
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out)
    return table


def _query(
    keys: list[Entity], wanted: list[tuple[FeatureView, list[str]]], labels: list[Label]
) -> tuple[str, pa.Schema]:
    ts = EVENT_TIMESTAMP
    columns = [f"e.{e.join_key}" for e in keys] + [f"e.{ts}"]
    fields = [pa.field(e.join_key, pa.int64()) for e in keys] + [pa.field(ts, pa.timestamp("us", "UTC"))]
    joins = []
    for n, (view, names) in enumerate(wanted):
        key = view.entity.join_key
        dtypes = {f.name: f.dtype for f in view.features}
        joins.append(
            f"LEFT JOIN LATERAL (SELECT {', '.join(names)} FROM {view.offline_table} v WHERE "
            f"v.{key} = e.{key} AND v.{ts} <= e.{ts} ORDER BY v.{ts} DESC LIMIT 1) f{n} ON true"
        )
        columns += [f"f{n}.{name}" for name in names]
        fields += [pa.field(name, pa.type_for_alias(dtypes[name])) for name in names]
    for label in labels:
        horizon = int(label.horizon.total_seconds())
        columns.append(
            f"EXISTS (SELECT 1 FROM label_{label.name} l WHERE l.owner = e.{label.entity.join_key} AND "
            f"l.event_time > e.{ts} AND l.event_time <= e.{ts} + interval '{horizon} seconds') "
            f"AS {label.name}"
        )
        fields.append(pa.field(label.name, pa.bool_()))
    query = f"SELECT {', '.join(columns)} FROM {ENTITY_ROWS} e {' '.join(joins)} ORDER BY e.row_id"
    return query, pa.schema(fields)


def _label_table(label: Label) -> str:
    """The owner and event time of every row of the label's table as the history stands now (its latest
    version, deletes left out)."""
    return (
        f"CREATE TEMP TABLE label_{label.name} ON COMMIT DROP AS SELECT owner, event_time FROM ("
        f"SELECT DISTINCT ON (row_key) (after->>'{label.entity.join_key}')::bigint AS owner, "
        f"(after->>'{label.table.event_time}')::timestamptz AS event_time FROM {CHANGELOG} "
        f"WHERE source_table = '{label.table.name}' ORDER BY row_key, lsn DESC) latest WHERE owner IS NOT NULL"
    )
