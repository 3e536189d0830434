"""What the pipeline reads, derived from the feature declaration (cdcf/features.py) and the row contracts
(schemas/): per entity its views and features, its event tables and profile table, and per source table the
columns some feature reads and the entities its rows belong to. Pure: shared by streaming, batch and tests."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from cdcf import features as decl
from cdcf.contracts import Column, row_contracts
from cdcf.features import ColumnFeature, Entity, FeatureView, Table, WindowFeature


@dataclass(frozen=True)
class Source:
    """What the pipeline keeps of one source table: its key and the columns some feature reads."""

    table: Table
    key: str
    columns: tuple[Column, ...]
    owners: tuple[Entity, ...]  # entities whose values depend on this table's rows


@cache
def sources() -> tuple[Source, ...]:
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
            result.append(Source(table, contract.key, columns, tuple(owners[table])))
    return tuple(result)


def source_of(table: Table) -> Source:
    (s,) = [s for s in sources() if s.table == table]
    return s


def views_of(entity: Entity) -> tuple[FeatureView, ...]:
    return tuple(v for v in decl.FEATURE_VIEWS if v.entity == entity)


def features_of(entity: Entity) -> list:
    """Every feature of the entity's views, in declaration order."""
    return [f for view in views_of(entity) for f in view.features]


def event_tables(entity: Entity) -> dict[Table, list[WindowFeature]]:
    """The entity's window features grouped by source table, in declaration order."""
    result: dict[Table, list[WindowFeature]] = {}
    for f in features_of(entity):
        if isinstance(f, WindowFeature):
            result.setdefault(f.table, []).append(f)
    return result


def profile_table(entity: Entity) -> Table | None:
    """The entity's own table, whose current row gives its column features (None if it has none)."""
    tables = {v.table for v in views_of(entity) if v.table is not None}
    if len(tables) > 1:
        raise ValueError(f"entity {entity.name} has column features from several tables")
    return next(iter(tables), None)
