"""`cdcf` commands of capture: the Debezium connector through Kafka Connect's REST API, the archive, re-snapshots
and dead letters."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import typer

from cdcf.settings import Settings
from ops.cli.app import app, invoke, with_metrics

connector_app = typer.Typer(no_args_is_help=True, help="The Debezium connector, through Kafka Connect's REST API.")
app.add_typer(connector_app, name="connector")


def _connector(call: Callable[..., object], *args: object) -> None:
    """Run one REST call on the app connector and print its JSON answer."""
    import json

    from connectors.connect import ConnectClient, connector_config

    def action(settings: Settings) -> None:
        name, config = connector_config(settings)
        client = ConnectClient(settings)
        try:
            result = call(client, name, config, *args)
        finally:
            client.close()
        if result is not None:
            typer.echo(json.dumps(result, indent=2))

    invoke(action)


@connector_app.command("apply")
def connector_apply(timeout: float = typer.Option(90, help="Seconds to wait for RUNNING.")) -> None:
    """Create the change and dead-letter topics, create or update the connector (idempotent), and wait until it
    and its task run."""
    from ops import stack

    invoke(lambda s: stack.apply_connector(s, timeout_s=timeout))
    _connector(lambda c, name, _: c.status(name))


@connector_app.command("status")
def connector_status() -> None:
    """Connector and task states, with the trace of a failed task."""
    _connector(lambda c, name, _: c.status(name))


@connector_app.command("restart")
def connector_restart(all_tasks: bool = typer.Option(False, "--all", help="Restart running tasks too.")) -> None:
    """Restart the failed parts of the connector (or all of it with --all)."""
    _connector(lambda c, name, _: c.restart(name, only_failed=not all_tasks))


@connector_app.command("pause")
def connector_pause() -> None:
    _connector(lambda c, name, _: c.pause(name))


@connector_app.command("resume")
def connector_resume() -> None:
    _connector(lambda c, name, _: c.resume(name))


@connector_app.command("stop")
def connector_stop() -> None:
    """Stop the connector (its offsets stay; `resume` starts it again)."""
    _connector(lambda c, name, _: c.stop(name))


@connector_app.command("delete")
def connector_delete() -> None:
    """Delete the connector (its replication slot stays in PostgreSQL)."""
    _connector(lambda c, name, _: c.delete(name))


@connector_app.command("offsets")
def connector_offsets() -> None:
    """Show the connector's committed source offsets (LSNs)."""
    _connector(lambda c, name, _: c.offsets(name))


@connector_app.command("reset-offsets")
def connector_reset_offsets() -> None:
    """Stop the connector and delete its offsets; `resume` then snapshots again."""
    _connector(lambda c, name, _: c.reset_offsets(name))


@app.command()
def archive(
    status_file: Path | None = typer.Option(None, help="Where to report totals and lag."),
    idle_exit: float | None = typer.Option(None, help="Exit after this many idle seconds."),
) -> None:
    """Run the changelog archiver in the foreground (`make up` runs it in the background)."""
    from connectors.archive import Archiver

    logging.getLogger("connectors").setLevel(logging.INFO)
    totals = invoke(with_metrics("archiver", lambda s: Archiver(s, status_file=status_file).run(idle_exit_s=idle_exit)))
    typer.echo(
        f"archived {totals['changes']} changes, skipped {totals['duplicates']} re-deliveries, "
        f"{totals['dead_letters']} dead letters"
    )


@app.command()
def resnapshot() -> None:
    """Recover capture after a gap (its replication slot lost): snapshot every row again, and send deletes for rows
    removed meanwhile; features are exact again once the archiver and the streaming job catch up."""
    from connectors.resnapshot import resnapshot as run

    done = invoke(lambda s: run(s, progress=typer.echo))
    typer.echo(
        f"resnapshot done in {done.seconds:.1f} s: {done.snapshot_rows} rows snapshotted, "
        f"{sum(done.deleted.values())} deletes sent for rows removed or moved to other owners during the gap"
    )


@app.command("dead-letters")
def dead_letters(
    action: str = typer.Argument("list", help="list, or replay: send back what now decodes."),
    dry_run: bool = typer.Option(False, "--dry-run", help="replay: only say what would be sent."),
) -> None:
    """List the dead letters, or replay them through the pipeline once the contract that refused them is fixed."""
    from connectors import deadletters

    if action == "list":

        def show(settings: Settings) -> None:
            found = 0
            for letter in deadletters.letters(settings):
                found += 1
                at = letter.source
                typer.echo(
                    f"{letter.offset}\t{letter.failed_at}\t{at.topic}[{at.partition}]@{at.offset}\t{letter.reason}"
                )
            typer.echo(f"{found} dead letter(s) on {settings.dead_letter_topic}")

        invoke(show)
    elif action == "replay":
        done = invoke(lambda s: deadletters.replay(s, dry_run=dry_run))
        typer.echo(
            f"{'would send' if dry_run else 'sent'} {len(done.sent)} back to their topics; "
            f"{len(done.archived)} already archived; {len(done.invalid)} still invalid; "
            f"{len(done.gone)} gone from Kafka (past retention)"
        )
        for letter, reason in done.invalid[:20]:
            typer.echo(
                f"  still invalid: {letter.source.topic}[{letter.source.partition}]@{letter.source.offset}: {reason}"
            )
    else:
        typer.secho(f"error: unknown action {action!r}; use list or replay", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)
