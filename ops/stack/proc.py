"""Our own background processes: spawn with a pid file, recognise by pid + command line, stop by pid."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from cdcf.errors import ServiceError
from cdcf.settings import StackPaths

log = logging.getLogger(__name__)


def spawn(
    paths: StackPaths, name: str, argv: Sequence[str], env: Mapping[str, str], log_name: str | None = None
) -> int:
    """Start ``argv`` detached (own session) with the environment ``env`` and nothing else (`Settings.environment`),
    output appended to ``logs/<log_name or name>.log``; return its pid."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.run.mkdir(parents=True, exist_ok=True)
    with paths.log(log_name or name).open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=dict(env),
        )
    paths.pid_file(name).write_text(f"{proc.pid}\n")
    log.info("started %s (pid %d)", name, proc.pid)
    return proc.pid


def our_pid(paths: StackPaths, name: str, marker: str) -> int | None:
    """The pid in ``run/<name>.pid`` if that process is alive and its command line contains ``marker``."""
    try:
        pid = int(paths.pid_file(name).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    if marker not in cmdline or _is_zombie(pid):
        return None
    return pid


def stop_pid(pid: int, name: str, timeout_s: float = 30.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns once the process is gone."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            log.info("stopped %s (pid %d)", name, pid)
            return
        time.sleep(0.2)
    log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, timeout_s)
    os.kill(pid, signal.SIGKILL)
    while alive(pid):
        time.sleep(0.1)


def port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free_port(host: str, port: int, service: str, setting: str) -> None:
    if port_open(host, port):
        raise ServiceError(
            f"Port {port} on {host} is already in use by a process that is not our {service}; stop that "
            f"process or choose another port with {setting}=<port>."
        )


def wait_until(
    check: Callable[[], object], *, timeout_s: float, what: str, log_file: Path | None = None, pid: int | None = None
) -> object:
    """Poll ``check`` until it returns a truthy value; raise with the last error and the log's tail on timeout."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if pid is not None and not alive(pid):
            raise ServiceError(f"{what} exited during start-up.{_tail(log_file)}")
        try:
            result = check()
            if result:
                return result
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready yet"
            last_error = exc
        time.sleep(0.25)
    detail = f" Last error: {last_error}." if last_error else ""
    raise ServiceError(f"{what} was not healthy within {timeout_s:.0f} s.{detail}{_tail(log_file)}")


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of ``pid`` in MiB (None when unknown)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def alive(pid: int) -> bool:
    """Running: not gone and not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # reap it if it is our own child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    return not _is_zombie(pid)


def children(pid: int) -> list[int]:
    """The pids of a process's children (Linux's /proc), none once it is gone."""
    try:
        return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    except FileNotFoundError:
        return []


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def last_line(log_file: Path) -> str:
    """The last non-blank line of a log (a traceback ends with its error), or ""."""
    try:
        with log_file.open("rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - 4096))
            lines = [line.strip() for line in fh.read().decode(errors="replace").splitlines() if line.strip()]
    except FileNotFoundError:
        return ""
    return lines[-1][:300] if lines else ""


def _tail(log_file: Path | None, lines: int = 5) -> str:
    if log_file is None or not log_file.exists():
        return ""
    tail = log_file.read_text(errors="replace").splitlines()[-lines:]
    return f" See {log_file}; it ends with: " + " | ".join(t.strip() for t in tail)
