"""The alert rules (deploy/prometheus/alerts.yml): promtool's unit tests pass, every rule has a test in which it
fires, and every metric a rule reads is one our code exports."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from cdcf.settings import PROJECT_ROOT
from cdcf.stack.monitoring import RULES

TESTS = RULES.with_name("alerts_test.yml")
OURS = ("cdcf", "connectors", "streaming", "inference")


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
    fired = {case["alertname"] for test in yaml.safe_load(TESTS.read_text())["tests"]
             for case in test["alert_rule_test"] if case.get("exp_alerts")}
    assert {rule["alert"] for rule in _rules()} == fired


@pytest.mark.parametrize("rule", _rules(), ids=lambda rule: rule["alert"])
def test_a_rule_reads_only_metrics_we_export(rule):
    source = "".join(p.read_text() for package in OURS for p in (PROJECT_ROOT / package).rglob("*.py"))
    for metric in set(re.findall(r"\b(cdcf_[a-z_]+)", rule["expr"])):
        base = re.sub(r"_(total|bucket|count|sum)$", "", metric)
        assert f'"{base}"' in source, f"{rule['alert']} reads {metric}, which no process exports"
