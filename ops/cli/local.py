"""`cdcf` commands of the local stack: up, down, status, apply, compose secrets, jars, the feature server, the demo
and the supervisor."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import typer

from cdcf.settings import PROJECT_ROOT, Settings
from ops.cli.app import app, invoke


@app.command()
def up() -> None:
    """Start the local stack (Postgres, Redis, Kafka, Connect) and apply the Feast repo."""
    from ops import stack

    invoke(lambda s: stack.up(s, step=typer.echo), new_secrets=True)


@app.command()
def down(
    purge: bool = typer.Option(False, "--purge", help="Also delete the stack's data (not the jar cache)."),
) -> None:
    """Stop the processes of the local stack (only ours, by pid)."""
    from ops import stack

    # a stack from before a secret existed still stops (its new secrets are written as `up` would)
    invoke(lambda s: (stack.purge if purge else stack.down)(s, step=typer.echo), new_secrets=True)


@app.command()
def status(
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Refresh every --interval seconds, with throughput, freshness and lag from Prometheus, until Ctrl-C.",
    ),
    interval: float = typer.Option(1.0, help="Seconds between refreshes (--watch)."),
    count: int | None = typer.Option(None, help="Stop after this many refreshes (--watch)."),
) -> None:
    """One line per component; exits 1 when any is unhealthy."""
    import time

    from ops import stack
    from ops.stack import monitoring

    frames = 0
    while True:
        report = invoke(stack.status)
        lines = [h.line() for h in report] + (invoke(monitoring.summary) if watch else [])
        if watch:
            typer.echo(f"\x1b[H\x1b[2J{datetime.now(UTC):%H:%M:%S} UTC (every {interval:g} s; Ctrl-C stops)", nl=True)
        typer.echo("\n".join(lines))
        frames += 1
        if not watch or frames == count:
            break
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            break
    if not all(h.healthy for h in report):
        raise typer.Exit(code=1)


@app.command()
def apply() -> None:
    """Create the offline tables and `feast apply` the feature repo against the configured registry."""
    from ops import stack

    invoke(stack.apply_feature_repo)


@app.command("compose-secrets")
def compose_secrets(
    folder: Path = typer.Option(PROJECT_ROOT / "secrets", help="Where docker-compose.yml reads them."),
    gid: int = typer.Option(..., help="Group that may read them: the containers join it (HOMELAB_SECRETS_GID)."),
) -> None:
    """Write the Docker secrets of docker-compose.yml from this stack's settings (those missing only)."""
    from ops.stack import compose_secrets as secrets_files

    def run(settings: Settings) -> None:
        written = secrets_files.write(settings, folder, gid)
        typer.echo(f"{folder}: wrote {', '.join(written) if written else 'nothing (every file is there)'}")

    invoke(run, new_secrets=True)


@app.command()
def jars() -> None:
    """Resolve the JVM jars into the cache and build the window engine's (what `up` does first); used when
    building images."""
    from cdcf import jars as stack_jars
    from cdcf.engine import engine_jar

    invoke(stack_jars.ensure_jars)
    invoke(lambda s: engine_jar(s.paths.cache / "engine", s.javac))


@app.command("serve-features")
def serve_features(
    port: int = typer.Option(6566, help="HTTP port of the Feast feature server."),
    bind: str = typer.Option("127.0.0.1", help="Address to listen on."),
    metrics: bool = typer.Option(
        False,
        help="Feast's Prometheus metrics on port 8000 of every "
        "interface (Feast's choice; compose scrapes it inside its network).",
    ),
) -> None:
    """Write feature_store.yaml from the settings and run `feast serve` on it (replaces this process)."""
    from cdcf.feast_config import REPO_PATH, write_repo_config

    config = invoke(write_repo_config)
    feast = str(Path(sys.executable).with_name("feast"))
    os.chdir(REPO_PATH)
    os.execv(
        feast, [feast, "-f", str(config), "serve", "-h", bind, "-p", str(port), *(["--metrics"] if metrics else [])]
    )


@app.command()
def demo() -> None:
    """Bring the stack up, seed sample data, and read features through Feast."""
    from ops import demo as demo_run
    from ops import stack

    def run(settings: Settings) -> None:
        stack.up(settings, step=typer.echo)
        demo_run.run(settings, out=typer.echo)

    invoke(run, new_secrets=True)


@app.command(hidden=True)
def supervise(name: str = typer.Argument(..., help="redis, kafka, connect, archiver or streaming")) -> None:
    """Run a process of the stack and start it again, with backoff, whenever it exits (`make up` runs this)."""
    from ops.stack import supervisor

    raise typer.Exit(code=invoke(lambda s: supervisor.run(s.paths, name)))
