"""Supervision of the stack's long-running processes (Redis, Kafka, Connect, the archiver, the streaming job): each
runs under `cdcf supervise NAME`, which starts it again, with backoff, whenever it exits on its own, and records each
restart for `make status`. It is what compose's `restart: unless-stopped` is for the containers.

Files of a supervised process NAME under ``<home>/run``: ``NAME-supervisor.pid`` (the supervisor), ``NAME.pid`` (the
process it runs now), ``NAME.argv.json`` (what to run, and the file whose existence says it once became ready) and
``NAME.restarts.json`` (the last restart).
"""

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

from cdcf.errors import ConfigError
from cdcf.settings import Settings, StackPaths
from ops.stack import proc

log = logging.getLogger(__name__)

BACKOFF_S = (1, 2, 4, 8, 16, 32, 60)  # waits before each further restart of a process that keeps exiting
STEADY_S = 300  # a process that ran this long before exiting is restarted after the shortest wait again
RESTART_WINDOW_S = 120  # restarts this recent count as trouble (a loop, for a service; any, for a job)


@dataclass(frozen=True)
class Restarts:
    """What the supervisor records each time it starts a process again."""

    restarts: int
    exit_code: int
    at: float
    last_error: str
    recent: int = 1  # restarts within RESTART_WINDOW_S of this one, this one included

    def __str__(self) -> str:
        how = f"was killed by signal {-self.exit_code}" if self.exit_code < 0 else f"exited with code {self.exit_code}"
        return (
            f"{how} and was restarted {self.restarts} time(s), the last {time.time() - self.at:.0f} s ago "
            f"(last error: {self.last_error or '-'})"
        )

    def in_window(self) -> bool:
        return time.time() - self.at < RESTART_WINDOW_S


def start(settings: Settings, name: str, argv: list[str], ready: Path) -> int:
    """Run ``argv`` under a new supervisor (detached, output to ``logs/NAME.log``), both with the environment
    ``settings.environment()`` and nothing else of their starter's; return the supervisor's pid.
    ``ready`` is the file the process, or whoever waits for it, writes once it is up: a process that exits before
    it exists cannot start (bad settings, a port in use) and is not retried."""
    paths = settings.paths
    ready.unlink(missing_ok=True)
    _restarts_file(paths, name).unlink(missing_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    _argv_file(paths, name).write_text(json.dumps({"argv": [str(a) for a in argv], "ready": str(ready)}))
    cdcf = str(Path(sys.executable).with_name("cdcf"))
    return proc.spawn(paths, f"{name}-supervisor", [cdcf, "supervise", name], settings.environment(), log_name=name)


def running(paths: StackPaths, name: str, current: int | None) -> bool:
    """Whether NAME runs supervised. ``current``: NAME's own pid, if it runs; one whose supervisor was killed is
    stopped, so that it is started again under a new one (one process of a name at a time)."""
    if supervisor_pid(paths, name):
        return True
    if current:
        proc.stop_pid(current, name, timeout_s=60)
    return False


def start_service(
    settings: Settings,
    name: str,
    argv: list[str],
    healthy: Callable[[], object],
    timeout_s: float,
) -> None:
    """Start a service (a process that reports nothing itself) supervised, and wait until ``healthy()``; it is
    ready from then on, so that later exits are restarts."""
    ready = settings.paths.run / f"{name}.ready"
    started = start(settings, name, argv, ready)
    proc.wait_until(
        healthy, timeout_s=timeout_s, what=name.capitalize(), log_file=settings.paths.log(name), pid=started
    )
    ready.touch()


def trouble(paths: StackPaths, name: str) -> str | None:
    """A service in a restart loop (restarted twice within RESTART_WINDOW_S): what its last exit was."""
    record = restarted(paths, name)
    if record and record.in_window() and record.recent >= 2:
        return f"is in a restart loop: it {record}; see {paths.log(name)}"
    return None


def supervisor_pid(paths: StackPaths, name: str) -> int | None:
    return proc.our_pid(paths, f"{name}-supervisor", f"cdcf supervise {name}")


def stop(paths: StackPaths, name: str, timeout_s: float = 90) -> None:
    """Stop the supervisor, which stops its process first (SIGTERM, forwarded)."""
    supervisor = supervisor_pid(paths, name)
    if supervisor:
        proc.stop_pid(supervisor, f"{name} supervisor", timeout_s=timeout_s)


def restarted(paths: StackPaths, name: str) -> Restarts | None:
    try:
        return Restarts(**json.loads(_restarts_file(paths, name).read_text()))
    except FileNotFoundError:
        return None


def run(paths: StackPaths, name: str) -> int:
    """Run NAME's process in the foreground, and again, with backoff, each time it exits on its own. A process that
    exits before it was ever ready returns its exit code; SIGTERM or SIGINT stop the process and then return 0."""
    if not _argv_file(paths, name).exists():
        raise ConfigError(f"Nothing to supervise under the name {name!r}; `make up` starts the stack's processes.")
    spec = json.loads(_argv_file(paths, name).read_text())
    argv, ready = spec["argv"], Path(spec["ready"])
    child: subprocess.Popen | None = None
    stopping = False

    def stop_child(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, stop_child)
    signal.signal(signal.SIGINT, stop_child)
    restarts, wait, recent = 0, 0, []
    while True:
        began = time.monotonic()
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
        paths.pid_file(name).write_text(f"{child.pid}\n")
        if stopping:
            child.terminate()
        code = child.wait()
        if stopping:
            return 0
        if not ready.exists():
            return code or 1
        keeps_exiting = restarts > 0 and time.monotonic() - began < STEADY_S
        wait = min(wait + 1, len(BACKOFF_S) - 1) if keeps_exiting else 0
        restarts += 1
        now = time.time()
        recent = [t for t in recent if now - t < RESTART_WINDOW_S] + [now]
        record = Restarts(restarts, code, now, proc.last_line(paths.log(name)), len(recent))
        _restarts_file(paths, name).write_text(json.dumps(record.__dict__))
        log.warning("%s %s; starting it again in %d s", name, record, BACKOFF_S[wait])
        deadline = time.monotonic() + BACKOFF_S[wait]
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.2)
        if stopping:
            return 0


def _argv_file(paths: StackPaths, name: str) -> Path:
    return paths.run / f"{name}.argv.json"


def _restarts_file(paths: StackPaths, name: str) -> Path:
    return paths.run / f"{name}.restarts.json"
