"""Arrow tables into PostgreSQL's COPY (CSV), for the jobs that write the offline store."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from cdcf import features as decl
from cdcf.features import EVENT_TIMESTAMP, FeatureView
from cdcf.sources import views_of


def csv_buffer(table: pa.Table) -> io.BytesIO:
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    out.seek(0)
    return out


def by_view(rows: pa.Table) -> Iterator[tuple[FeatureView, pa.Table]]:
    """The window engine's output rows (entity, id, as_of_us, decay, every feature) split by feature view: each
    view of an entity kind gets that kind's rows."""
    for entity in decl.ENTITIES:
        mine = rows.filter(pc.equal(rows["entity"], entity.name))
        if mine.num_rows:
            for view in views_of(entity):
                yield view, mine


def copy_view_rows(cur, table: str, view: FeatureView, rows: pa.Table) -> int:
    """COPY the engine's rows of ``view`` into ``table`` (the view's offline table, or one like it): the entity
    key, the as-of time and the view's features."""
    names = [f.name for f in view.features]
    key = view.entity.join_key
    offline = pa.table(
        [rows["id"], pc.cast(rows["as_of_us"], pa.timestamp("us", tz="UTC")), *[rows[n] for n in names]],
        names=[key, EVENT_TIMESTAMP, *names],
    )
    cur.copy_expert(
        f"COPY {table} ({key}, {EVENT_TIMESTAMP}, {', '.join(names)}) FROM STDIN WITH (FORMAT csv)", csv_buffer(offline)
    )
    return rows.num_rows
