"""Prometheus and Alertmanager from Debian's packages, run as our own supervised processes.

Prometheus scrapes every endpoint our processes announce (``cdcf.exporter``: ``<home>/run/metrics/*.json``) and
evaluates the alert rules of ``deploy/prometheus/alerts.yml``, the same file compose mounts; firing alerts go to
Alertmanager. Both listen on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cdcf.errors import ServiceError
from cdcf.exporter import targets_dir
from cdcf.settings import PROJECT_ROOT, Settings
from ops.stack import proc, supervisor

RULES = PROJECT_ROOT / "deploy" / "prometheus" / "alerts.yml"
INTERVAL = "5s"  # scrape and rule evaluation: alerts fire within seconds of their `for`


def rules_dir(settings: Settings) -> Path:
    """Alert rules of one's own beside ours (``*.yml`` there; Prometheus loads a change on SIGHUP, ``reload``)."""
    return settings.paths.conf / "rules.d"


def prometheus_config(settings: Settings, targets: Path, rules: Path = RULES) -> dict:
    """Prometheus's configuration: our processes through file_sd, the rules (ours and ``rules_dir``'s),
    Alertmanager."""
    return {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(rules), str(rules_dir(settings) / "*.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{settings.alertmanager_port}"]}]}]},
        "scrape_configs": [
            {
                "job_name": "cdcf",
                "file_sd_configs": [{"files": [str(targets / "*.json")], "refresh_interval": INTERVAL}],
            },
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{settings.prometheus_port}"]}]},
        ],
    }


ALERTMANAGER_CONFIG = {  # alerts are kept and shown (its API, `amtool`); where to send them is the operator's choice
    "route": {"receiver": "log", "group_by": ["alertname"], "group_wait": "5s", "repeat_interval": "4h"},
    "receivers": [{"name": "log"}],
}


@dataclass(frozen=True)
class Server:
    name: str
    title: str
    binary: str  # Debian's executable
    package: str
    port_field: str  # the setting that holds its port
    storage: Callable[[Path], tuple[str, ...]]  # its flags for its data folder, and any other of its own
    config: Callable[[Settings], dict]
    line: Callable[[Settings, str], str]  # its status line, given its URL

    def port(self, settings: Settings) -> int:
        return getattr(settings, self.port_field)

    def url(self, settings: Settings) -> str:
        return f"http://127.0.0.1:{self.port(settings)}"

    def conf(self, settings: Settings) -> Path:
        return settings.paths.conf / f"{self.name}.yml"

    def argv(self, settings: Settings) -> list[str]:
        return [
            self.binary,
            f"--config.file={self.conf(settings)}",
            *self.storage(settings.paths.data / self.name),
            f"--web.listen-address=127.0.0.1:{self.port(settings)}",
        ]

    def write_conf(self, settings: Settings) -> None:
        rules_dir(settings).mkdir(parents=True, exist_ok=True)
        self.conf(settings).write_text(json.dumps(self.config(settings), indent=2) + "\n")  # JSON is YAML
        (settings.paths.data / self.name).mkdir(parents=True, exist_ok=True)
        targets_dir(settings).mkdir(parents=True, exist_ok=True)

    def start(self, settings: Settings) -> None:
        self.write_conf(settings)
        if supervisor.running(settings.paths, self.name, self.pid(settings)):
            return
        if shutil.which(self.binary) is None:
            raise ServiceError(f"{self.binary} is not installed; run `make install` (apt-get install {self.package}).")
        proc.require_free_port("127.0.0.1", self.port(settings), self.title, f"CDCF_{self.port_field.upper()}")
        supervisor.start_service(
            settings,
            self.name,
            self.argv(settings),
            lambda: self.ready(settings),
            timeout_s=settings.start_timeout_s,
        )

    def stop(self, settings: Settings) -> None:
        supervisor.stop(settings.paths, self.name)
        running = self.pid(settings)
        if running:
            proc.stop_pid(running, self.name)

    def pid(self, settings: Settings) -> int | None:
        return proc.our_pid(settings.paths, self.name, f"--config.file={self.conf(settings)}")

    def ready(self, settings: Settings) -> bool:
        with urllib.request.urlopen(f"{self.url(settings)}/-/ready", timeout=3) as response:
            return response.status == 200

    def health(self, settings: Settings) -> str:
        try:
            self.ready(settings)
        except OSError as exc:
            raise ServiceError(
                f"{self.title} at {self.url(settings)} does not answer ({exc}); see {settings.paths.log(self.name)}."
            ) from exc
        return self.line(settings, self.url(settings))


