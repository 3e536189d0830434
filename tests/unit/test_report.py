"""The benchmark's report (bench/report.py) on the results of the last full run (bench/results/latest.json): every
benchmark key of docs/semantics.md#benchmark-keys in the summary with its value, the plots written and linked, the
fault matrix and the oracle's verdict. The smoke run (tests/integration/test_bench.py) renders it again on results
it measured itself."""

from __future__ import annotations

import itertools
import json
import re
from numbers import Number

from bench.report import ROWS, fmt, render
from cdcf.settings import PROJECT_ROOT

RECORDED = PROJECT_ROOT / "bench" / "results" / "latest.json"
PLOTS = ("freshness_cdf.png", "capacity_sweep.png", "read_latency.png", "training_set.png")


def test_the_report_of_a_full_run_has_every_key_and_its_plots(tmp_path):
    result = json.loads(RECORDED.read_text())
    render(result, tmp_path, tmp_path / "BENCHMARKS.md")
    report = (tmp_path / "BENCHMARKS.md").read_text()
    for name in PLOTS:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    for key, *_ in ROWS:
        assert f"(`{key}`) | {fmt(result[key])} |" in report, key
    assert "## Fault matrix" in report
    for fault in result["faults"]:
        assert f"| {fault['scenario']} |" in report, fault["scenario"]
    assert ("No mismatches." in report) == (result["oracle_mismatches"] == [])


def test_the_recorded_run_measured_every_documented_key():
    result = json.loads(RECORDED.read_text())
    keys = documented_keys()
    assert len(keys) > 40 and "online_read_100_p99_ms" in keys and "infer_1024_p99_ms" in keys
    for key in keys:
        if key == "infer_device":
            assert result[key] in ("cpu", "cuda")
        else:
            assert isinstance(result[key], Number) and not isinstance(result[key], bool), key


def documented_keys() -> list[str]:
    """The keys docs/semantics.md#benchmark-keys names, braces expanded (``online_read_{1,100}_p99_ms``)."""
    section = (PROJECT_ROOT / "docs" / "semantics.md").read_text().split("## Benchmark keys", 1)[1]
    names = [
        n
        for line in section.splitlines()
        if line.startswith("| `")
        for n in re.findall(r"`([^`]+)`", line.split("|")[1])
    ]
    keys = []
    for name in names:
        parts = re.split(r"\{([^}]*)\}", name)  # text, choices, text, choices, ...
        choices = [[p] if n % 2 == 0 else p.split(",") for n, p in enumerate(parts)]
        keys += ["".join(c) for c in itertools.product(*choices)]
    return keys
