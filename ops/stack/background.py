"""Our long-running jobs as background processes of the local stack: the changelog archiver (connectors.archive)
and the streaming feature job (streaming.job). Each is a `cdcf` command that reports to a status file, run by a
supervisor (ops.stack.supervisor) that starts it again, with backoff, whenever it exits on its own. A job restarted
in the last RESTART_WINDOW_S is unhealthy: our own code exited, and the restart's error says why."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcf.errors import ServiceError
from cdcf.settings import Settings
from ops.stack import proc, supervisor
from ops.stack.supervisor import RESTART_WINDOW_S

REPORT_EVERY_S = 30  # a job that has not written its status file for this long is unhealthy
LAG_GROWING_S = 60  # a consumer whose lag grew this long without ever shrinking is falling behind
STALLED_S = 60  # a streaming query that finished no micro-batch this long is stuck (heartbeats come every 5 s)
FIRST_BATCH_S = 300  # a query's first micro-batch (Python workers, plans, state restore) may take minutes when busy
CLOCK_STOPPED_S = 60  # a streaming clock (Connect's committed offsets) still this long is stuck (heartbeats: 5 s)


@dataclass(frozen=True)
class Job:
    name: str
    command: str  # the `cdcf` subcommand that runs it in the foreground
    describe: Callable[[dict[str, Any]], str]  # status file -> one health line
    start_timeout_s: float | None = None  # None: settings.start_timeout_s
    trouble: Callable[[dict[str, Any]], str | None] = lambda state: None  # status file -> why it is unhealthy

    def status_file(self, settings: Settings) -> Path:
        return settings.paths.run / f"{self.name}.json"

    def start(self, settings: Settings) -> None:
        if supervisor.running(settings.paths, self.name, self.pid(settings)):
            return
        status = self.status_file(settings)
        cdcf = str(Path(sys.executable).with_name("cdcf"))
        started = supervisor.start(settings, self.name, [cdcf, self.command, "--status-file", str(status)], status)
        proc.wait_until(
            status.exists,
            timeout_s=self.start_timeout_s or settings.start_timeout_s,
            what=f"The {self.name} job",
            log_file=settings.paths.log(self.name),
            pid=started,
        )

    def stop(self, settings: Settings) -> None:
        supervisor.stop(settings.paths, self.name)  # it stops the job first
        running = self.pid(settings)
        if running:
            proc.stop_pid(running, self.name)

    def pid(self, settings: Settings) -> int | None:
        return proc.our_pid(settings.paths, self.name, f"cdcf {self.command}")

    def health(self, settings: Settings) -> str:
        restarted = supervisor.restarted(settings.paths, self.name)
        if self.pid(settings) is None:
            if supervisor.supervisor_pid(settings.paths, self.name) and restarted:
                raise ServiceError(
                    f"The {self.name} job {restarted}, and is waiting to start again; "
                    f"see {settings.paths.log(self.name)}."
                )
            raise ServiceError(f"The {self.name} job is not running; run `make up`.")
        if restarted and restarted.in_window():
            raise ServiceError(f"The {self.name} job {restarted}; see {settings.paths.log(self.name)}.")
        state = json.loads(self.status_file(settings).read_text())
        age = time.time() - state["at"]
        if age > REPORT_EVERY_S:
            raise ServiceError(
                f"The {self.name} job has not reported for {age:.0f} s; see {settings.paths.log(self.name)}."
            )
        problem = self.trouble(state)
        if problem:
            raise ServiceError(f"The {self.name} job {problem}; see {settings.paths.log(self.name)}.")
        return self.describe(state)


ARCHIVER = Job(
    "archiver",
    "archive",
    lambda s: (
        f"archived {s['changes']} changes ({s['duplicates']} re-deliveries skipped), "
        f"{s['dead_letters']} dead letters, lag {s['lag']}"
        + "".join(
            f"; ignoring {', '.join(f'{t}.{c}' for c in cs)} (not in the contract)"
            for t, cs in s.get("ignored_columns", {}).items()
        )
    ),
    trouble=lambda s: _falling_behind_or_dead_lettering(s),
)

STREAMING = Job(
    "streaming",
    "stream",
    lambda s: (
        f"{s['batches']} batches, {s['changes']} changes, {s['rows_written']} feature rows "
        f"({s['decayed']} by decay), last as-of {s['last_as_of'] or '-'}, clock {s.get('clock') or '-'}"
        + (f", {s['restarts']} restart(s), last error: {s['last_error']}" if s["restarts"] else "")
        + (
            f", re-seeded the online store {s['reseeds']} time(s), last at {s['last_reseed']}"
            if s.get("reseeds")
            else ""
        )
    ),
    start_timeout_s=180,
    trouble=lambda s: _restarting_or_stalled(s),
)

JOBS = {job.name: job for job in (ARCHIVER, STREAMING)}


def _falling_behind_or_dead_lettering(state: dict[str, Any]) -> str | None:
    if state.get("last_dead_letter_at") and state["at"] - state["last_dead_letter_at"] < RESTART_WINDOW_S:
        return (
            f"dead-lettered {state['dead_letters']} change(s) so far, the last "
            f"{state['at'] - state['last_dead_letter_at']:.0f} s ago (reason: {state['last_dead_letter_reason']}); "
            f"they wait on the dead-letter topic"
        )
    if state.get("lag_growing_since") and state["at"] - state["lag_growing_since"] >= LAG_GROWING_S:
        return (
            f"falls behind: its lag has grown for {state['at'] - state['lag_growing_since']:.0f} s, "
            f"to {state['lag']} changes"
        )
    return None


def _restarting_or_stalled(state: dict[str, Any]) -> str | None:
    if state.get("last_restart_at") and state["at"] - state["last_restart_at"] < RESTART_WINDOW_S:
        return (
            f"restarted its query {state['restarts']} time(s), the last {state['at'] - state['last_restart_at']:.0f} s "
            f"ago (last error: {state['last_error']})"
        )
    if state.get("query_active") is False:
        return f"has no running query (last error: {state['last_error']})"
    if (
        not state.get("last_batch_at")
        and state.get("query_started_at")
        and state["at"] - state["query_started_at"] >= FIRST_BATCH_S
    ):
        return (
            f"has finished no micro-batch in the {state['at'] - state['query_started_at']:.0f} s since its query "
            f"started"
        )
    if state.get("last_batch_at") and state["at"] - state["last_batch_at"] >= STALLED_S:
        return (
            f"has finished no micro-batch for {state['at'] - state['last_batch_at']:.0f} s (heartbeats alone "
            f"make one every few seconds)"
        )
    if state.get("behind_growing_since") and state["at"] - state["behind_growing_since"] >= LAG_GROWING_S:
        return (
            f"falls behind: its lag has grown for {state['at'] - state['behind_growing_since']:.0f} s, to "
            f"{state['behind']} offsets on its most lagging partition"
        )
    if state.get("clock_moved_at") and state["at"] - state["clock_moved_at"] >= CLOCK_STOPPED_S:
        return (
            f"has a clock that has not moved for {state['at'] - state['clock_moved_at']:.0f} s (at "
            f"{state.get('clock') or 'none yet'}): changes wait until Connect commits source offsets past them; "
            f"is the connector running?"
        )
    return None
