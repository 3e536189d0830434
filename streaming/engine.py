"""The stateful window engine on the executors: a small Java module (streaming/engine/) driven by the declaration.

``spec()`` derives what the engine needs from cdcf/features.py (per entity kind: event tables, their value
columns and scales, distinct windows and hops, features; the profile table and its columns; the output columns),
so aggregates and windows are declared once. ``engine_jar`` compiles the module with ``javac`` against the jars in
the pyspark wheel (no download) into the jar cache, once per source version. ``features`` calls it through py4j.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import zipfile
from functools import cache
from pathlib import Path

import pyspark
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from cdcf import features as decl
from cdcf.errors import PrerequisiteError
from cdcf.features import ColumnFeature, Table
from cdcf.sources import event_tables, features_of, profile_table, sources
from connectors.contracts import row_contracts

SOURCES = Path(__file__).with_name("engine")
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
            tables.append({
                "name": table.name, "values": list(values), "scales": [scale(table, c) for c in values],
                "windows_us": [_us(w) for w, _ in windows], "hops_us": [_us(h) for _, h in windows],
                "features": [{"name": f.name, "agg": f.aggregate,
                              "value": values.index(f.column) if f.column else -1,
                              "window": [w for w, _ in windows].index(f.window)} for f in feats],
            })
        profile = profile_table(entity)
        columns = [f for f in features_of(entity) if isinstance(f, ColumnFeature)]
        entities.append({
            "name": entity.name, "tables": tables,
            "profile": None if profile is None else {"table": profile.name, "columns": [
                {"name": f.name, "column": f.column, "dtype": f.dtype, "scale": scale(profile, f.column)}
                for f in columns]},
        })
    return json.dumps({"entities": entities, "outputs": [{"name": n, "dtype": d} for n, d in outputs()],
                       "tombstone_horizon_us": TOMBSTONE_HORIZON_US})


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
        raise PrerequisiteError(f"The Java compiler ('{javac}') is not on PATH: install it with `apt-get install "
                                "openjdk-17-jdk-headless` (or run `make install`), or set CDCF_JAVAC.")
    classpath = str(Path(pyspark.__file__).parent / "jars" / "*")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([compiler, "-nowarn", "-d", out, "-cp", classpath, *map(str, sources)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PrerequisiteError(f"Compiling the window engine failed: {proc.stderr.strip()[:2000]}")
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = jar.with_suffix(".partial")
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(out).rglob("*.class")):
                zf.write(path, path.relative_to(out).as_posix())
        partial.replace(jar)
    return jar


def input_columns() -> tuple[str, ...]:
    """The after-image columns the engine reads: every event table's values and every profile column."""
    entities = json.loads(spec())["entities"]
    return tuple(sorted({v for e in entities for t in e["tables"] for v in t["values"]}
                        | {c["column"] for e in entities if e["profile"] for c in e["profile"]["columns"]}))


def image_columns() -> tuple[str, ...]:
    """The columns route reads of the decoded images: owner keys, event times, and the engine's columns."""
    return tuple(sorted({c.name for s in sources() for c in s.columns} | set(input_columns())))


def route(changes: DataFrame) -> DataFrame:
    """Valid decoded changes of the tables some feature reads (streaming.decode) -> one row per entity the change
    concerns: the owner its row had before (``owns`` false: the row leaves it, unless it stays) and the owner it
    has after (``owns`` true, unless deleted), with the after image's event time and values: the engine's input
    (entity, id, table, row_key, lsn, commit_us, owns, event_us, <value columns>)."""
    candidates = {}
    for s in sources():
        entries = []
        for entity in s.owners:
            key, deleted = entity.join_key, F.col("op") == "d"
            stays = ~deleted & (F.col(f"b_{key}") == F.col(f"a_{key}"))
            entries.append(F.struct(F.lit(entity.name).alias("entity"), F.col(f"b_{key}").alias("id"),
                                    F.lit(False).alias("owns"), F.coalesce(stays, F.lit(False)).alias("skip")))
            entries.append(F.struct(F.lit(entity.name).alias("entity"), F.col(f"a_{key}").alias("id"),
                                    (~deleted).alias("owns"), deleted.alias("skip")))
        candidates[s.table.name] = F.array(*entries)
    targets = None
    for table, array in candidates.items():
        targets = (F.when(F.col("table") == table, array) if targets is None
                   else targets.when(F.col("table") == table, array))
    event = None
    for s in sources():
        if s.table.event_time:
            value = F.col(f"a_{s.table.event_time}")
            event = (F.when(F.col("table") == s.table.name, value) if event is None
                     else event.when(F.col("table") == s.table.name, value))
    values = [F.col(f"a_{c}").alias(c) for c in input_columns()]
    return (changes.select(F.explode(targets).alias("to"), "table", F.col("key").alias("row_key"), "lsn",
                           "commit_us", event.alias("event_us"), *values)
            .where(F.col("to.id").isNotNull() & ~F.col("to.skip"))
            .select(F.col("to.entity").alias("entity"), F.col("to.id").alias("id"), "table", "row_key", "lsn",
                    "commit_us", F.col("to.owns").alias("owns"), "event_us", *input_columns()))


def features(changes: DataFrame) -> DataFrame:
    """Run the engine over routed change rows (see streaming.route); one row per emit: entity, id, as_of_us and
    decay (whether time alone made it) and every feature column (null where the entity kind has no such
    feature)."""
    spark = changes.sparkSession
    return DataFrame(spark._jvm.cdcf.engine.Engine.features(changes._jdf, spec()), spark)
