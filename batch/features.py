"""Feature values at every as-of time, from row versions (pure: DataFrames in, DataFrames out).

SPEC section 4 over versions (batch.history): a version owned by entity e, with event time t, counts in e's window W
at every T with ``valid_from <= T < valid_to`` and ``t <= T < t + W``. So each version contributes over one
interval [a, b) per window, and a feature's value at T is:
- count, sum, average: a running sum of +value at a and -value at b, read at T (exact: longs and decimals);
- max: the largest value among the intervals holding T (an interval join, bucketed by day).

The as-of times are those the streaming job emits at: the commit of every change to a row the entity owns before
or after it, and the moments a window changes with no event (a row entering at its event time, or leaving at
t + W), rounded up to the window's hop. Every view of the entity gets a row at each of them, as in streaming.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import reduce

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from cdcf.features import Entity, WindowFeature
from cdcf.sources import event_tables, features_of, source_of, sources, views_of

NEVER = 2**62  # valid_to of a version still current
DAY_US = 86_400_000_000


@dataclass(frozen=True)
class Scope:
    """Which as-of times to compute: all entities in [start_us, end_us), and the ``touched`` entities (id,
    start_us) from their own, earlier start."""

    start_us: int | None
    end_us: int
    touched: DataFrame | None = None


def _us(delta) -> int:
    return int(delta.total_seconds() * 1_000_000)


def _ceil(col, hop_us: int):
    return F.ceil(col / F.lit(hop_us)).cast("long") * F.lit(hop_us)


def _live(versions: DataFrame, entity: Entity) -> DataFrame:
    return versions.where(~F.col("deleted") & F.col(entity.join_key).isNotNull()) \
        .withColumn("id", F.col(entity.join_key)).withColumn("valid_to", F.coalesce("valid_to", F.lit(NEVER)))


def points(entity: Entity, versions: dict[str, DataFrame]) -> DataFrame:
    """Every as-of time of the entity: ``id, t``."""
    found = []
    for m in sources():
        if entity not in m.owners:
            continue
        live = _live(versions[m.table.name], entity)
        found.append(live.select("id", F.col("valid_from").alias("t")))
        found.append(live.where(F.col("valid_to") < NEVER).select("id", F.col("valid_to").alias("t")))
    for table, feats in event_tables(entity).items():
        live = _live(versions[table.name], entity)
        t = F.col(table.event_time)
        entering_hop = min(_us(f.hop) for f in feats)  # streaming takes the earliest window change
        edges = [(t, entering_hop)] + [(t + F.lit(window), hop)
                                       for window, hop in sorted({(_us(f.window), _us(f.hop)) for f in feats})]
        for edge, hop in edges:
            # an edge inside the version's life; if the version ends before the hop does, its end is the emit
            at = _ceil(edge, hop)
            inside = (edge > F.col("valid_from")) & (at < F.col("valid_to"))
            found.append(live.where(inside).select("id", at.alias("t")))
    return reduce(DataFrame.unionByName, found).distinct()


def in_scope(pts: DataFrame, scope: Scope) -> DataFrame:
    ends = F.col("t") < scope.end_us
    if scope.touched is None:
        return pts.where(ends & (F.col("t") >= scope.start_us)) if scope.start_us is not None else pts.where(ends)
    start = F.coalesce("start_us", F.lit(scope.start_us if scope.start_us is not None else NEVER))
    return pts.join(F.broadcast(scope.touched), "id", "left").where(ends & (F.col("t") >= start)).select("id", "t")


def values(entity: Entity, versions: dict[str, DataFrame], pts: DataFrame) -> DataFrame:
    """``id, t`` and every feature of the entity (``features_of`` order) at each point of ``pts``."""
    feats = features_of(entity)
    running = [f for f in feats if isinstance(f, WindowFeature) and f.aggregate != "max"]
    deltas = {f.name: _delta_columns(f) for f in running}
    columns = [c for cols in deltas.values() for c in cols]
    profile_views = [v for v in views_of(entity) if v.table is not None]
    profile = [f for v in profile_views for f in v.features]

    def row(frame: DataFrame, t, kind: int, lsn, given: dict, image=None) -> DataFrame:
        cells = [F.col("id"), t.alias("t"), F.lit(kind).alias("kind"), lsn.alias("lsn")]
        cells += [given.get(name, F.lit(None).cast(dtype)).alias(name) for name, dtype in columns]
        cells.append((image if image is not None else F.lit(None).cast(_image_type(profile))).alias("image"))
        return frame.select(*cells)

    events = [row(pts, F.col("t"), 1, F.lit(0), {})]
    for table, table_features in event_tables(entity).items():
        mine = [f for f in table_features if f.aggregate != "max"]
        if not mine:
            continue
        live = _live(versions[table.name], entity)
        t = F.col(table.event_time)
        for window in sorted({f.window for f in mine}):
            spans = live.select("id", F.greatest("valid_from", t).alias("a"),
                                F.least("valid_to", t + F.lit(_us(window))).alias("b"),
                                *[F.col(f.column) for f in mine if f.column]).where(F.col("a") < F.col("b"))
            same = [f for f in mine if f.window == window]
            for sign, at in ((1, "a"), (-1, "b")):
                given = {name: cell for f in same for name, cell in _delta_cells(f, sign)}
                events.append(row(spans, F.col(at), 0, F.lit(0), given))
    for view in profile_views:
        m = source_of(view.table)
        image = F.when(~F.col("deleted"), F.struct(*[F.col(f.column).cast(_SPARK[f.dtype]).alias(f.name)
                                                     for f in view.features])) \
            .otherwise(F.struct(*[F.lit(None).cast(_SPARK[f.dtype]).alias(f.name) for f in view.features]))
        events.append(row(versions[m.table.name].withColumn("id", F.col("key")), F.col("valid_from"), 0,
                          F.col("lsn"), {}, image))
    so_far = Window.partitionBy("id").orderBy("t", "kind", "lsn").rowsBetween(Window.unboundedPreceding, 0)
    running_totals = [F.sum(name).over(so_far).alias(name) for name, _ in columns]
    summed = reduce(DataFrame.unionByName, events).select(
        "id", "t", "kind", *running_totals, F.last("image", ignorenulls=True).over(so_far).alias("image"))
    at_points = summed.where(F.col("kind") == 1)
    out = {f.name: _finish(f) for f in running}
    out.update({f.name: F.col("image")[f.name].cast(_SPARK[f.dtype]) for f in profile})
    result = at_points.select("id", "t", *[e.alias(n) for n, e in out.items()])
    for f in feats:
        if isinstance(f, WindowFeature) and f.aggregate == "max":
            result = result.join(_maxima(f, entity, versions, pts), ["id", "t"], "left")
    return result.select("id", "t", *[f.name for f in feats])


_SPARK = {"int64": "long", "float64": "double", "string": "string"}


def _image_type(profile) -> str:
    fields = ", ".join(f"{f.name}: {_SPARK[f.dtype]}" for f in profile) or "none: int"
    return f"struct<{fields}>"


def _delta_columns(f: WindowFeature) -> list[tuple[str, str]]:
    if f.aggregate == "count":
        return [(f"{f.name}__n", "long")]
    if f.aggregate == "sum":
        return [(f"{f.name}__s", "decimal(38,2)")]
    return [(f"{f.name}__s", "decimal(38,2)"), (f"{f.name}__n", "long")]


def _delta_cells(f: WindowFeature, sign: int):
    for name, _ in _delta_columns(f):
        if name.endswith("__n"):
            present = F.lit(1) if f.column is None else F.col(f.column).isNotNull().cast("long")
            yield name, (present * F.lit(sign)).cast("long")
        else:
            yield name, (F.col(f.column) * F.lit(sign)).cast("decimal(38,2)")


def _finish(f: WindowFeature):
    """The feature at a point from its running totals, with the same roundings as the streaming SQL."""
    n, s = F.col(f"{f.name}__n"), F.col(f"{f.name}__s")
    if f.aggregate == "count":
        return F.coalesce(n, F.lit(0)).cast("long")
    if f.aggregate == "sum":
        return F.coalesce(s, F.lit(0)).cast("double")
    return F.when(n > 0, s.cast("double") / n.cast("double"))


def _maxima(f: WindowFeature, entity: Entity, versions: dict[str, DataFrame], pts: DataFrame) -> DataFrame:
    """``id, t, <f>``: the largest value among the intervals [a, b) that hold each point."""
    live = _live(versions[f.table.name], entity)
    t = F.col(f.table.event_time)
    spans = live.select("id", F.greatest("valid_from", t).alias("a"),
                        F.least("valid_to", t + F.lit(_us(f.window))).alias("b"), F.col(f.column).alias("x")) \
        .where((F.col("a") < F.col("b")) & F.col("x").isNotNull())
    spans = spans.withColumn("day", F.explode(F.sequence(F.floor(F.col("a") / DAY_US),
                                                         F.floor((F.col("b") - 1) / DAY_US))))
    at = pts.withColumn("day", F.floor(F.col("t") / DAY_US))
    held = at.join(spans, ["id", "day"]).where((F.col("a") <= F.col("t")) & (F.col("t") < F.col("b")))
    return held.groupBy("id", "t").agg(F.max("x").cast("double").alias(f.name))
