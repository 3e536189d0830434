"""An independent oracle for served feature values: docs/semantics.md#windows computed in plain Python from the change
history the archiver keeps (cdc_changelog), never from the streaming job's state.

The value of a window feature as of T aggregates, over the version of each row current at T (its latest change
committed at or before T), the rows owned by the entity whose event time t satisfies T - W < t <= T.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from cdcf import pg_clients
from cdcf.features import ColumnFeature, FeatureView, WindowFeature


def current_rows(settings, table: str, owner: str, owner_id: int, as_of: datetime) -> list[dict[str, Any]]:
    """The versions current at ``as_of`` of every row of ``table`` that ``owner_id`` ever owned."""
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT row_key, lsn, after FROM cdc_changelog WHERE source_table = %(t)s AND commit_ts <= %(T)s "
                "AND row_key IN (SELECT row_key FROM cdc_changelog WHERE source_table = %(t)s "
                "AND (after->>%(o)s = %(id)s OR before->>%(o)s = %(id)s))",
                {"t": table, "T": as_of, "o": owner, "id": str(owner_id)},
            )
            changes = cur.fetchall()
    latest: dict[int, tuple[int, Any]] = {}
    for key, lsn, after in changes:
        if key not in latest or lsn > latest[key][0]:
            latest[key] = (lsn, after)
    return [after for _, after in latest.values() if after is not None and after.get(owner) == owner_id]


def expected(settings, view: FeatureView, entity_id: int, as_of: datetime) -> dict[str, Any]:
    """Every feature of ``view`` for ``entity_id`` as of ``as_of``."""
    key = view.entity.join_key
    if all(isinstance(f, ColumnFeature) for f in view.features):
        rows = current_rows(settings, view.table.name, key, entity_id, as_of)
        row = rows[0] if rows else {}
        return {f.name: _typed(row.get(f.column), f.dtype) for f in view.features}
    values = {}
    for f in view.features:
        rows = current_rows(settings, f.table.name, key, entity_id, as_of)
        inside = [r for r in rows if as_of - f.window < datetime.fromisoformat(r[f.table.event_time]) <= as_of]
        numbers = [Decimal(str(r[f.column])) for r in inside] if f.column else []
        values[f.name] = _aggregate(f, inside, numbers)
    return values


def _aggregate(f: WindowFeature, rows: list, numbers: list[Decimal]) -> Any:
    if f.aggregate == "count":
        return len(rows)
    if f.aggregate == "sum":
        return float(sum(numbers, Decimal(0)))
    if not numbers:
        return None
    # an average is float(exact sum) / count: the pipeline computes it with the same two roundings
    return float(max(numbers)) if f.aggregate == "max" else float(sum(numbers)) / len(numbers)


def _typed(value: Any, dtype: str) -> Any:
    if value is None:
        return None
    return {"int64": int, "float64": lambda v: float(Decimal(str(v))), "string": str}[dtype](value)


def mismatches(view: FeatureView, served: dict[str, Any], wanted: dict[str, Any]) -> dict[str, tuple]:
    """Features whose served value differs from the oracle's, to the bit and the type."""
    return {
        f.name: (served[f.name], wanted[f.name])
        for f in view.features
        if not (served[f.name] == wanted[f.name] and type(served[f.name]) is type(wanted[f.name]))
    }
