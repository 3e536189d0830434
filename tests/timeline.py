"""Where the suite's 20 minutes go, worker by worker (README "Tests").

``pytest -p tests.timeline`` appends each test's worker, start and end (fixtures and lock waits included) to
TIMELINE; ``python -m tests.timeline`` prints the run as spans of one file on one worker, in the order they began:
a worker that waits for the stack, idles at the end, or runs a long file late shows there.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from cdcf.settings import PROJECT_ROOT

TIMELINE = PROJECT_ROOT / ".pytest_cache" / "timeline.jsonl"


def pytest_sessionstart(session) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:  # the controller (or a run without workers) starts a new timeline
        TIMELINE.parent.mkdir(exist_ok=True)
        TIMELINE.write_text("")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.time()
    try:
        return (yield)
    finally:
        entry = {"worker": os.environ.get("PYTEST_XDIST_WORKER", "main"), "test": item.nodeid}
        with TIMELINE.open("a") as out:  # one short line per write: appends of both workers stay whole
            out.write(json.dumps(entry | {"start": started, "end": time.time()}) + "\n")


def spans(entries: list[dict]) -> list[tuple[str, str, float, float, int]]:
    """(worker, file, start, end, tests) of each run of consecutive tests of one file on one worker, seconds from
    the first test's start."""
    entries = sorted(entries, key=lambda e: e["start"])
    zero, last, out = entries[0]["start"] if entries else 0.0, {}, []
    for e in entries:
        file = e["test"].split("::", 1)[0]
        span = last.get(e["worker"])
        if span is None or span[1] != file:
            span = last[e["worker"]] = [e["worker"], file, e["start"] - zero, 0.0, 0]
            out.append(span)
        span[3], span[4] = e["end"] - zero, span[4] + 1
    return [tuple(s) for s in out]


if __name__ == "__main__":
    lines = TIMELINE.read_text().splitlines()
    for worker, file, start, end, tests in spans([json.loads(line) for line in lines]):
        print(f"{worker:5} {start:7.1f} {end:7.1f} {end - start:6.1f} s  {tests:3} tests  {file}")
