"""Monitoring's configuration: the alert rules (deploy/prometheus/alerts.yml) pass promtool's unit tests and each
fires in one; compose's Prometheus, Alertmanager and Grafana (deploy/) match the local stack's; every metric a rule
or a dashboard panel reads is one our code exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from cdcf.settings import PROJECT_ROOT
from ops.stack.monitoring import ALERTMANAGER_CONFIG, RULES

TESTS = RULES.with_name("alerts_test.yml")
OURS = ("cdcf", "connectors", "streaming", "inference")
DEPLOY = PROJECT_ROOT / "deploy"
COMPOSE = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())["services"]
DASHBOARD = json.loads((DEPLOY / "grafana" / "dashboards" / "cdcf.json").read_text())
PANEL_EXPRS = [target["expr"] for panel in DASHBOARD["panels"] for target in panel["targets"]]


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_finds_the_rules_valid_and_their_tests_pass():
    promtool = shutil.which("promtool")
    assert promtool, "promtool comes with Debian's prometheus package: `make install`"
    checked = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool, "test", "rules", TESTS.name], cwd=TESTS.parent, capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_rule_is_tested_firing():
    fired = {
        case["alertname"]
        for test in yaml.safe_load(TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert {rule["alert"] for rule in _rules()} == fired


def _unexported(expr: str) -> set[str]:
    """The metrics ``expr`` reads that no code of ours defines (by name, less a counter's or histogram's suffix)."""
    source = "".join(p.read_text() for package in OURS for p in (PROJECT_ROOT / package).rglob("*.py"))
    return {
        metric
        for metric in re.findall(r"\b(cdcf_[a-z_]+)", expr)
        if f'"{re.sub(r"_(total|bucket|count|sum)$", "", metric)}"' not in source
    }


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_a_rule_reads_only_metrics_we_export(rule):
    assert not _unexported(rule["expr"]), rule["alert"]


def test_composes_prometheus_scrapes_our_services_with_the_local_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    prometheus = COMPOSE["prometheus"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in prometheus["volumes"] if v.startswith("./"))
    assert mounts["./deploy/prometheus/alerts.yml"] in config["rule_files"]
    assert mounts["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    for job in ("archiver", "streaming"):  # each with /metrics on all its interfaces, at the scraped port
        env = COMPOSE[job]["environment"]
        assert targets[job] == [f"{job}:{env['CDCF_METRICS_PORT']}"] and env["CDCF_METRICS_HOST"] == "0.0.0.0"
    api_port = re.search(r"serve-scores .*--port (\d+)", " ".join(COMPOSE["gpu-node"]["command"])).group(1)
    assert targets["model-api"] == [f"gpu-node:{api_port}"]
    assert "--metrics" in COMPOSE["feature-server"]["command"][-1] and targets["feature-server"] == [
        "feature-server:8000"
    ]
    (alertmanager,) = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert alertmanager == f"alertmanager:{COMPOSE['alertmanager']['ports'][0].rsplit(':', 1)[1]}"
    assert yaml.safe_load((DEPLOY / "prometheus" / "alertmanager.yml").read_text()) == ALERTMANAGER_CONFIG


def test_grafanas_dashboard_is_provisioned_on_prometheus_and_shows_the_pipeline():
    (source,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    (provider,) = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "cdcf.yml").read_text())[
        "providers"
    ]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in COMPOSE["grafana"]["volumes"]
    assert DASHBOARD["uid"] and len({p["id"] for p in DASHBOARD["panels"]}) == len(DASHBOARD["panels"])
    for panel in DASHBOARD["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] and t["expr"] for t in panel["targets"]), panel["title"]
    for expr in PANEL_EXPRS:
        assert not _unexported(expr), expr
    shown = " ".join(PANEL_EXPRS)  # freshness, throughput, lag, dead letters, scoring latency
    for metric in (
        "cdcf_freshness_seconds_bucket",
        "cdcf_archive_changes_total",
        "cdcf_stream_feature_rows_total",
        "cdcf_archive_lag_messages",
        "cdcf_stream_offsets_behind",
        "cdcf_dead_letters_total",
        "cdcf_api_request_seconds_bucket",
    ):
        assert metric in shown, metric
