"""Arrow tables into PostgreSQL's COPY (CSV), for the jobs that write the offline store."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.csv as pa_csv


def csv_buffer(table: pa.Table) -> io.BytesIO:
    out = io.BytesIO()
    pa_csv.write_csv(table, out, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
    out.seek(0)
    return out
