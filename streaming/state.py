"""The feature state in Postgres (the SQL is in streaming.sql): apply a batch of changes or the windows due to
decay, in one transaction that also appends the offline rows and writes Redis before it commits.

Crash safety: if the job dies before COMMIT, nothing of the batch is stored and the replayed batch computes the
same rows at the same as-of times (Redis gets the same values again). If it dies after COMMIT, the replayed
changes are older than or equal to the mirror's LSNs: no-ops, nothing touched, nothing written twice.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from datetime import datetime

import psycopg2
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from cdcf import features as decl
from cdcf.settings import Settings
from streaming import sql
from streaming.online import OnlineWriter

log = logging.getLogger(__name__)


@dataclass
class Written:
    changes: int = 0
    entities: int = 0
    rows: int = 0
    as_of: datetime | None = None


class FeatureState:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.online = OnlineWriter(settings)
        self.mirrors = sql.mirrors()
        self.db = self._connect()
        self._apply = {m.table.name: sql.apply_changes(m) for m in self.mirrors}
        self._emit_sql = {e.name: sql.emit(e) for e in decl.ENTITIES}
        self._from_touched = {e.name: sql.due_from_touched(e) for e in decl.ENTITIES}
        self._from_decay = {e.name: sql.due_from_decay(e) for e in decl.ENTITIES}

    def apply(self, changes: pa.Table) -> Written:
        """Apply a batch of change rows (streaming.changes.change_rows) and emit each touched entity's values as
        of the commit of its latest change."""
        if changes.num_rows == 0:
            return Written()
        as_of = pc.max(changes["commit_ts"]).as_py()
        with self._cursor() as cur, self.db:
            for m in self.mirrors:
                rows = changes.filter(pc.equal(changes["table"], m.table.name))
                if rows.num_rows:
                    staged = pa.table([rows["key" if c == m.key else c] for c in m.copy_columns],
                                      names=list(m.copy_columns))
                    cur.copy_expert(f"COPY {m.stage} ({', '.join(m.copy_columns)}) FROM STDIN WITH (FORMAT csv)",
                                    csv_buffer(staged))
                    cur.execute(self._apply[m.table.name])
            written = self._emit(cur, lambda entity: cur.execute(self._from_touched[entity]))
        written.changes, written.as_of = changes.num_rows, as_of
        return written

    def decay(self, clock: datetime, limit: int = 20_000) -> Written:
        """Emit the entities whose windows changed by time alone, up to ``clock``."""
        with self._cursor() as cur, self.db:
            written = self._emit(cur, lambda entity: cur.execute(self._from_decay[entity],
                                                                 {"clock": clock, "limit": limit}))
        written.as_of = clock if written.entities else None
        return written

    def _emit(self, cur, select_due) -> Written:
        written = Written()
        for entity in decl.ENTITIES:
            cur.execute(f"DELETE FROM {sql.DUE}")
            select_due(entity.name)
            if cur.rowcount == 0:
                continue
            written.entities += cur.rowcount
            cur.execute(self._emit_sql[entity.name])
            rows = cur.fetchall()
            first = 2
            for view in sql.views_of(entity):  # each view's slice of the row: id, as-of time, its features
                last = first + len(view.features)
                written.rows += self.online.write(view, [(r[0], r[1], *r[first:last]) for r in rows])
                first = last
        return written

    def _connect(self):
        """A connection with the state tables and this session's temporary tables in place."""
        s = self.settings
        db = psycopg2.connect(s.pg_dsn(s.offline_db, user=s.feast_user))
        with db, db.cursor() as cur:
            # many short statements whose plans look costly: JIT compilation took 4-8x their run time
            cur.execute("SET jit = off")
            for statement in sql.ddl() + sql.session_ddl():
                cur.execute(statement)
        return db

    def _cursor(self):
        """A cursor in a new transaction, reconnecting first if the database went away (a restart, a kill)."""
        if self.db.closed:
            log.warning("reconnecting to the state database")
            self.db = self._connect()
        return self.db.cursor()

    def close(self) -> None:
        self.db.close()
        self.online.close()


def csv_buffer(table: pa.Table) -> io.BytesIO:
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    out.seek(0)
    return out

