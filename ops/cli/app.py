"""The `cdcf` command line: each command builds the settings, calls one library function, reports. This module
holds the application and what the commands share; the commands are in the modules beside it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import typer

from cdcf.errors import PipelineError
from cdcf.settings import Settings, default_home, ensure_secrets, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Streaming CDC feature pipeline.")


def invoke(action: Callable[[Settings], object], *, new_secrets: bool = False) -> object:
    """Build the settings and run ``action``; our errors become one red line and exit code 1."""
    try:
        if new_secrets:
            ensure_secrets(default_home())
        return action(load_settings())
    except PipelineError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc


def with_metrics(job: str, action: Callable[[Settings], object]) -> Callable[[Settings], object]:
    """``action`` with the process's Prometheus endpoint up, announced to the local Prometheus as ``job``."""

    def run(settings: Settings) -> object:
        from cdcf import exporter

        if settings.metrics_enabled:
            exporter.serve(settings, job)
        return action(settings)

    return run


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def utc(at: datetime | None) -> datetime | None:
    """Times given without a zone are UTC."""
    return at if at is None or at.tzinfo else at.replace(tzinfo=UTC)
