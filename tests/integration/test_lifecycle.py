"""From nothing to healthy and back, on a second stack with its own ports, cluster and home."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.freshness import Prober
from cdcf import features as decl
from cdcf import jars, pg_clients
from cdcf.errors import ServiceError
from cdcf.feast_config import feature_store
from cdcf.settings import PROJECT_ROOT, load_settings
from ops.stack import kafka, monitoring, postgres, proc, redis_server
from ops.stack.background import ARCHIVER, STREAMING
from ops.stack.monitoring import ALERTMANAGER, PROMETHEUS
from tests.conftest import CDCF, run_cli, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.apart]

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


def test_up_status_kill_each_down_up_up_from_nothing(side_home):
    """The stack comes up, as users start it, from a parent that imported feast and has exited; each supervised
    process killed with -9 comes back (a new pid) and serves; then down, up, up."""
    env = {"CDCF_HOME": str(side_home), "CDCF_PG_CLUSTER": "cdcf_lifecycle", **PORTS}
    side = load_settings(
        home=side_home,
        pg_cluster="cdcf_lifecycle",
        **{k.removeprefix("CDCF_").lower(): int(v) for k, v in PORTS.items()},
    )
    assert jars.resolved(side)  # shared, warm cache
    try:
        # `import feast` points PROMETHEUS_MULTIPROC_DIR at a folder it deletes at exit; this test's own process
        # imported feast too, so its folder is taken out of the starter's environment
        starter = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_")} | env
        parent = f"import feast, subprocess, sys; sys.exit(subprocess.run([{CDCF!r}, 'up']).returncode)"
        first = subprocess.run(
            [sys.executable, "-c", parent], env=starter, capture_output=True, text=True, timeout=900, cwd=PROJECT_ROOT
        )
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
        for pid in running.values():  # each has only the environment it is meant to have
            assert not [v for v in _environment(pid) if v.startswith("PROMETHEUS_")], pid

        _kill_each_and_see_it_serve(side)
        running = _pids(side)

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


def _kill_each_and_see_it_serve(side) -> None:
    """kill -9 of every supervised process, in two waves: the services others depend on (Redis, Kafka, and the
    monitoring pair, which nothing depends on), then, once each is back, the processes that depend on them (Connect,
    the archiver, the streaming job). Each killed process is replaced by a new one (another pid) that answers. Then
    the change committed next is served through Feast and archived, and Prometheus scrapes both jobs again: it went
    through every one of the new processes."""
    answers = {
        "redis": lambda s, _: redis_server.health(s),
        "kafka": lambda s, _: kafka.kafka_health(s),
        "prometheus": lambda s, _: PROMETHEUS.health(s),
        "alertmanager": lambda s, _: ALERTMANAGER.health(s),
        "connect": lambda s, _: kafka.connect_health(s),
        "archiver": lambda s, since: _reported(s, ARCHIVER, since),
        "streaming": lambda s, since: _reported(s, STREAMING, since),
    }
    waves = [("redis", "kafka", "prometheus", "alertmanager"), ("connect", "archiver", "streaming")]
    prober = Prober(side, feature_store(side))
    try:
        successors = {}
        for wave in waves:
            killed, struck = {name: _pids(side)[name] for name in wave}, time.time()
            for pid in killed.values():
                os.kill(pid, signal.SIGKILL)
            for name in wave:
                successors[name] = wait_for(lambda n=name, k=killed[name]: _successor(side, n, k), 120, f"a new {name}")
                wait_for(lambda a=answers[name], t=struck: _answers(a, side, t), 120, f"the new {name} to answer")
        probes = prober.run(1, 1, timeout_s=300)
        assert probes.served, f"no change served after the kills: {probes.unserved}"
        wait_for(lambda: _archived(side, prober.txn, prober.amount), 120, "the served change archived too")
        wait_for(lambda: _monitoring_answers(side), 60, "Prometheus scraping both jobs after the kills")
        assert {name: _pids(side)[name] for name in answers} == successors  # the ones that came back served
    finally:
        prober.close()


def _answers(answer, side, since: float) -> bool:
    try:
        answer(side, since)
    except Exception:  # noqa: BLE001 - any failure (a refused connection, a client's own error) is "not yet"
        return False
    return True


def _reported(side, job, since: float) -> None:
    """A job's new process wrote its status file (its supervisor's restart marks it unhealthy for a while)."""
    if json.loads(job.status_file(side).read_text())["at"] <= since:
        raise ServiceError(f"the {job.name} job has not reported since its kill")


def _successor(side, name: str, killed: int) -> int | None:
    pid = _pids(side)[name]
    return pid if pid and pid != killed else None


def _archived(side, txn_ids, amount: int) -> bool:
    """Whether the archive holds the change that set one of the probes' transactions to ``amount``."""
    with pg_clients.offline_session(side) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM cdc_changelog WHERE source_table = 'transactions' AND row_key = ANY(%s) "
            "AND (after->>'amount')::numeric = %s",
            (list(txn_ids.values()), amount),
        )
        return cur.fetchone()[0] > 0


def _monitoring_answers(side) -> bool:
    """Both answer, Alertmanager is Prometheus's, and Prometheus scrapes both jobs."""
    try:
        ALERTMANAGER.health(side)
        targets = monitoring.api(side, "targets")["activeTargets"]
    except (ServiceError, OSError):
        return False
    return {"archiver", "streaming"} <= {t["labels"]["job"] for t in targets if t["health"] == "up"}


def _environment(pid: int) -> list[str]:
    return [v.decode() for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if v]


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
