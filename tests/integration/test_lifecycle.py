"""From nothing to healthy and back, on a second stack with its own ports, cluster and home."""

from __future__ import annotations

import shutil

import pytest

from cdcf import features as decl
from cdcf import jars, pg_clients
from cdcf.errors import ServiceError
from cdcf.settings import load_settings
from ops.stack import kafka, postgres, proc, redis_server
from ops.stack.background import ARCHIVER, STREAMING
from ops.stack.monitoring import ALERTMANAGER, PROMETHEUS
from tests.conftest import run_cli

pytestmark = pytest.mark.integration

PORTS = {
    "CDCF_PG_PORT": "15432",
    "CDCF_REDIS_PORT": "16379",
    "CDCF_KAFKA_PORT": "19092",
    "CDCF_KAFKA_CONTROLLER_PORT": "19093",
    "CDCF_CONNECT_PORT": "18083",
    "CDCF_PROMETHEUS_PORT": "19090",
    "CDCF_ALERTMANAGER_PORT": "19095",
}


def _pids(settings) -> dict[str, int | None]:
    return {
        "postgres": postgres.pid(settings),
        "redis": redis_server.pid(settings),
        "archiver": ARCHIVER.pid(settings),
        "streaming": STREAMING.pid(settings),
        "kafka": kafka.service_pid(settings, kafka.KAFKA),
        "connect": kafka.service_pid(settings, kafka.CONNECT),
        "prometheus": PROMETHEUS.pid(settings),
        "alertmanager": ALERTMANAGER.pid(settings),
    }


def test_up_status_down_up_up_from_nothing(side_home):
    env = {"CDCF_HOME": str(side_home), "CDCF_PG_CLUSTER": "cdcf_lifecycle", **PORTS}
    side = load_settings(
        home=side_home,
        pg_cluster="cdcf_lifecycle",
        **{k.removeprefix("CDCF_").lower(): int(v) for k, v in PORTS.items()},
    )
    assert jars.resolved(side)  # shared, warm cache
    try:
        first = run_cli("up", env=env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert [line.split(":")[0] for line in first.stdout.splitlines()] == [
            "jars",
            "window engine",
            "postgres",
            "redis",
            "kafka",
            "connect",
            "feast registry",
            "connector",
            "archiver",
            "streaming",
            "alertmanager",
            "prometheus",
        ]

        healthy = run_cli("status", env=env)
        assert healthy.returncode == 0, healthy.stdout + healthy.stderr
        assert "127.0.0.1:16379" in healthy.stdout and "127.0.0.1:19092" in healthy.stdout
        assert f"{len(decl.ALL_VIEWS)} feature views, {len(decl.FEATURE_SERVICES)} services" in healthy.stdout
        running = _pids(side)
        assert all(running.values()), running
        for service in ("kafka", "connect"):  # the JVMs log through log4j2 (an slf4j 1.x API would silence them)
            assert "StaticLoggerBinder" not in side.paths.log(service).read_text(), service
        assert "(io.debezium." in side.paths.log("connect").read_text()  # Debezium's account of its connector

        assert run_cli("down", env=env).returncode == 0
        assert _pids(side) == dict.fromkeys(running)
        for pid in running.values():
            assert not proc.alive(pid)
        stopped = run_cli("status", env=env)
        assert stopped.returncode == 1 and stopped.stdout.count("FAIL") == 9

        assert run_cli("up", env=env).returncode == 0
        restarted = _pids(side)
        assert all(restarted.values())
        again = run_cli("up", env=env)  # a second `up` is harmless: nothing restarts
        assert again.returncode == 0, again.stdout + again.stderr
        assert _pids(side) == restarted
        after = run_cli("status", env=env)
        assert after.returncode == 0, after.stdout + after.stderr + side.paths.log("streaming").read_text()[-4000:]
    finally:
        run_cli("down", "--purge", env=env)
    assert not postgres.cluster_exists(side)


def test_a_new_home_never_inherits_the_database_of_another(side_home, tmp_path):
    """A fresh home (a new clone in CI, a purged one) must not meet an old home's replication slot and rows."""
    other_home = tmp_path / "other"
    other_home.mkdir()
    shutil.copy(side_home / "secrets.env", other_home / "secrets.env")
    first, second = (
        load_settings(home=home, pg_cluster="cdcf_owner", pg_port=15433) for home in (side_home, other_home)
    )
    try:
        postgres.start(first)
        _execute(first, "CREATE TABLE left_behind (id int)")
        with pytest.raises(ServiceError, match=f"belongs to the stack in {side_home}"):
            postgres.start(second)  # the first home still exists: its data is not ours to take

        postgres.stop(first)
        shutil.rmtree(side_home)
        postgres.start(second)  # the owner is gone: its cluster is replaced, not adopted
        assert _execute(second, "SELECT to_regclass('left_behind') IS NULL") == [(True,)]
    finally:
        postgres.drop(second)
        if side_home.exists():
            postgres.drop(first)
    assert not postgres.cluster_exists(second) and not postgres._conf_dir(second).exists()


def _execute(settings, sql: str) -> list[tuple]:
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        cur.execute(sql)
        rows = cur.fetchall() if cur.description else []
    return rows
