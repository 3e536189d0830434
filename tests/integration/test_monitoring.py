"""Prometheus on the local stack: it scrapes the archiver and the streaming job, their counters are the changes a
workload committed, and stopping Kafka Connect fires the alert that says so, through Prometheus to Alertmanager."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
import yaml

from cdcf.errors import ServiceError
from cdcf.settings import PROJECT_ROOT
from ops.stack import kafka, monitoring
from ops.stack.background import STREAMING
from ops.stack.monitoring import RULES
from tests.conftest import fresh_workload, healthy_status, wait_for

pytestmark = pytest.mark.integration


def _value(settings, query: str) -> float | None:
    """The one value of an instant query (None: no series)."""
    result = monitoring.api(settings, f"query?query={quote(query)}")["result"]
    assert len(result) <= 1, result
    return float(result[0]["value"][1]) if result else None


def _steady(settings, query: str) -> float:
    """The value of ``query`` once two scrapes (5 s apart) agree on it."""
    seen: list[float | None] = []

    def agreed():
        seen.append(_value(settings, query))
        return len(seen) > 12 and seen[-1] is not None and seen[-1] == seen[-13]  # 6 s apart, polled every 0.5 s

    wait_for(agreed, 120, lambda: f"{query} to settle (last {seen[-3:]})")
    return seen[-1]


def _firing(settings, alertname: str) -> list[dict]:
    return [a for a in monitoring.alerts(settings) if a["labels"]["alertname"] == alertname]


@pytest.mark.exclusive
def test_prometheus_scrapes_our_processes_and_their_counters_are_the_changes(settings):
    def scraped() -> dict[str, str]:
        return {t["labels"]["job"]: t["health"] for t in monitoring.api(settings, "targets")["activeTargets"]}

    wait_for(
        lambda: all(scraped().get(job) == "up" for job in ("archiver", "streaming", "prometheus")),
        60,
        lambda: f"Prometheus to scrape the archiver, the streaming job and itself (targets: {scraped()})",
    )
    assert set(scraped()) <= {"archiver", "streaming", "prometheus", "model-api"}
    wait_for(lambda: _value(settings, "sum(cdcf_archive_lag_messages)") == 0, 120, "the archiver to catch up")
    archived = _steady(settings, "cdcf_archive_changes_total")
    emitted = _steady(settings, "cdcf_freshness_seconds_count")
    batches = _value(settings, "cdcf_stream_batches_total")

    committed = sum(fresh_workload(settings).run(rate=100, duration_s=5, burst_every_s=0).values())
    assert committed > 300
    wait_for(
        lambda: _value(settings, "cdcf_archive_changes_total") == archived + committed,
        120,
        lambda: f"archived {_value(settings, 'cdcf_archive_changes_total') - archived} of {committed} changes",
    )
    wait_for(lambda: _value(settings, "cdcf_freshness_seconds_count") > emitted, 60, "the emits of the workload")
    assert _value(settings, "cdcf_stream_batches_total") > batches
    assert _value(settings, "cdcf_dead_letters_total") is not None
    # every emitted row passed the value checks (cdcf.quality), and they saw the workload's rows
    assert _value(settings, "sum(cdcf_feature_check_violations_total)") == 0
    assert (
        _value(settings, "cdcf_feature_values_checked_total") > _value(settings, "cdcf_feature_null_values_total") > 0
    )
    p99 = _value(settings, "histogram_quantile(0.99, sum by (le) (increase(cdcf_freshness_seconds_bucket[2m])))")
    assert 0 < p99 <= 300, p99
    slot = settings.replication_slot
    assert _value(settings, f'cdcf_replication_slot_wal_status{{slot="{slot}", wal_status="reserved"}}') == 1
    assert _value(settings, f'cdcf_replication_slot_retained_wal_bytes{{slot="{slot}"}}') >= 0
    assert _value(settings, 'count(ALERTS{alertname="ReplicationSlotNotReserved"})') is None


def test_every_dashboard_query_is_valid_promql_with_data_behind_it(settings):
    """Grafana's dashboard (compose) asks Prometheus these; the local one, holding the same metrics, answers them."""
    dashboard = json.loads((PROJECT_ROOT / "deploy" / "grafana" / "dashboards" / "cdcf.json").read_text())
    answered = {}
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            answered[target["expr"]] = monitoring.api(settings, f"query?query={quote(target['expr'])}")["result"]
    api_only = {e for e in answered if "cdcf_api_request_seconds" in e}  # the model API is not part of `make up`
    assert all(answered[e] for e in set(answered) - api_only), [e for e, r in answered.items() if not r]


