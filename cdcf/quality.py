"""Value checks of the feature rows the window engine emits (the streaming job runs them on every micro-batch, on
the executors, before writing): what each row must satisfy whatever the source data, so that a violation is a
defect of the pipeline or of the source (logged with its entity and as-of time, counted by check in Prometheus).

- ``negative_count``: a count below zero;
- ``out_of_range``: a value its source column's declared range (``cdcf.features.COLUMN_RANGES``) excludes: an avg
  or max outside the range, a sum outside count times its bounds (or below zero for a column never negative), a
  profile column outside its range;
- ``avg_not_sum_over_count``: an avg that is not the sum over the count of the same window, where the view has all
  three (null exactly when the count is zero).

Nulls are no violation (an empty window has no avg nor max; a profile column may be null): they are counted, for
the null rate."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.compute as pc

from cdcf import features as decl
from cdcf.features import ColumnFeature, Entity, WindowFeature
from cdcf.sources import features_of, views_of

CHECKS = ("negative_count", "out_of_range", "avg_not_sum_over_count")
SAMPLES = 5  # violating rows named per check and batch (the counts hold them all)
TOLERANCE = 1e-9  # relative, for an avg against sum / count (both computed in floating point)


@dataclass
class Verdict:
    values: int = 0  # feature values checked
    nulls: int = 0
    bad: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHECKS, 0))
    samples: list[str] = field(default_factory=list)  # "check: feature=value for <entity> <id> as of <time>"


def check(entity: Entity, rows: pa.Table, verdict: Verdict | None = None) -> Verdict:
    """Check the engine's rows of one entity kind (id, as_of_us and every feature of the kind); add to ``verdict``."""
    verdict = verdict or Verdict()
    for feature in features_of(entity):
        column = rows[feature.name]
        verdict.values += len(column)
        verdict.nulls += column.null_count
    for name, feature, bad in _violations(entity, rows):
        if bad is None:
            continue
        bad = pc.fill_null(bad, False)
        count = pc.sum(pc.cast(bad, pa.int64())).as_py() or 0
        verdict.bad[name] += count
        if count:
            for i in pc.indices_nonzero(bad).to_pylist()[:SAMPLES]:
                as_of = datetime.fromtimestamp(rows["as_of_us"][i].as_py() / 1e6, UTC).isoformat()
                verdict.samples.append(
                    f"{name}: {feature}={rows[feature][i].as_py()} for {entity.name} "
                    f"{rows['id'][i].as_py()} as of {as_of}"
                )
    return verdict


def _violations(entity: Entity, rows: pa.Table):
    """(check, feature, a boolean mask of the rows that fail it, or None) for every check that applies."""
    windows = {
        (f.table.name, f.column, f.window, f.aggregate): f.name
        for f in features_of(entity)
        if isinstance(f, WindowFeature)
    }
    for view in views_of(entity):
        for f in view.features:
            if isinstance(f, ColumnFeature):
                yield (
                    "out_of_range",
                    f.name,
                    _outside(rows[f.name], *decl.COLUMN_RANGES.get((view.table.name, f.column), (None, None))),
                )
            elif isinstance(f, WindowFeature):
                yield from _window_violations(f, rows, windows)


def _window_violations(f: WindowFeature, rows: pa.Table, windows: dict):
    value = rows[f.name]
    low, high = decl.COLUMN_RANGES.get((f.table.name, f.column), (None, None))
    count = windows.get((f.table.name, None, f.window, "count"))  # the same window's count, if the kind has it
    if f.aggregate == "count":
        yield "negative_count", f.name, pc.less(value, 0)
    elif f.aggregate in ("avg", "max"):
        yield "out_of_range", f.name, _outside(value, low, high)
    elif count is not None:  # a sum: within count times the bounds
        n = pc.cast(rows[count], pa.float64())
        yield (
            "out_of_range",
            f.name,
            _outside(
                value, low if low is None else pc.multiply(n, low), high if high is None else pc.multiply(n, high)
            ),
        )
    elif low is not None and low >= 0:
        yield "out_of_range", f.name, pc.less(value, 0)
    total = windows.get((f.table.name, f.column, f.window, "sum"))
    if f.aggregate == "avg" and count is not None and total is not None:
        n = rows[count]
        expected = pc.divide(rows[total], pc.cast(n, pa.float64()))
        off = pc.greater(
            pc.abs(pc.subtract(value, expected)), pc.multiply(pc.max_element_wise(pc.abs(expected), 1.0), TOLERANCE)
        )
        null_when_empty = pc.not_equal(pc.is_null(value), pc.equal(n, 0))
        yield "avg_not_sum_over_count", f.name, pc.or_(pc.fill_null(off, False), null_when_empty)


def _outside(value: pa.ChunkedArray, low, high) -> pa.ChunkedArray | None:
    """Where ``value`` lies outside [low, high] (None: no bound, nothing to check)."""
    masks = [m for m in (low is not None and pc.less(value, low), high is not None and pc.greater(value, high)) if m]
    return pc.or_(*masks) if len(masks) == 2 else masks[0] if masks else None
