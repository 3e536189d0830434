"""The `cdcf` command line: each command builds the settings, calls one library function, reports."""

from __future__ import annotations

import logging

import typer

from cdcf.errors import PipelineError
from cdcf.settings import default_home, ensure_secrets, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Streaming CDC feature pipeline.")


def _fail(exc: PipelineError) -> typer.Exit:
    typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=1)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def up() -> None:
    """Start the local stack (Postgres, Redis, Kafka, Connect) and apply the Feast repo."""
    from cdcf import stack

    try:
        ensure_secrets(default_home())
        stack.up(load_settings(), step=typer.echo)
    except PipelineError as exc:
        raise _fail(exc) from exc


@app.command()
def down(purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data (not the jar cache).")) -> None:
    """Stop the processes of the local stack (only ours, by pid)."""
    from cdcf import stack

    try:
        (stack.purge if purge else stack.down)(load_settings(), step=typer.echo)
    except PipelineError as exc:
        raise _fail(exc) from exc


@app.command()
def status() -> None:
    """One line per component; exits 1 when any is unhealthy."""
    from cdcf import stack

    try:
        report = stack.status(load_settings())
    except PipelineError as exc:
        raise _fail(exc) from exc
    for health in report:
        typer.echo(health.line())
    if not all(h.healthy for h in report):
        raise typer.Exit(code=1)
