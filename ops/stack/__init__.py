"""The local stack: real processes of our own, started idempotently, health-checked, stopped by pid."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from cdcf import feast_config, features, jars, pg_clients
from cdcf.errors import PipelineError, PrerequisiteError, ServiceError
from cdcf.settings import Settings
from ops.stack import kafka, postgres, proc, redis_server, supervisor
from ops.stack.background import ARCHIVER, STREAMING
from ops.stack.monitoring import ALERTMANAGER, PROMETHEUS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Health:
    component: str
    healthy: bool
    detail: str
    pid: int | None = None

    def line(self) -> str:
        rss = proc.rss_mb(self.pid)
        mem = f" [pid {self.pid}, {rss:.0f} MiB]" if rss is not None else ""
        return f"{self.component:<15} {'OK  ' if self.healthy else 'FAIL'} {self.detail}{mem}"


# program -> how to get it; checked all at once before anything starts
PROGRAMS = {
    "pg_createcluster": "apt-get install postgresql",
    "pg_ctlcluster": "apt-get install postgresql",
    "runuser": "apt-get install util-linux",
    "redis-server": "apt-get install redis-server",
    "prometheus": "apt-get install prometheus",
    "prometheus-alertmanager": "apt-get install prometheus-alertmanager",
}


def check_prerequisites(settings: Settings) -> None:
    """Raise one error naming every missing program, with the command that installs it."""
    needed = dict(PROGRAMS)
    needed[settings.java] = "apt-get install openjdk-17-jdk-headless, or set CDCF_JAVA"
    needed[settings.javac] = "apt-get install openjdk-17-jdk-headless (it builds the window engine), or set CDCF_JAVAC"
    if not jars.resolved(settings):
        needed[settings.maven] = (
            "apt-get install maven (needed while the jar cache is empty or jars.xml changed), or set CDCF_MAVEN"
        )
    missing = [f"{name} ({fix})" for name, fix in needed.items() if shutil.which(name) is None]
    if os.geteuid() != 0:
        missing.append("root rights (the stack creates its PostgreSQL cluster with pg_createcluster)")
    if missing:
        raise PrerequisiteError(f"Missing: {'; '.join(missing)}. Run `make install` as root, then `make up`.")


def up(settings: Settings, step: Callable[[str], None] = log.info) -> None:
    """Bring every part up; parts already running are left as they are."""
    check_prerequisites(settings)
    for label, action in (
        ("jars", jars.ensure_jars),
        ("window engine", build_engine),
        ("postgres", postgres.start),
        ("redis", redis_server.start),
        ("kafka", kafka.start_kafka),
        ("connect", kafka.start_connect),
        ("feast registry", apply_feature_repo),
        ("connector", apply_connector),
        ("archiver", ARCHIVER.start),
        ("streaming", STREAMING.start),
        ("alertmanager", ALERTMANAGER.start),
        ("prometheus", PROMETHEUS.start),
    ):
        started = time.monotonic()
        action(settings)
        step(f"{label}: ready in {time.monotonic() - started:.1f} s")


def build_engine(settings: Settings) -> None:
    """Compile the streaming job's window engine into the jar cache, once per source version."""
    from cdcf.engine import engine_jar

    engine_jar(settings.paths.cache / "engine", settings.javac)


def down(settings: Settings, step: Callable[[str], None] = log.info) -> None:
    """Stop our own processes, dependents first."""
    for job in (PROMETHEUS, ALERTMANAGER, STREAMING, ARCHIVER):
        job.stop(settings)
        step(f"{job.name}: stopped")
    kafka.stop(settings, kafka.CONNECT)
    step("connect: stopped")
    kafka.stop(settings, kafka.KAFKA)
    step("kafka: stopped")
    redis_server.stop(settings)
    step("redis: stopped")
    postgres.stop(settings)
    step("postgres: stopped")


def purge(settings: Settings, step: Callable[[str], None] = log.info) -> None:
    """Stop everything, then delete the stack's data: the PostgreSQL cluster and the data folder (not the jar cache)."""
    down(settings, step)
    postgres.drop(settings)
    shutil.rmtree(settings.paths.data, ignore_errors=True)
    step("data: deleted")


