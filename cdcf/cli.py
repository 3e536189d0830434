"""The `cdcf` command line: each command builds the settings, calls one library function, reports."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from cdcf.errors import PipelineError
from cdcf.settings import Settings, default_home, ensure_secrets, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Streaming CDC feature pipeline.")


def _run(action: Callable[[Settings], object], *, new_secrets: bool = False) -> object:
    """Build the settings and run ``action``; our errors become one red line and exit code 1."""
    try:
        if new_secrets:
            ensure_secrets(default_home())
        return action(load_settings())
    except PipelineError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1) from exc


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug details.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@app.command()
def up() -> None:
    """Start the local stack (Postgres, Redis, Kafka, Connect) and apply the Feast repo."""
    from cdcf import stack

    _run(lambda s: stack.up(s, step=typer.echo), new_secrets=True)


@app.command()
def down(purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data (not the jar cache).")) -> None:
    """Stop the processes of the local stack (only ours, by pid)."""
    from cdcf import stack

    _run(lambda s: (stack.purge if purge else stack.down)(s, step=typer.echo))


@app.command()
def status() -> None:
    """One line per component; exits 1 when any is unhealthy."""
    from cdcf import stack

    report = _run(stack.status)
    for health in report:
        typer.echo(health.line())
    if not all(h.healthy for h in report):
        raise typer.Exit(code=1)


@app.command()
def apply() -> None:
    """Create the offline tables and `feast apply` the feature repo against the configured registry."""
    from cdcf import stack

    _run(stack.apply_feature_repo)


@app.command()
def jars() -> None:
    """Resolve the JVM jars into the cache (what `up` does first); used when building images."""
    from cdcf.stack import jars as stack_jars

    _run(stack_jars.ensure_jars)


@app.command("serve-features")
def serve_features(port: int = typer.Option(6566, help="HTTP port of the Feast feature server."),
                   bind: str = typer.Option("127.0.0.1", help="Address to listen on.")) -> None:
    """Write feature_store.yaml from the settings and run `feast serve` on it (replaces this process)."""
    from cdcf.feast_config import REPO_PATH, write_repo_config

    config = _run(write_repo_config)
    feast = str(Path(sys.executable).with_name("feast"))
    os.chdir(REPO_PATH)
    os.execv(feast, [feast, "-f", str(config), "serve", "-h", bind, "-p", str(port)])


@app.command()
def demo() -> None:
    """Bring the stack up, seed sample data, and read features through Feast."""
    from cdcf import demo as demo_run
    from cdcf import stack

    def run(settings: Settings) -> None:
        stack.up(settings, step=typer.echo)
        demo_run.run(settings, out=typer.echo)

    _run(run, new_secrets=True)
