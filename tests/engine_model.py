"""The window engine's pure-Python twin, for tests: the same promises as cdcf/engine/src/ (FeatureProcessor,
EntityCore, TableCore), written the plain way: brute force over each entity's rows, no tiles.

Fed decoded changes batch by batch, with the watermark (the clock) each batch ran under, it gives every entity's
emits in order: (as-of microseconds, decay?, {feature: value}). The rules it states:
- a change reaches the entity its row belonged to before (which loses the row, unless it stays) and the one it
  belongs to after; it applies if its LSN is newer than the one that entity last saw for the row;
- gated, a change waits until the clock has reached its commit time; ungated, it applies on arrival; gated, a batch's
  clock is the watermark after it (its own offset commits count), ungated the watermark it ran under;
- an entity with a change in a batch, or whose timer the watermark has passed, advances: in time order, each decay
  moment the clock has reached is emitted as of that moment (or just after the last emit), and the changes allowed
  are applied and emitted once per run between decay moments, as of the run's latest applied commit (or just after
  the last emit, if that is later); then its timer is set at its next decay moment or, with changes waiting, once
  the watermark is within LOOKAHEAD_MS of the oldest (and not in this batch);
- a row dated at or before (T - widest window) at apply time, or in an hour wholly before it at an emit, is kept
  only as its LSN (for a day of commit time, if it changed recently), never as a row.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from cdcf import features as decl
from cdcf.contracts import row_contracts
from cdcf.decoder import Change
from cdcf.features import ColumnFeature, Entity, WindowFeature
from cdcf.sources import event_tables, features_of, profile_table, sources

HOUR = 3_600_000_000
LOOKAHEAD_MS = 1000  # FeatureProcessor.LOOKAHEAD_MS
HORIZON = 24 * HOUR


@dataclass
class Row:
    lsn: int
    commit: int
    present: bool
    event: int = 0
    values: dict | None = None


def _us(at) -> int:
    return int(at.timestamp()) * 1_000_000 + at.microsecond


def _window_us(f: WindowFeature) -> int:
    return int(f.window.total_seconds()) * 1_000_000


class Model:
    def __init__(self, gated: bool = False) -> None:
        self.gated = gated
        self.rows: dict[tuple, dict[tuple, Row]] = defaultdict(dict)  # entity key -> (table, row key) -> Row
        self.profile: dict[tuple, Row] = {}
        self.last: dict[tuple, int] = {}
        self.due: dict[tuple, int | None] = {}
        self.waiting: dict[tuple, list] = defaultdict(list)  # entity key -> (change, owns) not yet applied
        self.timer: dict[tuple, int | None] = {}  # entity key -> the timer set (ms)
        self.tombs: dict[tuple, list[tuple]] = defaultdict(list)  # entity key -> (table, row key, commit)
        self.emits: dict[tuple, list] = defaultdict(list)

    def batch(self, changes: list[Change], watermark_us: int | None, after_us: int | None = None) -> None:
        """One micro-batch: its changes, the watermark it ran under and (gated) the watermark after it."""
        watermark = watermark_us or 0
        clock = max(watermark, after_us or 0) if self.gated else watermark
        routed = defaultdict(list)
        for c in changes:
            for key, owns in route(c):
                routed[key].append((c, owns))
        for key, items in routed.items():
            self.waiting[key] += items
            self._advance(key, clock, watermark)
        for key, timer_ms in sorted(self.timer.items()):
            if key not in routed and timer_ms is not None and timer_ms * 1000 <= watermark:
                self._advance(key, clock, watermark)

    def _advance(self, key: tuple, clock: int, watermark: int) -> None:
        items = sorted(self.waiting[key], key=lambda item: (_us(item[0].commit_ts), item[0].lsn))
        until = clock if self.gated else float("inf")
        while True:
            commit = _us(items[0][0].commit_ts) if items else float("inf")
            due = self.due.get(key)
            if due is not None and due <= clock and due < commit:
                self._emit(key, max(due, self.last[key] + 1), decay=True)
                continue
            if not items or commit > until:
                break
            limit = min(until, due) if due is not None and due <= clock else until
            run = [item for item in items if _us(item[0].commit_ts) <= limit]
            items = items[len(run) :]
            self._apply(key, sorted(run, key=lambda item: item[0].lsn))
        self.waiting[key] = items
        due = self.due.get(key)
        timers = [-(-due // 1000)] if due is not None else []
        if items:
            timers.append(max(watermark // 1000 + 1, -(-_us(items[0][0].commit_ts) // 1000) - LOOKAHEAD_MS))
        self.timer[key] = min(timers, default=None)

    def _apply(self, key: tuple, items: list) -> None:
        entity = _entity(key[0])
        horizon_t = max([c.commit_ts for c, _ in items], default=None)
        horizon_t = _us(horizon_t) if self.last.get(key) is None else max(self.last[key] + 1, _us(horizon_t))
        applied = None
        profile = profile_table(entity)
        for c, owns in items:
            commit = _us(c.commit_ts)
            if profile is not None and c.table == profile.name:
                stored = self.profile.get(key)
                if stored is not None and stored.lsn >= c.lsn:
                    continue
                self.profile[key] = Row(c.lsn, commit, owns, values=dict(c.after) if owns else None)
            else:
                table = next(t for t in event_tables(entity) if t.name == c.table)
                stored = self.rows[key].get((c.table, c.key))
                if stored is not None and stored.lsn >= c.lsn:
                    continue
                cutoff = horizon_t - _widest(entity, table)
                if owns and _us(c.after[table.event_time]) > cutoff:
                    self.rows[key][(c.table, c.key)] = Row(
                        c.lsn, commit, True, _us(c.after[table.event_time]), dict(c.after)
                    )
                elif stored is not None:
                    self.rows[key][(c.table, c.key)] = Row(c.lsn, commit, False)
                    self.tombs[key].append((c.table, c.key, commit))
            applied = commit if applied is None else max(applied, commit)
        if applied is not None:
            last = self.last.get(key)
            self._emit(key, applied if last is None else max(applied, last + 1), decay=False)

    def _emit(self, key: tuple, as_of: int, decay: bool) -> None:
        entity = _entity(key[0])
        values, due = {}, None
        for table, feats in event_tables(entity).items():
            live = [r for (t, _), r in self.rows[key].items() if t == table.name and r.present]
            for f in feats:
                values[f.name] = _aggregate(f, [r for r in live if as_of - _window_us(f) < r.event <= as_of])
            entering = min((r.event for r in live if r.event > as_of), default=None)
            for window, hop in {(_window_us(f), int(f.hop.total_seconds()) * 1_000_000) for f in feats}:
                inside = [r.event for r in live if as_of - window < r.event <= as_of]
                moments = [m for m in (entering, min(inside) + window if inside else None) if m is not None]
                if moments:
                    moment = -(-min(moments) // hop) * hop
                    due = moment if due is None else min(due, moment)
            self._evict(key, table, as_of - _widest(entity, table), as_of - HORIZON)
        for t, row_key, _commit in [t for t in self.tombs[key] if t[2] <= as_of - HORIZON]:
            stored = self.rows[key].get((t, row_key))
            if stored is not None and not stored.present:
                del self.rows[key][(t, row_key)]
        self.tombs[key] = [t for t in self.tombs[key] if t[2] > as_of - HORIZON]
        profile = profile_table(entity)
        if profile is not None:
            row = self.profile.get(key)
            for f in features_of(entity):
                if isinstance(f, ColumnFeature):
                    raw = row.values.get(f.column) if row is not None and row.present else None
                    values[f.name] = (
                        None if raw is None else {"int64": int, "float64": float, "string": str}[f.dtype](raw)
                    )
        self.last[key], self.due[key] = as_of, due
        self.emits[key].append((as_of, decay, values))

    def _evict(self, key: tuple, table, cutoff: int, horizon: int) -> None:
        first_kept_hour = cutoff // HOUR * HOUR
        for (t, row_key), r in list(self.rows[key].items()):
            if t == table.name and r.present and r.event // HOUR * HOUR < first_kept_hour:
                if r.commit > horizon:
                    self.rows[key][(t, row_key)] = Row(r.lsn, r.commit, False)
                    self.tombs[key].append((t, row_key, r.commit))
                else:
                    del self.rows[key][(t, row_key)]


def route(c: Change) -> list[tuple[tuple, bool]]:
    """The entities a change concerns: (key, owns) for the owner before (unless it stays) and after."""
    source = next((s for s in sources() if s.table.name == c.table), None)
    if source is None:
        return []
    result = []
    for entity in source.owners:
        before = c.before.get(entity.join_key) if c.before else None
        after = c.after.get(entity.join_key) if c.after and c.op != "d" else None
        if before is not None and before != after:
            result.append(((entity.name, before), False))
        if after is not None:
            result.append(((entity.name, after), True))
    return result


def _entity(name: str) -> Entity:
    return next(e for e in decl.ENTITIES if e.name == name)


def _widest(entity: Entity, table) -> int:
    return max(_window_us(f) for f in event_tables(entity)[table])


def _aggregate(f: WindowFeature, rows: list[Row]):
    if f.aggregate == "count":
        return len(rows)
    numbers = [Decimal(str(r.values[f.column])) for r in rows if r.values[f.column] is not None]
    if f.aggregate == "sum":
        return float(sum(numbers, Decimal(0)))
    if not numbers:
        return None
    return float(max(numbers)) if f.aggregate == "max" else float(sum(numbers, Decimal(0))) / len(numbers)


def scale_of(table: str, column: str) -> int:
    return next(c.scale or 0 for c in row_contracts()[table].columns if c.name == column)
