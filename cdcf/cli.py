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


@app.command()
def apply() -> None:
    """Create the offline tables and `feast apply` the feature repo against the configured registry."""
    from cdcf import stack

    try:
        stack.apply_feature_repo(load_settings())
    except PipelineError as exc:
        raise _fail(exc) from exc


@app.command()
def jars() -> None:
    """Resolve the JVM jars into the cache (what `up` does first); used when building images."""
    from cdcf.stack import jars as stack_jars

    try:
        stack_jars.ensure_jars(load_settings())
    except PipelineError as exc:
        raise _fail(exc) from exc


@app.command("serve-features")
def serve_features(port: int = typer.Option(6566, help="HTTP port of the Feast feature server."),
                   bind: str = typer.Option("127.0.0.1", help="Address to listen on.")) -> None:
    """Write feature_store.yaml from the settings and run `feast serve` on it (replaces this process)."""
    import os
    import sys
    from pathlib import Path

    from cdcf.feast_config import REPO_PATH, write_repo_config

    try:
        config = write_repo_config(load_settings())
    except PipelineError as exc:
        raise _fail(exc) from exc
    feast = str(Path(sys.executable).with_name("feast"))
    os.chdir(REPO_PATH)
    os.execv(feast, [feast, "-f", str(config), "serve", "-h", bind, "-p", str(port)])


@app.command()
def demo() -> None:
    """Bring the stack up, seed sample data, and read features through Feast."""
    from cdcf import demo as demo_run, stack

    try:
        ensure_secrets(default_home())
        settings = load_settings()
        stack.up(settings, step=typer.echo)
        demo_run.run(settings, out=typer.echo)
    except PipelineError as exc:
        raise _fail(exc) from exc
