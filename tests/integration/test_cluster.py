"""The streaming job, unchanged, on a Spark standalone cluster (a master and two workers from the pyspark install):
its executors decode, keep the window state and write the stores; one of them killed mid-load loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyspark
import pytest

from cdcf import features as decl
from cdcf.feast_config import feature_store
from cdcf.stack import proc
from cdcf.stack.background import STREAMING
from cdcf.workload import Workload
from tests.conftest import CDCF
from tests.integration.test_streaming import _last_change_by_user, _sql, assert_exact

pytestmark = pytest.mark.integration

SPARK_CLASS = Path(pyspark.__file__).parent / "bin" / "spark-class"
MASTER_PORT, MASTER_UI = 17077, 18090
MASTER_URL = f"spark://127.0.0.1:{MASTER_PORT}"


def _master_state() -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{MASTER_UI}/json/", timeout=5) as response:
        return json.load(response)


@pytest.fixture
def cluster(tmp_path):
    """A standalone master and two one-core workers; yields the master URL."""
    env = {**os.environ, "SPARK_LOG_DIR": str(tmp_path), "SPARK_WORKER_DIR": str(tmp_path / "work"),
           "PYSPARK_PYTHON": sys.executable}
    daemons = [subprocess.Popen([str(SPARK_CLASS), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                                 "--port", str(MASTER_PORT), "--webui-port", str(MASTER_UI)],
                                env=env, stdout=open(tmp_path / "master.log", "w"), stderr=subprocess.STDOUT)]
    try:
        proc.wait_until(lambda: proc.port_open("127.0.0.1", MASTER_PORT), timeout_s=60, what="The Spark master")
        for n in (1, 2):
            daemons.append(subprocess.Popen(
                [str(SPARK_CLASS), "org.apache.spark.deploy.worker.Worker", MASTER_URL, "--cores", "1",
                 "--memory", "1g", "--webui-port", str(MASTER_UI + n), "--host", "127.0.0.1"],
                env=env, stdout=open(tmp_path / f"worker{n}.log", "w"), stderr=subprocess.STDOUT))
        proc.wait_until(lambda: len(_master_state()["workers"]) == 2, timeout_s=60, what="Two Spark workers")
        yield MASTER_URL
    finally:
        for daemon in reversed(daemons):
            daemon.terminate()
            daemon.wait(30)


def test_the_job_runs_unchanged_on_a_standalone_cluster(settings, cluster, tmp_path):
    store = feature_store(settings)
    STREAMING.stop(settings)  # the cluster run takes over the same checkpoint and state, then hands them back
    status = tmp_path / "status.json"
    job = subprocess.Popen([CDCF, "stream", "--status-file", str(status)], cwd=Path(__file__).parents[2],
                           env={**os.environ, "CDCF_SPARK_MASTER": cluster}, stdout=open(tmp_path / "job.log", "w"),
                           stderr=subprocess.STDOUT)
    try:
        proc.wait_until(lambda: status.exists(), timeout_s=180, what="The job on the cluster",
                        log_file=tmp_path / "job.log", pid=job.pid)
        user, txn = random.randrange(10**12, 10**13), random.randrange(10**12, 10**13)
        since = _sql(settings, "INSERT INTO transactions VALUES (%s, %s, NULL, 12.34, 'cluster', "
                               "now() - interval '1 minute', now())", (txn, user))
        assert_exact(settings, store, decl.TRANSACTION_RISK, user, since, timeout_s=120)
        assert_exact(settings, store, decl.USER_ACTIVITY, user, since)
        apps = [a for a in _master_state()["activeapps"] if a["name"] == "cdcf-streaming-features"]
        assert len(apps) == 1 and apps[0]["cores"] == 2, apps  # an executor on each worker did the work
        assert all(w["coresused"] == 1 for w in _master_state()["workers"])

        # kill -9 of one executor in the middle of a load: its tasks run again, nothing is lost or counted twice
        started = _sql(settings, "SELECT 1")
        load = threading.Thread(target=lambda: Workload(settings, seed=random.randrange(10**6)).run(200, 15))
        load.start()
        time.sleep(6)
        executors = subprocess.run(["pgrep", "-f", "CoarseGrainedExecutorBackend"], capture_output=True,
                                   text=True).stdout.split()
        assert len(executors) == 2, executors
        os.kill(int(executors[0]), signal.SIGKILL)
        load.join()
        last_change = _last_change_by_user(settings, started)
        assert len(last_change) > 10
        for touched in random.sample(sorted(last_change), 10):
            for view in (decl.USER_ACTIVITY, decl.TRANSACTION_RISK):
                assert_exact(settings, store, view, touched, last_change[touched], timeout_s=180)
    finally:
        job.send_signal(signal.SIGTERM)
        job.wait(60)
        STREAMING.start(settings)
    assert json.loads(status.read_text())["changes"] >= 1
