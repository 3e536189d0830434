"""Who may use the main stack at once, when the suite runs on several workers (pytest-xdist, README "Tests").

Tests that only add entities of their own share the stack; a test marked ``exclusive`` (it stops, kills, flushes
or counts the whole stack) runs with no other test on it; a test marked ``apart`` runs its own processes and takes
no lock. Unit tests (no ``settings`` fixture) take none either.

A readers-writer lock over two files, with flock(2): a worker that wants the stack first passes a turnstile (an
exclusive lock held only while it waits), so a waiting exclusive test holds back new sharers and is never starved
by workers that keep taking turns with shared locks. The worker holding it exclusively writes its name in a third
file (``OWNER``), for the scheduler (tests/schedule.py) to give the other worker a test that needs no stack.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

SHARED, EXCLUSIVE = "shared", "exclusive"
OWNER = "tests.owner"


class StackLock:
    """Worker ``name``'s hold on the stack: none, shared or exclusive. Files in ``folder``, made if missing."""

    def __init__(self, folder: Path, name: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._turnstile = os.open(folder / "tests.turnstile", os.O_RDWR | os.O_CREAT, 0o600)
        self._stack = os.open(folder / "tests.lock", os.O_RDWR | os.O_CREAT, 0o600)
        self._owner = folder / OWNER
        self.name = name
        self.held: str | None = None

    def hold(self, mode: str | None) -> None:
        """Hold the stack in ``mode`` (None: let go), waiting as long as other workers need it otherwise."""
        if mode == self.held:
            return
        if self.held is not None:
            if self.held == EXCLUSIVE:
                self._owner.write_text("")
            fcntl.flock(self._stack, fcntl.LOCK_UN)
            self.held = None
        if mode is None:
            return
        fcntl.flock(self._turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(self._stack, fcntl.LOCK_EX if mode == EXCLUSIVE else fcntl.LOCK_SH)
        finally:
            fcntl.flock(self._turnstile, fcntl.LOCK_UN)
        self.held = mode
        if mode == EXCLUSIVE:
            self._owner.write_text(self.name)

    def close(self) -> None:
        self.hold(None)
        os.close(self._turnstile)
        os.close(self._stack)


def mode_of(item) -> str | None:
    """The hold a collected test needs: exclusive, shared (it uses the main stack's settings), or none."""
    if item.get_closest_marker("exclusive"):
        return EXCLUSIVE
    if item.get_closest_marker("apart") or "settings" not in getattr(item, "fixturenames", ()):
        return None
    return SHARED


def keep_between(item, nextitem) -> bool:
    """Whether an exclusive hold lasts from ``item`` to ``nextitem``: both exclusive and of one module, whose
    module-scoped fixtures (a stopped job, a flushed store) live on between them."""
    return nextitem is not None and mode_of(item) == mode_of(nextitem) == EXCLUSIVE and item.module is nextitem.module
