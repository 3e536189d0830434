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
from ops.workload import Workload

CDCF = str(Path(sys.executable).with_name("cdcf"))
BUDGET_S = 20 * 60  # the suite's budget on the 2-core box, install and `make demo` excluded (README, "Tests")
_STARTED = time.monotonic()


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """The suite's own total against its budget, after pytest's list of the slowest tests."""
    took = time.monotonic() - _STARTED
    verdict = "within" if took <= BUDGET_S else "OVER"
    terminalreporter.write_line(f"suite: {took:.0f} s, {verdict} its budget of {BUDGET_S} s")


@pytest.fixture(scope="session")
def settings():
    """Settings of the main local stack, brought up (idempotently) for the whole session."""
    ensure_secrets(default_home())
    s = load_settings()
    stack.up(s)
    return s


@pytest.fixture
def side_home(tmp_path, settings):
    """A separate stack home sharing the main jar cache and secrets, for runs that must not touch the main one."""
    home = tmp_path / "stack"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "jars").symlink_to(settings.paths.jars)
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
