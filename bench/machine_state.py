"""The machine's state beside each part of the benchmark (latest.json's ``machine.state``), from /proc: on these
shared VMs an absolute figure means little without it.

Two snapshots bracket each part of `python -m bench.run`; their difference gives, for that part:
- ``steal_pct``: the share of CPU time the hypervisor gave to other guests;
- ``load_1m``: the 1-minute load average at the part's end (our own processes included);
- ``busy_cores``: all CPU time used, in cores;
- ``ours_cores``: the CPU of the benchmark and the stack: the benchmark's process and its descendants, and every
  process whose command line, or an ancestor's, names the project, the stack's home or the stack's PostgreSQL
  cluster;
- ``others_cores``: the CPU of every other process, with the three busiest (``others_top``); kernel threads count
  apart (``kernel_cores``: their softirq and writeback work is mostly ours).

A part is unfit when ``steal_pct`` exceeds STEAL_MAX_PCT or ``others_cores`` exceeds OTHERS_MAX_CORES: another
guest or another process took enough of the 2 cores to move its figures. A process that both started and ended
within a part is not seen by the snapshots; ``busy_cores`` still counts it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from cdcf.settings import PROJECT_ROOT, Settings

STEAL_MAX_PCT = 5.0
OTHERS_MAX_CORES = 0.25
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
KTHREADD = 2  # the parent of every kernel thread


@dataclass(frozen=True)
class Process:
    parent: int
    name: str
    command: str
    started: int  # clock ticks after boot: a reused pid is another process
    ticks: int  # user + system CPU


@dataclass(frozen=True)
class Snapshot:
    at: float
    cpu: tuple[int, ...]  # /proc/stat's cpu line: user nice system idle iowait irq softirq steal ...
    load_1m: float
    processes: dict[int, Process]


def snapshot(proc: Path = Path("/proc")) -> Snapshot:
    processes = {}
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # gone between the listing and the read
                continue
            name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
            # fields[0] is stat's 3rd field (state): ppid is the 4th, utime and stime the 14th and 15th, starttime
            # the 22nd
            processes[int(entry.name)] = Process(
                int(fields[1]), name, command[:500], int(fields[19]), int(fields[11]) + int(fields[12])
            )
    cpu = tuple(int(v) for v in (proc / "stat").read_text().splitlines()[0].split()[1:])
    return Snapshot(time.time(), cpu, float((proc / "loadavg").read_text().split()[0]), processes)


def marks(settings: Settings) -> tuple[str, ...]:
    """What in a command line makes a process ours: the project, the stack's home, the stack's PostgreSQL cluster
    (its server's config file; its backends are the server's children)."""
    return (str(PROJECT_ROOT), str(settings.paths.home), f"/{settings.pg_cluster}/postgresql.conf")


def summary(
    before: Snapshot, after: Snapshot, ours_marks: tuple[str, ...], roots: frozenset[int] = frozenset({os.getpid()})
) -> dict:
    """The part between two snapshots (module docstring); ``roots``: processes ours with their descendants."""
    seconds = max(after.at - before.at, 1e-9)
    delta = [a - b for a, b in zip(after.cpu, before.cpu, strict=False)]
    total = sum(delta[:8]) or 1
    idle = delta[3] + delta[4]
    used: dict[str, float] = {"ours": 0.0, "others": 0.0, "kernel": 0.0}
    others: dict[str, float] = {}
    for pid, p in after.processes.items():
        earlier = before.processes.get(pid)
        cpu_s = (p.ticks - (earlier.ticks if earlier and earlier.started == p.started else 0)) * TICK_S
        if cpu_s <= 0:
            continue
        kind = _kind(pid, after.processes, ours_marks, roots)
        used[kind] += cpu_s
        if kind == "others":
            others[p.name] = others.get(p.name, 0.0) + cpu_s
    steal_pct = 100 * delta[7] / total
    others_cores = used["others"] / seconds
    return {
        "seconds": round(seconds, 1),
        "steal_pct": round(steal_pct, 2),
        "load_1m": after.load_1m,
        "busy_cores": round((total - idle) * TICK_S / seconds, 2),
        "ours_cores": round(used["ours"] / seconds, 2),
        "others_cores": round(others_cores, 2),
        "kernel_cores": round(used["kernel"] / seconds, 2),
        "others_top": [[name, round(s, 1)] for name, s in sorted(others.items(), key=lambda i: -i[1])[:3]],
        "fit": steal_pct <= STEAL_MAX_PCT and others_cores <= OTHERS_MAX_CORES,
    }


def _kind(pid: int, processes: dict[int, Process], ours_marks: tuple[str, ...], roots: frozenset[int]) -> str:
    seen = set()
    while pid in processes and pid not in seen:
        seen.add(pid)
        p = processes[pid]
        if pid == KTHREADD or p.parent == KTHREADD:
            return "kernel"
        if pid in roots or any(mark in p.command for mark in ours_marks):
            return "ours"
        pid = p.parent
    return "others"


def section(states: dict[str, dict] | None) -> list[str]:
    """BENCHMARKS.md's account of the machine during each part, an unfit part flagged."""
    lines = ["## The machine during each part", ""]
    if not states:
        return [*lines, "Not recorded in this run (bench/machine_state.py records it from now on).", ""]
    unfit = [part for part, s in states.items() if not s["fit"]]
    verdict = f"**{', '.join(unfit)}**; rerun {'it' if len(unfit) == 1 else 'them'} with `--only`" if unfit else "none"
    lines += [
        f"Each part's figures beside what else ran (bench/machine_state.py). A part is **unfit** when steal exceeds "
        f"{STEAL_MAX_PCT:g} % or processes outside the benchmark and the stack use more than {OTHERS_MAX_CORES:g} "
        f"core. Unfit in this run: {verdict}.",
        "",
        "| part | seconds | steal % | load (1 min) | busy cores | ours | others (busiest) | kernel | fit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part, s in states.items():
        top = ", ".join(f"{name} {cpu_s:g} s" for name, cpu_s in s["others_top"])
        lines.append(
            f"| {part} | {s['seconds']:g} | {s['steal_pct']:g} | {s['load_1m']:g} | {s['busy_cores']:g} | "
            f"{s['ours_cores']:g} | {s['others_cores']:g}{f' ({top})' if top else ''} | {s['kernel_cores']:g} | "
            f"{'yes' if s['fit'] else '**unfit**'} |"
        )
    return [*lines, ""]
