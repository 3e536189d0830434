"""Our long-running jobs as background processes of the local stack: the changelog archiver (connectors.archive)
and the streaming feature job (streaming.job). Each is a `cdcf` command that reports to a status file, run by a
supervisor (`cdcf supervise NAME`) that starts it again, with backoff, whenever it exits on its own."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cdcf.errors import ConfigError, ServiceError
from cdcf.settings import Settings
from cdcf.stack import proc

log = logging.getLogger(__name__)

REPORT_EVERY_S = 30  # a job that has not written its status file for this long is unhealthy
RESTART_WINDOW_S = 120  # a job (or query) restarted this recently is in trouble, whatever its counters say
BACKOFF_S = (1, 2, 4, 8, 16, 32, 60)  # waits before each further restart of a job that keeps exiting
LAG_GROWING_S = 60  # a consumer whose lag grew this long without ever shrinking is falling behind
STALLED_S = 60  # a streaming query that finished no micro-batch this long is stuck (heartbeats come every 5 s)
STEADY_S = 300  # a job that ran this long before exiting is restarted after the shortest wait again


@dataclass(frozen=True)
class Job:
    name: str
    command: str  # the `cdcf` subcommand that runs it in the foreground
    describe: Callable[[dict[str, Any]], str]  # status file -> one health line
    start_timeout_s: float | None = None  # None: settings.start_timeout_s
    trouble: Callable[[dict[str, Any]], str | None] = lambda state: None  # status file -> why it is unhealthy

    def status_file(self, settings: Settings) -> Path:
        return settings.paths.run / f"{self.name}.json"

    def restarts_file(self, settings: Settings) -> Path:
        return settings.paths.run / f"{self.name}.restarts.json"

    def start(self, settings: Settings) -> None:
        if self.supervisor_pid(settings):
            return
        orphan = self.pid(settings)  # left by a supervisor that was killed: one job, supervised, at a time
        if orphan:
            proc.stop_pid(orphan, self.name)
        self.status_file(settings).unlink(missing_ok=True)
        self.restarts_file(settings).unlink(missing_ok=True)
        cdcf = str(Path(sys.executable).with_name("cdcf"))
        started = proc.spawn(settings.paths, f"{self.name}-supervisor", [cdcf, "supervise", self.name],
                             env={"CDCF_HOME": str(settings.home)}, log_name=self.name)
        proc.wait_until(lambda: self.status_file(settings).exists(),
                        timeout_s=self.start_timeout_s or settings.start_timeout_s,
                        what=f"The {self.name} job", log_file=settings.paths.log(self.name), pid=started)

    def stop(self, settings: Settings) -> None:
        supervisor = self.supervisor_pid(settings)
        if supervisor:
            proc.stop_pid(supervisor, f"{self.name} supervisor", timeout_s=90)  # it stops the job first
        running = self.pid(settings)
        if running:
            proc.stop_pid(running, self.name)

    def supervisor_pid(self, settings: Settings) -> int | None:
        return proc.our_pid(settings.paths, f"{self.name}-supervisor", f"cdcf supervise {self.name}")

    def pid(self, settings: Settings) -> int | None:
        return proc.our_pid(settings.paths, self.name, f"cdcf {self.command}")

    def health(self, settings: Settings) -> str:
        restarted = self._restarted(settings)
        if self.pid(settings) is None:
            if self.supervisor_pid(settings) and restarted:
                raise ServiceError(f"The {self.name} job {restarted}, and is waiting to start again; "
                                   f"see {settings.paths.log(self.name)}.")
            raise ServiceError(f"The {self.name} job is not running; run `make up`.")
        if restarted and time.time() - restarted.at < RESTART_WINDOW_S:
            raise ServiceError(f"The {self.name} job {restarted}; see {settings.paths.log(self.name)}.")
        state = json.loads(self.status_file(settings).read_text())
        age = time.time() - state["at"]
        if age > REPORT_EVERY_S:
            raise ServiceError(f"The {self.name} job has not reported for {age:.0f} s; "
                               f"see {settings.paths.log(self.name)}.")
        problem = self.trouble(state)
        if problem:
            raise ServiceError(f"The {self.name} job {problem}; see {settings.paths.log(self.name)}.")
        return self.describe(state)

    def _restarted(self, settings: Settings) -> "Restarts | None":
        try:
            return Restarts(**json.loads(self.restarts_file(settings).read_text()))
        except FileNotFoundError:
            return None


@dataclass(frozen=True)
class Restarts:
    """What the supervisor records each time it starts a job again."""
    restarts: int
    exit_code: int
    at: float
    last_error: str

    def __str__(self) -> str:
        how = f"was killed by signal {-self.exit_code}" if self.exit_code < 0 else f"exited with code {self.exit_code}"
        return (f"{how} and was restarted {self.restarts} time(s), the last {time.time() - self.at:.0f} s ago "
                f"(last error: {self.last_error or '-'})")


ARCHIVER = Job("archiver", "archive", lambda s: (
    f"archived {s['changes']} changes ({s['duplicates']} re-deliveries skipped), "
    f"{s['dead_letters']} dead letters, lag {s['lag']}"
    + "".join(f"; ignoring {', '.join(f'{t}.{c}' for c in cs)} (not in the contract)"
              for t, cs in s.get("ignored_columns", {}).items())),
    trouble=lambda s: _falling_behind_or_dead_lettering(s))

STREAMING = Job("streaming", "stream", lambda s: (
    f"{s['batches']} batches, {s['changes']} changes, {s['rows_written']} feature rows "
    f"({s['decayed']} by decay), last as-of {s['last_as_of'] or '-'}"
    + (f", {s['restarts']} restart(s), last error: {s['last_error']}" if s["restarts"] else "")
    + (f", re-seeded the online store {s['reseeds']} time(s), last at {s['last_reseed']}" if s.get("reseeds") else "")),
    start_timeout_s=180, trouble=lambda s: _restarting_or_stalled(s))

JOBS = {job.name: job for job in (ARCHIVER, STREAMING)}


def _falling_behind_or_dead_lettering(state: dict[str, Any]) -> str | None:
    if state.get("last_dead_letter_at") and state["at"] - state["last_dead_letter_at"] < RESTART_WINDOW_S:
        return (f"dead-lettered {state['dead_letters']} change(s) so far, the last "
                f"{state['at'] - state['last_dead_letter_at']:.0f} s ago (reason: {state['last_dead_letter_reason']}); "
                f"they wait on the dead-letter topic")
    if state.get("lag_growing_since") and state["at"] - state["lag_growing_since"] >= LAG_GROWING_S:
        return (f"falls behind: its lag has grown for {state['at'] - state['lag_growing_since']:.0f} s, "
                f"to {state['lag']} changes")
    return None


def _restarting_or_stalled(state: dict[str, Any]) -> str | None:
    if state.get("last_restart_at") and state["at"] - state["last_restart_at"] < RESTART_WINDOW_S:
        return (f"restarted its query {state['restarts']} time(s), the last {state['at'] - state['last_restart_at']:.0f} s "
                f"ago (last error: {state['last_error']})")
    if state.get("query_active") is False:
        return f"has no running query (last error: {state['last_error']})"
    if state.get("last_batch_at") and state["at"] - state["last_batch_at"] >= STALLED_S:
        return (f"has finished no micro-batch for {state['at'] - state['last_batch_at']:.0f} s (heartbeats alone "
                f"make one every few seconds)")
    if state.get("behind_growing_since") and state["at"] - state["behind_growing_since"] >= LAG_GROWING_S:
        return (f"falls behind: its lag has grown for {state['at'] - state['behind_growing_since']:.0f} s, to "
                f"{state['behind']} offsets on its most lagging partition")
    return None


def supervise(settings: Settings, name: str) -> int:
    """Run the job ``name`` in the foreground, and again, with backoff, each time it exits on its own.

    A job that exits before it ever reported (it cannot start: bad settings, a missing jar) is not retried: its
    exit code is returned, so `make up` fails with its log. SIGTERM or SIGINT stop the job and then return.
    """
    if name not in JOBS:
        raise ConfigError(f"No background job named {name!r}; choose one of {', '.join(JOBS)}.")
    job = JOBS[name]
    cdcf = str(Path(sys.executable).with_name("cdcf"))
    argv = [cdcf, job.command, "--status-file", str(job.status_file(settings))]
    child: subprocess.Popen | None = None
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    restarts, wait = 0, 0
    while True:
        began = time.monotonic()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        settings.paths.pid_file(name).write_text(f"{child.pid}\n")
        if stopping:
            child.terminate()
        code = child.wait()
        if stopping:
            return 0
        if not job.status_file(settings).exists():
            return code or 1
        keeps_exiting = restarts > 0 and time.monotonic() - began < STEADY_S
        wait = min(wait + 1, len(BACKOFF_S) - 1) if keeps_exiting else 0
        restarts += 1
        record = Restarts(restarts, code, time.time(), proc.last_line(settings.paths.log(name)))
        job.restarts_file(settings).write_text(json.dumps(record.__dict__))
        log.warning("the %s job %s; starting it again in %d s", name, record, BACKOFF_S[wait])
        deadline = time.monotonic() + BACKOFF_S[wait]
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
        if stopping:
            return 0
