"""Session fixtures: the real local stack, started if it is not running. They yield settings (addresses)."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cdcf.settings import PROJECT_ROOT, default_home, ensure_secrets, load_settings
from ops import stack
from ops.stack.supervisor import RESTART_WINDOW_S
from ops.workload import Workload
from tests.stack_lock import EXCLUSIVE, OWNER, StackLock, keep_between, mode_of

CDCF = str(Path(sys.executable).with_name("cdcf"))
BUDGET_S = 20 * 60  # the suite's budget on the 2-core box, install and `make demo` excluded (README, "Tests")
_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The suite's own total against its budget, after pytest's list of the slowest tests."""
    took = time.monotonic() - _STARTED
    verdict = "within" if took <= BUDGET_S else "OVER"
    terminalreporter.write_line(f"suite: {took:.0f} s, {verdict} its budget of {BUDGET_S} s")


def pytest_collection_modifyitems(items) -> None:
    """The order in which the workers take the files (pytest-xdist, --no-loadscope-reorder): those that run a side
    stack of their own first (the longest, and they hold no lock), then the main stack's, the unit tests last, to
    fill a worker that would otherwise wait for the main stack."""
    items.sort(key=lambda i: 0 if i.get_closest_marker("apart") else 1 if i.get_closest_marker("integration") else 2)


_LOCK: StackLock | None = None


def _lock() -> StackLock:
    """This worker's hold on the main stack (tests/stack_lock.py), in the stack's home."""
    global _LOCK
    if _LOCK is None:
        _LOCK = StackLock(default_home(), os.environ.get("PYTEST_XDIST_WORKER", "main"))
    return _LOCK


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """pytest-xdist's loadfile, but just in time and with the stack's lock in mind (tests/schedule.py)."""
    from tests.schedule import StackScheduling

    return StackScheduling(config, log, default_home() / OWNER)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    """Before any fixture of the test: hold the main stack as the test needs it."""
    _lock().hold(mode_of(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After the test's fixtures are torn down (a module's too, when the next test is in another module): let go,
    unless the next test goes on with the same module's exclusive hold."""
    try:
        return (yield)
    finally:
        if not keep_between(item, nextitem):
            _lock().hold(None)


@pytest.fixture(scope="session")
def settings():
    """Settings of the main local stack, brought up (idempotently) for the whole session: by one worker at a time,
    with the stack to itself (a test that stopped the streaming job must not see it started under it)."""
    lock = _lock()
    needed = lock.held
    lock.hold(EXCLUSIVE)
    try:
        ensure_secrets(default_home())
        s = load_settings()
        stack.up(s)
    finally:
        lock.hold(needed)
    return s


@pytest.fixture
def side_home(tmp_path, settings):
    """A separate stack home sharing the main caches (jars, the compiled engine) and secrets, for runs that must not
    touch the main one."""
    home = tmp_path / "stack"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "jars").symlink_to(settings.paths.jars)
    (home / "cache" / "engine").symlink_to(settings.paths.cache / "engine")
    shutil.copy(settings.paths.secrets, home / "secrets.env")
    return home


def fresh_workload(settings, seed: int | None = None) -> Workload:
    """A workload on users and products of its own (a fresh id range): its updates, moves and deletes touch no
    other test's rows, and no history an older run left on the same stack."""
    return Workload(
        settings,
        seed=random.randrange(10**6) if seed is None else seed,
        entity_base=random.randrange(10**4, 10**7) * 10**5,
    )


def wait_for(check, timeout_s: float, what: str | Callable[[], str]):
    """Poll ``check`` every 0.5 s until it returns something truthy (returned); fail after ``timeout_s``, saying
    ``what`` was awaited (a callable: called then, to say what was found)."""
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what() if callable(what) else what}")
        time.sleep(0.5)
    return result


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the `cdcf` CLI as a user would, from the project root."""
    return subprocess.run(
        [CDCF, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
    )


def healthy_status(*args: str) -> subprocess.CompletedProcess:
    """`cdcf status ARGS` once it exits 0: a restart or a dead letter of a test before (or beside) counts as trouble
    for RESTART_WINDOW_S, so that long and a half is waited out."""
    seen = []

    def healthy():
        seen.append(run_cli("status", *args, timeout=120))
        return seen[-1].returncode == 0 and seen[-1]

    return wait_for(healthy, RESTART_WINDOW_S * 1.5, lambda: f"a healthy status:\n{seen[-1].stdout}{seen[-1].stderr}")
