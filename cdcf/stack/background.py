"""Our long-running jobs as background processes of the local stack: the changelog archiver (connectors.archive)
and the streaming feature job (streaming.job). Each is a `cdcf` command that reports to a status file."""

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
from cdcf.stack import proc

REPORT_EVERY_S = 30  # a job that has not written its status file for this long is unhealthy


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
        if self.pid(settings):
            return
        self.status_file(settings).unlink(missing_ok=True)
        cdcf = str(Path(sys.executable).with_name("cdcf"))
        started = proc.spawn(settings.paths, self.name,
                             [cdcf, self.command, "--status-file", str(self.status_file(settings))],
                             env={"CDCF_HOME": str(settings.home)})
        proc.wait_until(lambda: self.status_file(settings).exists(),
                        timeout_s=self.start_timeout_s or settings.start_timeout_s,
                        what=f"The {self.name} job", log_file=settings.paths.log(self.name), pid=started)

    def stop(self, settings: Settings) -> None:
        running = self.pid(settings)
        if running:
            proc.stop_pid(running, self.name)

    def pid(self, settings: Settings) -> int | None:
        return proc.our_pid(settings.paths, self.name, f"cdcf {self.command}")

    def health(self, settings: Settings) -> str:
        if self.pid(settings) is None:
            raise ServiceError(f"The {self.name} job is not running; run `make up`.")
        state = json.loads(self.status_file(settings).read_text())
        age = time.time() - state["at"]
        if age > REPORT_EVERY_S:
            raise ServiceError(f"The {self.name} job has not reported for {age:.0f} s; "
                               f"see {settings.paths.log(self.name)}.")
        problem = self.trouble(state)
        if problem:
            raise ServiceError(f"The {self.name} job {problem}; see {settings.paths.log(self.name)}.")
        return self.describe(state)


ARCHIVER = Job("archiver", "archive", lambda s: (
    f"archived {s['changes']} changes ({s['duplicates']} re-deliveries skipped), "
    f"{s['dead_letters']} dead letters, lag {s['lag']}"))

STREAMING = Job("streaming", "stream", lambda s: (
    f"{s['batches']} batches, {s['changes']} changes, {s['rows_written']} feature rows "
    f"({s['decayed']} by decay), last as-of {s['last_as_of'] or '-'}"
    + (f", {s['restarts']} restart(s), last error: {s['last_error']}" if s["restarts"] else "")),
    start_timeout_s=180, trouble=lambda s: _restarting(s))

RESTART_WINDOW_S = 120  # a query restarted this recently is in trouble, whatever its counters say


def _restarting(state: dict[str, Any]) -> str | None:
    if state.get("last_restart_at") and state["at"] - state["last_restart_at"] < RESTART_WINDOW_S:
        return (f"restarted its query {state['restarts']} time(s), the last {state['at'] - state['last_restart_at']:.0f} s "
                f"ago (last error: {state['last_error']})")
    if state.get("query_active") is False:
        return f"has no running query (last error: {state['last_error']})"
    return None
