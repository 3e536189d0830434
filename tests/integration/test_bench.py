"""The benchmark harness at tiny sizes (`python -m bench.run --smoke`), so that it cannot rot: every key of
docs/semantics.md#benchmark-keys is a number, the report and its plots are written, and the oracle finds every
online and offline value of the randomized workload (duplicates included) equal to its brute-force SQL
computation."""

from __future__ import annotations

import json
import subprocess
import sys
from numbers import Number

import pytest

from bench.report import fmt
from cdcf.settings import PROJECT_ROOT

# the first test runs the whole smoke benchmark in its fixture (about ten minutes here), beyond the suite's 600 s
pytestmark = pytest.mark.timeout(1500)

KEYS = (
    "freshness_p50_s freshness_p99_s capacity_changes_per_s online_read_1_p50_ms online_read_1_p99_ms "
    "online_read_1_raw_p50_ms online_read_100_p50_ms online_read_100_p99_ms online_read_100_raw_p50_ms "
    "online_read_100_feast_p50_ms write_rows_per_s write_feast_push_rows_per_s pit_rows pit_s pit_feast_rows "
    "pit_feast_s backfill_changes backfill_s oracle_online_match oracle_offline_match infer_1_p99_ms "
    "infer_100_p99_ms infer_1024_p99_ms capture_changes_per_s archive_changes_per_s stream_drain_changes_per_s "
    "stream_cpu_us_per_change stream_scaling_ratio stream_state_bytes_per_entity fraud_auc recommend_hit_rate_at_10 "
    "recommend_popularity_hit_rate_at_10 segmentation_silhouette batch_score_users_per_s infer_fraud_1_p99_ms "
    "infer_recommend_p99_ms validate_match metrics_scrape_ms"
).split()


@pytest.fixture(scope="module")
def smoke(settings, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    run = subprocess.run(
        [sys.executable, "-m", "bench.run", "--smoke", "--out", str(out), "--seed", "4242"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, json.loads((out / "latest.json").read_text())


def test_every_benchmark_key_is_measured_beside_its_baseline(smoke):
    _, result = smoke
    for key in KEYS:
        assert isinstance(result[key], Number) and not isinstance(result[key], bool), key
    assert result["infer_device"] in ("cpu", "cuda")
    assert result["pit_rows"] == 500 and result["pit_feast_rows"] == 100 and result["backfill_changes"] > 2_000
    assert result["online_read_100_raw_p50_ms"] > 0 and result["write_feast_push_rows_per_s"] > 0
    assert result["machine"]["cpus"] >= 1 and result["machine"]["versions"]["feast"]
    assert result["workload"]["size"] == "smoke" and result["workload"]["seed"] == 4242
    assert len(result["freshness_runs"]) == 2 and all(r["served"] > 0 for r in result["freshness_runs"])
    assert result["capacity_steps"] and result["capacity_steps"][0]["target_changes_per_s"] == 100
    assert result["faults_tried"] == 2 and result["bad_inputs_tried"] == 1000
    assert result["validate_match"] == 1.0 and result["validate_compared"] >= 200
    assert {"archiver", "streaming"} <= set(result["metrics_scrapes"]), result["metrics_scrapes"]
    assert all(s["scrapes"] >= 5 and s["bytes"] > 1000 for s in result["metrics_scrapes"].values())
    assert isinstance(result["metrics_overhead_pct"], Number)
    runs = result["stream_drain_runs"]
    assert set(runs) == {"2", "1", "2, metrics off"} and all(r["changes"] == 5_000 for r in runs.values())


def test_the_oracle_finds_every_value_exact(smoke):
    _, result = smoke
    work = result["oracle_workload"]
    assert work["caught_up"] and work["duplicates_redelivered"] > 0
    assert {"insert_txn", "move_owner", "delete_txn", "backdated_txn"} <= set(work["changes"])
    assert result["oracle_online_compared"] > 100 and result["oracle_offline_streamed_compared"] > 50
    assert result["oracle_offline_backfilled_compared"] > 50
    assert result["oracle_mismatches"] == []
    assert result["oracle_online_match"] == 1.0 and result["oracle_offline_match"] == 1.0


def test_the_report_and_its_plots_are_written(smoke):
    out, result = smoke
    report = (out / "BENCHMARKS.md").read_text()
    for name in ("freshness_cdf.png", "capacity_sweep.png", "read_latency.png", "training_set.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"]({name})" in report
    for key in KEYS:
        if key not in (
            "pit_rows",
            "pit_feast_rows",
            "backfill_changes",
            "online_read_1_raw_p50_ms",
            "online_read_100_raw_p50_ms",
            "write_feast_push_rows_per_s",
            "pit_feast_s",
            "infer_1_p99_ms",
            "infer_100_p99_ms",
            "recommend_popularity_hit_rate_at_10",
        ):
            assert f"(`{key}`) | {fmt(result[key])} |" in report, key
    assert "No mismatches." in report
    assert (out / "segments.png").read_bytes()[:4] == b"\x89PNG" and "](segments.png)" in report
    assert "## Fault matrix" in report and "| kill_archiver |" in report


def test_the_fault_matrix_loses_nothing_counts_nothing_twice_and_stays_exact(smoke):
    """The smoke matrix (kill -9 of the archiver, 1,000 hostile messages) on its side stack; every check of a
    scenario must hold, and the hostile ones all become dead letters while both jobs keep their pids."""
    _, result = smoke
    by_name = {f["scenario"]: f for f in result["faults"]}
    assert set(by_name) == {"kill_archiver", "hostile_burst_1000"}, result["faults"]
    for _name, fault in by_name.items():
        assert "error" not in fault, fault
        assert fault["changes_committed"] > 100 and fault["changes_archived"] == fault["changes_committed"], fault
        assert (fault["lost"], fault["doubled"], fault["mismatches"]) == (0, 0, []), fault
        assert fault["oracle_online_compared"] > 100 and fault["oracle_offline_compared"] > 50, fault
        assert fault["survived"], fault
    killed = by_name["kill_archiver"]  # its decoding workers and their resource tracker went with it
    assert killed["archiver_children"] >= 2 and killed["archiver_children_left"] == 0, killed
    hostile = by_name["hostile_burst_1000"]
    assert hostile["dead_lettered"] == 1000 and hostile["archiver_pid_unchanged"] and hostile["job_pid_unchanged"]
    assert result["faults_survived"] == 2