def status(settings: Settings) -> list[Health]:
    """One health record per component; never raises for an unhealthy part."""
    checks: list[tuple[str, Callable[[Settings], str], Callable[[Settings], int | None]]] = [
        ("postgres", postgres.health, postgres.pid),
        ("redis", _supervised(redis_server.NAME, redis_server.health), redis_server.pid),
        ("kafka", _supervised(kafka.KAFKA, kafka.kafka_health), lambda s: kafka.service_pid(s, kafka.KAFKA)),
        ("connect", _supervised(kafka.CONNECT, kafka.connect_health), lambda s: kafka.service_pid(s, kafka.CONNECT)),
        ("feast registry", registry_health, lambda s: None),
        ("archiver", ARCHIVER.health, ARCHIVER.pid),
        ("streaming", STREAMING.health, STREAMING.pid),
        ("prometheus", _supervised(PROMETHEUS.name, PROMETHEUS.health), PROMETHEUS.pid),
        ("alertmanager", _supervised(ALERTMANAGER.name, ALERTMANAGER.health), ALERTMANAGER.pid),
    ]
    return [_check(name, health, pid, settings) for name, health, pid in checks]


def _supervised(name: str, health: Callable[[Settings], str]) -> Callable[[Settings], str]:
    """A service's health, failed while it is in a restart loop, and naming a recent restart it recovered from."""

    def check(settings: Settings) -> str:
        if problem := supervisor.trouble(settings.paths, name):
            raise ServiceError(f"{name.capitalize()} {problem}.")
        detail = health(settings)
        record = supervisor.restarted(settings.paths, name)
        return detail + (f"; it {record}" if record and record.in_window() else "")

    return check


def apply_feature_repo(settings: Settings) -> None:
    """Create the offline tables, write feature_store.yaml and run `feast apply` against the SQL registry.

    Skipped when the repo, the feature declaration and the config are those last applied and the registry
    still holds every view: `feast apply` costs ~10 s, mostly importing Feast.
    """
    feast_config.create_offline_tables(settings)
    feast_config.write_repo_config(settings)  # the readers' (feast serve, feast ui)
    config = feast_config.write_repo_config(settings, "writer")
    stamp = settings.paths.run / "feast-applied.sha256"
    fingerprint = hashlib.sha256(
        b"".join(
            p.read_bytes() for p in (*sorted(feast_config.REPO_PATH.glob("*.py")), Path(features.__file__), config)
        )
    ).hexdigest()
    if stamp.exists() and stamp.read_text() == fingerprint and _registered_views(settings) == len(features.ALL_VIEWS):
        return
    feast_bin = Path(sys.executable).with_name("feast")
    done = subprocess.run(
        [str(feast_bin), "-f", str(config), "apply"],
        cwd=feast_config.REPO_PATH,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"`feast apply` failed: {(done.stderr or done.stdout).strip()[-500:]}")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(fingerprint)


def _registered_views(settings: Settings) -> int:
    with pg_clients.session(settings, settings.registry_db, user=settings.feast_user) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('feature_views') IS NOT NULL")
            if not cur.fetchone()[0]:
                return 0
            cur.execute("SELECT count(*) FROM feature_views WHERE project_id = %s", (settings.feast_project,))
            count = cur.fetchone()[0]
    return count


def apply_connector(settings: Settings, timeout_s: float | None = None) -> None:
    """Create the change and dead-letter topics, then apply the Debezium connector and wait for RUNNING."""
    from connectors.connect import ConnectClient, change_topics, connector_config

    kafka.ensure_topics(settings, change_topics(settings), config=kafka.CHANGE_TOPIC_CONFIG)
    kafka.ensure_topics(settings, [settings.dead_letter_topic])
    name, config = connector_config(settings)
    client = ConnectClient(settings)
    try:
        client.apply(name, config, timeout_s=timeout_s or settings.start_timeout_s)
    finally:
        client.close()


def registry_health(settings: Settings) -> str:
    store = feast_config.feature_store(settings)
    views = store.list_feature_views()
    services = store.list_feature_services()
    if not views:
        raise ServiceError(
            f"The Feast registry has no feature views for project {settings.feast_project}; run `make up`."
        )
    return f"Feast project {settings.feast_project}: {len(views)} feature views, {len(services)} services"


def _check(
    name: str, health: Callable[[Settings], str], pid: Callable[[Settings], int | None], settings: Settings
) -> Health:
    try:
        return Health(name, True, health(settings), pid(settings))
    except psycopg2.OperationalError as exc:
        return Health(name, False, str(postgres.connect_error(settings, exc)))
    except PipelineError as exc:
        return Health(name, False, str(exc), pid(settings))
    except Exception as exc:  # noqa: BLE001 - status reports, it does not crash
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return Health(name, False, f"not reachable ({first})", pid(settings))
