"""Which test file a pytest-xdist worker takes next (README "Tests"; conftest's ``pytest_xdist_make_scheduler``).

pytest-xdist's ``loadfile`` hands out whole files (module fixtures such as a stopped job stay on one worker) in
collection order, and queues a worker's next file as soon as it is down to two tests: a file could wait behind a
six-minute test while the other worker ran dry. Here a worker gets its next file only when it starts its last test
(it cannot run a test before it knows the next one), and while the other worker holds the main stack alone, the
next file is a unit test's (they take no lock) rather than one that would wait for the stack. The slow unit file
is handed out in two halves, so both workers can fill such waits with it.
"""

from __future__ import annotations

from pathlib import Path

from xdist.scheduler import LoadScopeScheduling

SPREAD = ("tests/unit/test_engine.py",)  # minutes of Spark micro-batches: handed out in halves (a JVM each)
LOCK_FREE = "tests/unit/"


class StackScheduling(LoadScopeScheduling):
    """Files as units, just in time, unit tests first while the other worker has the stack to itself."""

    def __init__(self, config, log, owner_file: Path) -> None:
        super().__init__(config, log)
        self.owner_file = owner_file  # StackLock's record of the worker holding the stack exclusively
        self._scopes: dict[str, str] = {}
        self._spread: dict[str, int] = {}

    def _split_scope(self, nodeid: str) -> str:
        """The file, or for a SPREAD file one of its halves: every other test, in the order collected (the first
        call for each test is in that order)."""
        if nodeid not in self._scopes:
            path = nodeid.split("::", 1)[0]
            if path in SPREAD:
                n = self._spread[path] = self._spread.get(path, -1) + 1
                path = f"{path}#{n % 2}"
            self._scopes[nodeid] = path
        return self._scopes[nodeid]

    def _reschedule(self, node) -> None:
        if node.shutting_down or not self.workqueue or self._pending_of(self.assigned_work[node]) <= 1:
            super()._reschedule(node)  # its last test waits for the next one: give it the next file now

    def _assign_work_unit(self, node) -> None:
        if self._held_by_another(node.gateway.id):
            free = next((scope for scope in self.workqueue if scope.startswith(LOCK_FREE)), None)
            if free is not None:
                self.workqueue.move_to_end(free, last=False)
        super()._assign_work_unit(node)

    def _held_by_another(self, worker: str) -> bool:
        try:
            owner = self.owner_file.read_text().strip()
        except OSError:
            return False
        return owner not in ("", worker)