def _prometheus_line(settings: Settings, url: str) -> str:
    firing = [a["labels"]["alertname"] for a in alerts(settings)]
    targets = api(settings, "targets")["activeTargets"]
    down = sorted(t["labels"]["job"] for t in targets if t["health"] == "down")
    return (
        f"Prometheus on {url}, {len(targets) - len(down)}/{len(targets)} targets up"
        + (f" (down: {', '.join(down)})" if down else "")
        + (f"; firing: {', '.join(sorted(set(firing)))}" if firing else "; no alert firing")
    )


PROMETHEUS = Server(
    "prometheus",
    "Prometheus",
    "prometheus",
    "prometheus",
    "prometheus_port",
    storage=lambda data: (f"--storage.tsdb.path={data}", "--storage.tsdb.retention.time=7d"),
    config=lambda settings: prometheus_config(settings, targets_dir(settings)),
    line=_prometheus_line,
)
ALERTMANAGER = Server(
    "alertmanager",
    "Alertmanager",
    "prometheus-alertmanager",
    "prometheus-alertmanager",
    "alertmanager_port",
    storage=lambda data: (f"--storage.path={data}", "--cluster.listen-address="),  # one Alertmanager: no gossip port
    config=lambda _settings: ALERTMANAGER_CONFIG,
    line=lambda _settings, url: f"Alertmanager on {url}",
)


def api(settings: Settings, path: str) -> dict:
    """GET Prometheus's HTTP API (``/api/v1/<path>``); its ``data``."""
    with urllib.request.urlopen(f"{PROMETHEUS.url(settings)}/api/v1/{path}", timeout=5) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise ServiceError(f"Prometheus answered {path} with {body}")
    return body["data"]


def reload(settings: Settings) -> None:
    """Make Prometheus read its configuration and rule files again (SIGHUP)."""
    pid = PROMETHEUS.pid(settings)
    if pid is None:
        raise ServiceError("Prometheus is not running; run `make up`.")
    os.kill(pid, signal.SIGHUP)


def alerts(settings: Settings, state: str = "firing") -> list[dict]:
    """The alerts Prometheus holds in ``state`` (pending or firing), each with its labels and annotations."""
    return [a for a in api(settings, "alerts")["alerts"] if a["state"] == state]


def received(settings: Settings) -> list[dict]:
    """The alerts Alertmanager holds (its API v2), each with its labels and annotations."""
    with urllib.request.urlopen(f"{ALERTMANAGER.url(settings)}/api/v2/alerts", timeout=5) as response:
        return json.load(response)


SUMMARY = {  # what `cdcf status --watch` shows under the components, from Prometheus (over the last minute)
    "archived": "sum(rate(cdcf_archive_changes_total[1m]))",
    "streamed": "sum(rate(cdcf_stream_changes_total[1m]))",
    "rows": "sum(rate(cdcf_stream_feature_rows_total[1m]))",
    "p50": "histogram_quantile(0.5, sum by (le) (rate(cdcf_freshness_seconds_bucket[1m])))",
    "p99": "histogram_quantile(0.99, sum by (le) (rate(cdcf_freshness_seconds_bucket[1m])))",
    "archive_lag": "sum(cdcf_archive_lag_messages)",
    "stream_lag": "max(cdcf_stream_offsets_behind)",
    "clock_age": "max(cdcf_stream_clock_age_seconds)",
}


def summary(settings: Settings) -> list[str]:
    """Throughput, freshness, lag and firing alerts, a line each, as Prometheus has them now."""
    try:
        got = {}
        for name, query in SUMMARY.items():
            result = api(settings, f"query?query={urllib.parse.quote(query)}")["result"]
            got[name] = float(result[0]["value"][1]) if result else float("nan")
        firing = sorted({a["labels"]["alertname"] for a in alerts(settings)})
    except (OSError, ServiceError) as exc:
        return [f"metrics: Prometheus at {PROMETHEUS.url(settings)} does not answer ({exc})"]
    return [
        f"throughput: {got['archived']:.0f} changes/s archived, {got['streamed']:.0f} records/s streamed, "
        f"{got['rows']:.0f} feature rows/s written (last minute)",
        f"freshness:  p50 {got['p50']:.2f} s, p99 {got['p99']:.2f} s from COMMIT to Redis (last minute)",
        f"lag:        archiver {got['archive_lag']:.0f} messages, streaming {got['stream_lag']:.0f} offsets, "
        f"clock {got['clock_age']:.1f} s old",
        f"alerts:     {', '.join(firing) + ' firing' if firing else 'none firing'}",
    ]
