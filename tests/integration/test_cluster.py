"""The streaming job, unchanged, on a Spark standalone cluster (a master and two workers from the pyspark install):
its executors decode, keep the window state and write the stores; one of them killed mid-load loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cdcf import features as decl
from cdcf.feast_config import feature_store
from ops.stack import proc, spark_cluster
from ops.stack.background import STREAMING
from tests.conftest import CDCF, fresh_workload
from tests.integration.test_streaming import _last_change_by_user, _sql, assert_exact

pytestmark = [pytest.mark.integration, pytest.mark.exclusive]

MASTER_PORT, MASTER_UI = 17077, 18090


@pytest.fixture
def cluster(settings, tmp_path):
    """A standalone master and two one-core workers."""
    with spark_cluster.standalone(settings, tmp_path, MASTER_PORT, MASTER_UI) as running:
        yield running


def test_the_job_runs_unchanged_on_a_standalone_cluster(settings, cluster, tmp_path):
    store = feature_store(settings)
    STREAMING.stop(settings)  # the cluster run takes over the same checkpoint and state, then hands them back
    status = tmp_path / "status.json"
    job = subprocess.Popen(
        [CDCF, "stream", "--status-file", str(status)],
        cwd=Path(__file__).parents[2],
        env={**os.environ, "CDCF_SPARK_MASTER": cluster.url},
        stdout=open(tmp_path / "job.log", "w"),
        stderr=subprocess.STDOUT,
    )
    try:
        proc.wait_until(
            lambda: status.exists(),
            timeout_s=180,
            what="The job on the cluster",
            log_file=tmp_path / "job.log",
            pid=job.pid,
        )
        user, txn = random.randrange(10**12, 10**13), random.randrange(10**12, 10**13)
        since = _sql(
            settings,
            "INSERT INTO transactions VALUES (%s, %s, NULL, 12.34, 'cluster', now() - interval '1 minute', now())",
            (txn, user),
        )
        assert_exact(settings, store, decl.TRANSACTION_RISK, user, since, timeout_s=120)
        assert_exact(settings, store, decl.USER_ACTIVITY, user, since)
        apps = [
            a for a in spark_cluster.master_state(MASTER_UI)["activeapps"] if a["name"] == "cdcf-streaming-features"
        ]
        assert len(apps) == 1 and apps[0]["cores"] == 2, apps  # an executor on each worker did the work
        assert all(w["coresused"] == 1 for w in spark_cluster.master_state(MASTER_UI)["workers"])

        # kill -9 of one executor in the middle of a load: its tasks run again, nothing is lost or counted twice
        started = _sql(settings, "SELECT 1")
        load = threading.Thread(target=lambda: fresh_workload(settings).run(200, 15))
        load.start()
        time.sleep(6)
        executors = cluster.executors()
        assert len(executors) == 2, executors
        os.kill(executors[0], signal.SIGKILL)
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
