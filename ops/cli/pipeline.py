"""`cdcf` commands of the features: the streaming job, the workload, the backfill, training sets and seeding the
online store."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import typer

from cdcf.settings import Settings
from ops.cli.app import app, invoke, utc, with_metrics


@app.command()
def stream(status_file: Path | None = typer.Option(None, help="Where to report totals.")) -> None:
    """Run the streaming feature job in the foreground (`make up` runs it in the background)."""
    from streaming.job import StreamJob

    logging.getLogger("streaming").setLevel(logging.DEBUG)
    totals = invoke(with_metrics("streaming", lambda s: StreamJob(s, status_file=status_file).run()))
    typer.echo(f"{totals['batches']} batches, {totals['changes']} changes, {totals['rows_written']} feature rows")


@app.command()
def workload(
    rate: float = typer.Option(200, help="Changes per second."),
    duration: float = typer.Option(60, help="Seconds to run."),
    seed: int = typer.Option(1, help="Random seed (same seed, same sequence of changes)."),
    burst_every: float = typer.Option(15, help="A burst second every this many seconds (0: none)."),
    burst_factor: float = typer.Option(4, help="Rate multiplier during a burst."),
) -> None:
    """Drive realistic changes into the source database at a target rate, with a progress line."""
    from ops.workload import Workload

    def show(elapsed: float, counts) -> None:
        total = sum(counts.values())
        typer.echo(f"\r{elapsed:5.0f} s  {total:8d} changes  {total / max(elapsed, 1e-9):7.0f}/s", nl=False)

    counts = invoke(
        lambda s: Workload(s, seed=seed).run(
            rate, duration, burst_every_s=burst_every, burst_factor=burst_factor, progress=show
        )
    )
    typer.echo("\n" + ", ".join(f"{kind}={n}" for kind, n in sorted(counts.items())))


@app.command()
def backfill(
    start: datetime | None = typer.Option(None, help="First as-of time to rebuild (default: all)."),
    end: datetime | None = typer.Option(None, help="As-of times before this (default: the archive's last commit)."),
    incremental: bool = typer.Option(
        False, help="Continue from the last run: new as-of times, and the entities touched by changes archived since."
    ),
) -> None:
    """Rebuild the offline feature tables from the changelog archive (Spark batch), with progress."""
    from batch.backfill import run_backfill
    from cdcf.spark import spark_session

    def run(settings: Settings):
        spark = spark_session(settings, "cdcf-backfill")
        spark.sparkContext.setLogLevel("ERROR")
        try:
            return run_backfill(spark, settings, utc(start), utc(end), incremental=incremental, progress=typer.echo)
        finally:
            spark.stop()

    result = invoke(run)
    if result.rejects:
        typer.echo(f"{len(result.rejects)} changes broke their row contract; see table backfill_rejects")


@app.command("training-set")
def training_set(
    entities: str = typer.Argument(
        ...,
        help="Entity rows: a .parquet or .csv file, or an offline-store table, with the join key and event_timestamp.",
    ),
    features: str = typer.Option(..., help="A feature service, or view:feature,view:feature..."),
    out: Path = typer.Option(..., help="Parquet file to write."),
    label: list[str] = typer.Option([], help="A label to join from the history (txn_next_7d)."),
) -> None:
    """Write a point-in-time training set (values as of each row's timestamp) to Parquet."""
    from offline.training import training_set as build

    wanted = features if "," not in features and ":" not in features else features.split(",")
    table = invoke(lambda s: build(s, entities, wanted, labels=label, out=out))
    typer.echo(f"{table.num_rows} rows x {table.num_columns} columns -> {out}")


@app.command("seed-online")
def seed_online() -> None:
    """Rebuild the online store (Redis) from the offline store's latest rows, e.g. after losing Redis."""
    from streaming.reseed import seed_online as seed

    written = invoke(lambda s: seed(s, progress=typer.echo))
    typer.echo(f"{sum(written.values())} rows written")
