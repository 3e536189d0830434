"""Online/offline consistency. `cdcf validate`: online values against the offline store's rows at their as-of times
(the pipeline writes both from the same rows, so they agree), and a value changed in one store is reported with
its entity and time. Feast's own `materialize-incremental` from the offline tables into a flushed Redis gives the
values the streaming job serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from bench.cdc_capture import await_stream
from cdcf import features as decl
from cdcf.feast_config import REPO_PATH, repo_config
from cdcf.redis_clients import acl_file, redis_client
from inference.consistency import validate
from online.client import FeatureClient
from online.writer import OnlineWriter
from tests.conftest import fresh_workload, run_cli, wait_for

pytestmark = pytest.mark.integration


def test_online_values_are_offline_rows_and_a_changed_one_is_reported(settings):
    workload = fresh_workload(settings)
    workload.run(200, 8, burst_every_s=0)
    users = list(range(workload.base + 1, workload.base + workload.users + 1))
    products = list(range(workload.base + 1, workload.base + workload.products + 1))
    profile = FeatureClient.for_features(
        settings, [(decl.USER_PROFILE.name, f.name) for f in decl.USER_PROFILE.features]
    )
    # the users whose profile the streaming job has served (the workload upserts some users rows)
    served = wait_for(
        lambda: [u for u, known in zip(users, profile.fetch(users).known, strict=True) if known], 120, "served profiles"
    )
    await_stream(settings)  # and every change of the workload: no value of theirs still on its way
    report = validate(settings, entities={"user_id": users, "product_id": products})
    assert report.compared == len(users) * 4 + len(products) and report.mismatches == []
    assert report.match == 1.0

    victim = served[0]
    fetched = profile.fetch([victim])
    as_of = fetched.as_of_row(0)[decl.USER_PROFILE.name]
    original = fetched.row(0)
    writer = OnlineWriter(settings)
    try:
        writer.write(decl.USER_PROFILE, [(victim, as_of, 999, *original[1:])])  # the age, changed in Redis only
        changed = validate(settings, entities={"user_id": [victim]})
        assert [(m["view"], m["entity"], m["as_of"]) for m in changed.mismatches] == [
            (decl.USER_PROFILE.name, victim, as_of.isoformat())
        ]
        assert "online [999" in changed.mismatches[0]["why"] and changed.match == 3 / 4
    finally:
        writer.write(decl.USER_PROFILE, [(victim, as_of, *original)])
        writer.close()
        profile.close()
    assert validate(settings, entities={"user_id": [victim]}).match == 1.0

    cli = run_cli("validate", "--sample", "20", "--min-match", "0")
    assert cli.returncode == 0, cli.stderr
    assert "online values equal their offline rows: match" in cli.stdout


@pytest.mark.exclusive
@pytest.mark.parametrize("engine", ["local", "spark.engine"])
def test_feast_materialize_incremental_into_a_flushed_redis_gives_the_streamed_values(settings, tmp_path, engine):
    """Feast's own materialization from the offline tables, in process or on Spark (the seed's batch_engine)."""
    workload = fresh_workload(settings)
    workload.run(200, 6, burst_every_s=0)
    users = list(range(workload.base + 1, workload.base + workload.users + 1))
    risk = FeatureClient.for_features(
        settings, [(decl.TRANSACTION_RISK.name, f.name) for f in decl.TRANSACTION_RISK.features]
    )
    wait_for(lambda: risk.fetch(users).known.sum() >= 50, 120, "served users")
    risk.close()
    await_stream(settings)
    with socket.socket() as probe:
        probe.bind((settings.redis_host, 0))
        port = probe.getsockname()[1]
    (tmp_path / "users.acl").write_text(acl_file(settings))  # the stack's users, on an empty Redis of its own
    empty = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            settings.redis_host,
            "--aclfile",
            str(tmp_path / "users.acl"),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    side = settings.model_copy(update={"redis_port": port, "feast_batch_engine": engine})
    try:
        wait_for(lambda: redis_client(side, "writer").ping(), 30, "the empty Redis")
        config = tmp_path / "feature_store.yaml"
        config.write_text(yaml.safe_dump(repo_config(side, "writer")))
        end = datetime.now(UTC).replace(microsecond=0)
        views = [arg for v in decl.FEATURE_VIEWS for arg in ("--views", v.name)]
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("feast")),
                "-f",
                str(config),
                "materialize-incremental",
                end.isoformat(),
                *views,
            ],
            cwd=REPO_PATH,
            capture_output=True,
            text=True,
            timeout=600,
            env={**os.environ, "PYSPARK_PYTHON": sys.executable},
        )  # Feast drops spark_conf
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert ("Using Spark's default log4j profile" in done.stderr) == (engine == "spark.engine")  # Spark ran it
        for view in decl.FEATURE_VIEWS:
            ids = (
                users
                if view.entity == decl.USER
                else list(range(workload.base + 1, workload.base + workload.products + 1))
            )
            features = [(view.name, f.name) for f in view.features]
            streamed = FeatureClient.for_features(settings, features).fetch(ids)
            materialized = FeatureClient.for_features(side, features).fetch(ids)
            compared = 0
            for n in range(len(ids)):
                as_of = streamed.as_of_row(n)[view.name]
                if as_of is None or as_of > end:  # not served, or served anew after the materialization's end
                    continue
                assert materialized.as_of_row(n) == streamed.as_of_row(n), (view.name, ids[n])
                assert materialized.row(n) == streamed.row(n), (view.name, ids[n])
                compared += 1
            assert compared > 0, view.name
    finally:
        empty.terminate()
        empty.wait(timeout=30)
