"""The benchmark harness end to end, so that it cannot rot: `python -m bench.run --smoke --only PARTS` measures a
few cheap parts of each kind on the stack at tiny sizes (the oracle's randomized workload against its brute-force
SQL computation; online reads and writes; freshness through Feast; fetch + score on a Redis of its own; validate),
merges their keys into a copy of the last full run's results (bench/results/latest.json), as `--only` does, and
renders the report from the merge.

The other parts' guarantees have tests of their own: the fault matrix's faults (test_lifecycle kills every
supervised process, test_streaming the driver, test_cluster an executor, test_cdc Connect and the broker, and the
dead-letter tests the hostile input), the drains' engine (tests/unit/test_engine.py), security
(test_security), the models (test_models), the backfill (test_batch), the report of a whole run
(tests/unit/test_report.py). `make bench` runs them all, the whole fault matrix and the drains included."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from numbers import Number

import pytest

from bench.report import fmt
from cdcf.settings import PROJECT_ROOT

pytestmark = pytest.mark.integration

RECORDED = PROJECT_ROOT / "bench" / "results" / "latest.json"
PARTS = ("oracle", "reads", "writes", "freshness", "inference", "validate")
KEYS = (  # what those parts measure
    "oracle_online_match oracle_offline_match online_read_1_p50_ms online_read_1_p99_ms online_read_1_raw_p50_ms "
    "online_read_100_p50_ms online_read_100_p99_ms online_read_100_raw_p50_ms online_read_100_feast_p50_ms "
    "write_rows_per_s write_feast_push_rows_per_s freshness_p50_s freshness_p99_s infer_1_p99_ms infer_100_p99_ms "
    "infer_1024_p99_ms validate_match"
).split()


@pytest.fixture(scope="module")
def smoke(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    shutil.copy(RECORDED, out / "latest.json")
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--only", ",".join(PARTS), "--out", str(out), "--seed", "4242"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=590,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, json.loads((out / "latest.json").read_text()), json.loads(RECORDED.read_text())


def test_each_part_is_measured_and_merged_into_the_last_full_run(smoke):
    _, result, recorded = smoke
    assert result["reruns"][-1] | {"at": None} == {"parts": list(PARTS), "seed": 4242, "size": "smoke", "at": None}
    for key in KEYS:
        assert isinstance(result[key], Number) and not isinstance(result[key], bool), key
    assert result["infer_device"] in ("cpu", "cuda")
    assert result["online_read_100_raw_p50_ms"] > 0 and result["write_feast_push_rows_per_s"] > 0
    assert len(result["freshness_runs"]) == 2 and all(r["served"] > 0 for r in result["freshness_runs"])
    assert result["validate_match"] == 1.0 and 200 <= result["validate_compared"] != recorded["validate_compared"]
    assert result["machine"]["cpus"] >= 1 and result["machine"]["versions"]["feast"]
    states = result["machine"]["state"]  # each part's, beside its figures
    assert set(states) >= set(PARTS)
    for part in PARTS:
        assert states[part]["seconds"] > 0 and states[part]["ours_cores"] > 0 and isinstance(states[part]["fit"], bool)
    for key in ("faults_tried", "stream_drain_changes_per_s", "fraud_auc", "backfill_s"):  # the others' stay
        assert result[key] == recorded[key], key


def test_the_oracle_finds_every_value_exact(smoke):
    _, result, _ = smoke
    work = result["oracle_workload"]
    assert work["caught_up"] and work["duplicates_redelivered"] > 0
    assert {"insert_txn", "move_owner", "delete_txn", "backdated_txn"} <= set(work["changes"])
    assert result["oracle_online_compared"] > 100 and result["oracle_offline_streamed_compared"] > 50
    assert result["oracle_mismatches"] == []
    assert result["oracle_online_match"] == 1.0 and result["oracle_offline_match"] == 1.0


def test_the_report_is_rendered_from_the_merge(smoke):
    out, result, _ = smoke
    report = (out / "BENCHMARKS.md").read_text()
    for name in ("freshness_cdf.png", "read_latency.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    for key in ("freshness_p50_s", "online_read_1_p50_ms", "write_rows_per_s", "validate_match"):
        assert f"(`{key}`) | {fmt(result[key])} |" in report, key
    at = result["reruns"][-1]["at"]
    for part in PARTS:  # named as run again, at smoke sizes, with the machine's state while it ran
        assert f"{part} ({at}, seed 4242, smoke sizes)" in report, part
        assert f"\n| {part} | {result['machine']['state'][part]['seconds']:g} | " in report, part
    assert "No mismatches." in report
