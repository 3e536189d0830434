"""The machine's state beside each benchmark part (bench/machine_state.py): whose CPU is whose, steal, the verdict
and its account in BENCHMARKS.md, on made-up snapshots of /proc and on this machine's own."""

from __future__ import annotations

import os
import time

from bench.machine_state import TICK_S, Process, Snapshot, section, snapshot, summary

MARKS = ("/work/proj", "/work/proj/.stack", "/cdcf/postgresql.conf")
HZ = round(1 / TICK_S)


def _snapshot(at: float, cpu: dict[str, int], ticks: dict[int, int], started: dict[int, int] | None = None) -> Snapshot:
    """A machine of: init, the kernel's threads, the stack's Redis under its supervisor, the stack's Postgres and a
    backend, the benchmark (started by a relative path) with a child, and apt-get and another guest's stray job."""
    tree = {
        1: (0, "systemd", "/sbin/init"),
        2: (0, "kthreadd", ""),
        50: (2, "kworker/0:1", ""),
        100: (1, "python3.11", "/work/proj/.venv/bin/python3.11 /work/proj/.venv/bin/cdcf supervise redis"),
        101: (100, "redis-server", "redis-server 127.0.0.1:6379"),
        200: (
            1,
            "postgres",
            "/usr/lib/postgresql/15/bin/postgres -c config_file=/etc/postgresql/15/cdcf/postgresql.conf",
        ),
        201: (200, "postgres", "postgres: 15/cdcf: walwriter"),
        400: (1, "python", ".venv/bin/python -m bench.run"),
        401: (400, "java", "/usr/lib/jvm/java-17/bin/java -cp spark.jar"),
        500: (1, "apt-get", "apt-get install foo"),
        501: (1, "stress", "stress --cpu 1"),
    }
    fields = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    return Snapshot(
        at,
        tuple(cpu.get(f, 0) for f in fields),
        0.5,
        {
            pid: Process(parent, name, command, (started or {}).get(pid, 7), ticks.get(pid, 0))
            for pid, (parent, name, command) in tree.items()
        },
    )


def test_each_process_counts_as_ours_others_or_the_kernels():
    before = _snapshot(0, {"user": 0, "idle": 0}, {101: 5 * HZ, 201: HZ, 501: 9 * HZ}, started={501: 3})
    after = _snapshot(
        10,
        {"user": 15 * HZ, "idle": 5 * HZ},
        # Redis 2 s, a Postgres backend 1 s, the benchmark 3 s and its JVM 4 s, a kernel thread 1 s, apt-get 2 s,
        # and under pid 501 a new process (another start time) of 1 s, not 1 - 9
        {101: 7 * HZ, 201: 2 * HZ, 400: 3 * HZ, 401: 4 * HZ, 50: HZ, 500: 2 * HZ, 501: HZ},
        started={501: 8},
    )
    state = summary(before, after, MARKS, roots=frozenset({400}))
    assert state["ours_cores"] == 1.0  # 10 s over 10 s
    assert state["others_cores"] == 0.3 and state["others_top"] == [["apt-get", 2.0], ["stress", 1.0]]
    assert state["kernel_cores"] == 0.1
    assert state["busy_cores"] == 1.5 and state["steal_pct"] == 0
    assert not state["fit"]  # 0.3 core of others


def test_steal_alone_makes_a_part_unfit():
    before = _snapshot(0, {}, {})
    quiet = _snapshot(10, {"user": 19 * HZ, "steal": HZ}, {101: 19 * HZ})
    assert summary(before, quiet, MARKS) | {"load_1m": None} == {
        "seconds": 10,
        "steal_pct": 5.0,
        "load_1m": None,
        "busy_cores": 2.0,
        "ours_cores": 1.9,
        "others_cores": 0,
        "kernel_cores": 0,
        "others_top": [],
        "fit": True,
    }
    stolen = _snapshot(10, {"user": 18 * HZ, "steal": 2 * HZ}, {101: 18 * HZ})
    assert summary(before, stolen, MARKS)["steal_pct"] == 10 and not summary(before, stolen, MARKS)["fit"]


def test_this_machine_is_read_from_proc():
    before = snapshot()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:  # 0.3 s of this process's CPU
        pass
    after = snapshot()
    me = after.processes[os.getpid()]
    assert me.ticks - before.processes[os.getpid()].ticks >= 0.25 / TICK_S
    assert me.parent == os.getppid() and len(after.cpu) >= 8 and after.at > before.at
    assert summary(before, after, ())["ours_cores"] > 0  # this process is the root of "ours"


def test_the_report_flags_an_unfit_part_and_says_when_nothing_was_recorded():
    assert "Not recorded in this run" in "\n".join(section(None))
    fit = {"seconds": 60, "steal_pct": 0.5, "load_1m": 2.1, "busy_cores": 1.8, "ours_cores": 1.7, "others_cores": 0.02}
    states = {
        "reads": fit | {"kernel_cores": 0.05, "others_top": [], "fit": True},
        "stream": fit | {"steal_pct": 12.0, "kernel_cores": 0.1, "others_top": [["apt-get", 3.0]], "fit": False},
    }
    lines = section(states)
    assert "Unfit in this run: **stream**; rerun it with `--only`." in "\n".join(lines)
    assert "| reads | 60 | 0.5 | 2.1 | 1.8 | 1.7 | 0.02 | 0.05 | yes |" in lines
    assert "| stream | 60 | 12 | 2.1 | 1.8 | 1.7 | 0.02 (apt-get 3 s) | 0.1 | **unfit** |" in lines
