"""The stateful window engine on the executors: a small Java module (cdcf/engine/src/) driven by the declaration.

``spec()`` derives what the engine needs from cdcf/features.py (per entity kind: event tables, their value
columns and scales, distinct windows and hops, features; the profile table and its columns; the output columns),
so aggregates and windows are declared once. ``engine_jar`` compiles the module with ``javac`` against the jars in
the pyspark wheel (no download) into the jar cache, once per source version. ``features`` (the streaming job) and
``replay`` (the backfill) call it through py4j: one aggregation core for both.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import zipfile
from functools import cache
from pathlib import Path

import pyspark
from pyspark.sql import DataFrame

from cdcf import features as decl
from cdcf.contracts import row_contracts
from cdcf.errors import PrerequisiteError
from cdcf.features import ColumnFeature, Table
from cdcf.sources import event_tables, features_of, profile_table, sources

SOURCES = Path(__file__).with_name("src")
TOMBSTONE_HORIZON_US = 24 * 3600 * 1_000_000  # how long a row taken away keeps its LSN (re-deliveries come sooner)


def value_columns(table: Table) -> tuple[str, ...]:
    """The columns of an event table that some aggregate reads, in name order."""
    return tuple(sorted({f.column for e in decl.ENTITIES for f in event_tables(e).get(table, []) if f.column}))


def scale(table: Table, column: str) -> int:
    (c,) = [c for c in row_contracts()[table.name].columns if c.name == column]
    return c.scale or 0


def outputs() -> list[tuple[str, str]]:
    """(feature name, dtype) of every feature of every entity: the engine's output columns after entity, id,
    as_of_us. A feature name means one feature."""
    result = [(f.name, f.dtype) for e in decl.ENTITIES for f in features_of(e)]
    names = [n for n, _ in result]
    if len(set(names)) != len(names):
        raise ValueError("feature names must be unique across entities")
    return result


@cache
def spec() -> str:
    """The engine's spec (JSON) derived from the declaration."""
    entities = []
    for entity in decl.ENTITIES:
        tables = []
        for table, feats in event_tables(entity).items():
            values = value_columns(table)
            windows = sorted({(f.window, f.hop) for f in feats})
            tables.append(
                {
                    "name": table.name,
                    "values": list(values),
                    "scales": [scale(table, c) for c in values],
                    "windows_us": [_us(w) for w, _ in windows],
                    "hops_us": [_us(h) for _, h in windows],
                    "features": [
                        {
                            "name": f.name,
                            "agg": f.aggregate,
                            "value": values.index(f.column) if f.column else -1,
                            "window": [w for w, _ in windows].index(f.window),
                        }
                        for f in feats
                    ],
                }
            )
        profile = profile_table(entity)
        columns = [f for f in features_of(entity) if isinstance(f, ColumnFeature)]
        entities.append(
            {
                "name": entity.name,
                "tables": tables,
                "profile": None
                if profile is None
                else {
                    "table": profile.name,
                    "columns": [
                        {"name": f.name, "column": f.column, "dtype": f.dtype, "scale": scale(profile, f.column)}
                        for f in columns
                    ],
                },
            }
        )
    return json.dumps(
        {
            "entities": entities,
            "outputs": [{"name": n, "dtype": d} for n, d in outputs()],
            "tombstone_horizon_us": TOMBSTONE_HORIZON_US,
        }
    )


def _us(delta) -> int:
    return int(delta.total_seconds()) * 1_000_000


def engine_jar(cache_dir: Path, javac: str = "javac") -> Path:
    """The engine's jar in ``cache_dir``, compiled first if these sources were never compiled for this Spark."""
    sources = sorted(SOURCES.rglob("*.java"))
    digest = hashlib.sha256(pyspark.__version__.encode())
    for source in sources:
        digest.update(source.read_bytes())
    jar = cache_dir / f"cdcf-engine-{digest.hexdigest()[:16]}.jar"
    if jar.exists():
        return jar
    compiler = shutil.which(javac)
    if compiler is None:
        raise PrerequisiteError(
            f"The Java compiler ('{javac}') is not on PATH: install it with `apt-get install "
            "openjdk-17-jdk-headless` (or run `make install`), or set CDCF_JAVAC."
        )
    classpath = str(Path(pyspark.__file__).parent / "jars" / "*")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [compiler, "-nowarn", "-d", out, "-cp", classpath, *map(str, sources)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise PrerequisiteError(f"Compiling the window engine failed: {proc.stderr.strip()[:2000]}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = jar.with_suffix(f".{os.getpid()}.partial")  # two test workers may compile at once
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(out).rglob("*.class")):
                zf.write(path, path.relative_to(out).as_posix())
        partial.replace(jar)
    return jar


def input_columns() -> tuple[str, ...]:
    """The after-image columns the engine reads: every event table's values and every profile column."""
    entities = json.loads(spec())["entities"]
    return tuple(
        sorted(
            {v for e in entities for t in e["tables"] for v in t["values"]}
            | {c["column"] for e in entities if e["profile"] for c in e["profile"]["columns"]}
        )
    )


CAPTURED = "(captured)"  # the table of the clock rows the router makes from Connect's offset commits


def route_spec(clock_topic: str | None = None, server: str | None = None, partitions: int = 1) -> str:
    """What the router needs (Router.java): per source table its owners (entity, column) and event-time column,
    and the engine's value columns with their kinds; with ``clock_topic`` (Connect's offsets topic), the clock
    rows come from the offset commits of the connector whose server name (topic prefix) is ``server``, one to each
    of the engine's ``partitions`` state partitions."""
    kinds = {c.name: c.kind for contract in row_contracts().values() for c in contract.columns}
    return json.dumps(
        {
            **(
                {"clock": {"topic": clock_topic, "server": server, "table": CAPTURED, "partitions": partitions}}
                if clock_topic
                else {}
            ),
            "sources": [
                {
                    "table": s.table.name,
                    "event": s.table.event_time,
                    "owners": [{"entity": e.name, "column": e.join_key} for e in s.owners],
                }
                for s in sources()
            ],
            "values": {c: "string" if kinds[c] == "string" else "long" for c in input_columns()},
        }
    )


def features(changes: DataFrame, gated: bool, settle_ms: int) -> DataFrame:
    """Run the engine over routed change rows (streaming.decode.routed) under their query's watermark (the
    commit-time clock, less ``settle_ms``); one row per emit: entity, id, as_of_us and decay (whether time alone
    made it) and every feature column (null where the entity kind has no such feature). ``gated``: a change
    applies only once the clock (Connect's offset commits, as the router's ``CAPTURED`` rows) has passed its commit
    time (see FeatureProcessor.java); otherwise on arrival."""
    spark = changes.sparkSession
    return DataFrame(
        spark._jvm.cdcf.engine.Engine.features(changes._jdf, spec(), CAPTURED if gated else None, settle_ms), spark
    )


def replay(changes: DataFrame, end_us: int) -> DataFrame:
    """The backfill's run of the same engine: routed change rows (every entity's whole history) replayed entity
    by entity on the executors, with the streaming job's emits and decay moments before ``end_us``; the same
    output columns as ``features``."""
    spark = changes.sparkSession
    return DataFrame(spark._jvm.cdcf.engine.Engine.replay(changes._jdf, spec(), end_us), spark)