def test_status_watch_refreshes_health_with_throughput_freshness_and_lag(settings):
    watched = healthy_status("--watch", "--count", "3", "--interval", "0.5")
    frames = re.split(r"^\d\d:\d\d:\d\d UTC \(every 0.5 s; Ctrl-C stops\)$", watched.stdout, flags=re.M)[1:]
    assert len(frames) == 3, watched.stdout  # (the screen is cleared before each on a terminal only)
    for frame in frames:
        lines = frame.strip().splitlines()
        assert [line.split()[0] for line in lines[:9]] == [
            "postgres",
            "redis",
            "kafka",
            "connect",
            "feast",
            "archiver",
            "streaming",
            "prometheus",
            "alertmanager",
        ]
        assert [line.split(":")[0] for line in lines[9:]] == ["throughput", "freshness", "lag", "alerts"], lines
        assert re.search(r"lag: +archiver \d+ messages, streaming \d+ offsets, clock [\d.]+ s old", frame), frame


@pytest.mark.exclusive
def test_stopping_kafka_connect_fires_the_clock_alert_through_alertmanager(settings, scaled_clock_rule):
    """StreamingClockStopped, from alerts.yml, at a tenth of its threshold and `for` (promtool's tests hold the rule
    itself to its times): stopping Connect fires it through Prometheus to Alertmanager, and it resolves once
    Connect commits offsets again."""
    assert not _firing(settings, "StreamingClockStopped")
    kafka.stop(settings, kafka.CONNECT)
    try:
        (alert,) = wait_for(
            lambda: _firing(settings, "StreamingClockStopped"),
            120,
            "StreamingClockStopped to fire with Kafka Connect stopped",
        )
        assert alert["labels"]["job"] == "streaming" and alert["labels"]["severity"] == "page"
        assert alert["labels"]["rules"] == scaled_clock_rule
        assert "is Kafka Connect running?" in alert["annotations"]["summary"]
        wait_for(
            lambda: [
                a
                for a in monitoring.received(settings)
                if a["labels"]["alertname"] == "StreamingClockStopped" and a["status"]["state"] == "active"
            ],
            60,
            "Alertmanager to receive the alert",
        )
    finally:
        kafka.start_connect(settings)
    wait_for(
        lambda: not _firing(settings, "StreamingClockStopped"),
        180,
        "the alert to resolve once Connect commits offsets again",
    )
    wait_for(lambda: _healthy(settings), 60, "the streaming job to be healthy again")


@pytest.fixture
def scaled_clock_rule(settings):
    """alerts.yml's StreamingClockStopped with its threshold and `for` divided by 6, loaded beside the real rules
    (the label ``rules`` tells its alerts apart); yields that label's value, and takes the rule out again."""
    (rule,) = [
        r
        for g in yaml.safe_load(RULES.read_text())["groups"]
        for r in g["rules"]
        if r["alert"] == "StreamingClockStopped"
    ]
    assert rule["expr"] == "cdcf_stream_clock_age_seconds > 60" and rule["for"] == "30s", rule  # what is scaled
    label = "scaled-for-tests"
    scaled = {
        **rule,
        "expr": "cdcf_stream_clock_age_seconds > 10",
        "for": "5s",
        "labels": {**rule["labels"], "rules": label},
    }
    path = monitoring.rules_dir(settings) / "scaled-clock.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": label, "rules": [scaled]}]}))
    monitoring.reload(settings)
    try:
        wait_for(lambda: _rule_loaded(settings, label), 30, "Prometheus to load the scaled rule")
        yield label
    finally:
        path.unlink()
        monitoring.reload(settings)
        wait_for(lambda: not _rule_loaded(settings, label), 30, "Prometheus to drop the scaled rule")


def _rule_loaded(settings, group: str) -> bool:
    return any(g["name"] == group for g in monitoring.api(settings, "rules")["groups"])


def _healthy(settings) -> bool:
    try:
        return bool(STREAMING.health(settings))
    except ServiceError:
        return False
