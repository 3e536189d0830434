"""The inference path on the real stack: the hot-path client against Feast's get_online_features, the model trained
on a point-in-time set, and the scoring service (Python, HTTP and CLI) with its bad-input policy."""

from __future__ import annotations

import json
import random
import socket
import time
from datetime import UTC, datetime

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cdcf import features as decl
from cdcf import layout, pg_clients
from cdcf.feast_config import feature_store
from cdcf.redis_clients import redis_client
from inference.model import TrainedModel
from inference.service import MAX_BATCH, MAX_BODY, ScoringError, ScoringService, create_app, model_path
from inference.train import train_from_store
from online.client import FeatureClient
from ops.workload import Workload
from tests.conftest import run_cli, wait_for

pytestmark = pytest.mark.integration
SERVICE = "fraud_detection_v1"


def _served_users(settings) -> list[int]:
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT DISTINCT user_id FROM {decl.TRANSACTION_RISK.name} ORDER BY 1 LIMIT 200")
            found = [r[0] for r in cur.fetchall()]
    return found


@pytest.fixture(scope="module")
def users(settings) -> list[int]:
    """Users the streaming job has served (a short workload makes them on a fresh stack)."""
    if len(_served_users(settings)) < 20:
        Workload(settings, seed=random.randrange(10**6)).run(200, 10, burst_every_s=0)
    found = wait_for(lambda: (u := _served_users(settings)) and len(u) >= 20 and u, 120, "served users")
    assert len(found) >= 20
    return found


@pytest.fixture(scope="module")
def trained(settings):
    model, path = train_from_store(settings, rows=3000, epochs=3)
    return model


def test_the_client_reads_what_feast_serves(settings, users):
    client = FeatureClient.for_service(settings, SERVICE)
    store = feature_store(settings)
    ids = users[:50] + [-424242]  # and one entity Redis has never seen
    fetched = client.fetch(ids)
    served = store.get_online_features(features=decl.feature_refs(SERVICE), entity_rows=[{"user_id": i} for i in ids])
    values = served.to_dict()
    names = [f for _, f in client.features]
    for n, entity_id in enumerate(ids):
        row = fetched.row(n)
        assert row == [values[name][n] for name in names], entity_id
        assert [type(v) for v in row] == [type(values[name][n]) for name in names]
    assert fetched.known.tolist() == [True] * 50 + [False]
    assert fetched.row(50) == [None] * len(names) and set(fetched.as_of_row(50).values()) == {None}
    # as-of times: Feast's event timestamps of each view
    proto = served.proto
    for n in range(50):
        for name, result in zip(proto.metadata.feature_names.val, proto.results, strict=True):
            view = next((v for v, f in client.features if f == name), None)
            if view is not None:
                assert fetched.as_of_row(n)[view] == result.event_timestamps[n].ToDatetime(tzinfo=UTC)
    client.close()


def test_the_local_cache_serves_a_row_for_its_ttl_only(settings, users):
    client = FeatureClient.for_service(settings, SERVICE, cache_ttl_s=1.0)
    entity = random.randrange(10**13, 10**14)
    key = layout.entity_key(client.prefix, entity, client.project)
    field = layout.field(decl.TRANSACTION_RISK.name, "txn_count_1h")
    raw = redis_client(settings, "writer")
    try:
        raw.hset(key, mapping={field: layout.encode_value(1)})
        assert client.fetch([entity]).row(0)[0] == 1
        raw.hset(key, mapping={field: layout.encode_value(2)})
        assert client.fetch([entity]).row(0)[0] == 1  # cached
        time.sleep(1.1)
        assert client.fetch([entity]).row(0)[0] == 2
        client.cache_entries = 3  # bounded: the least recently fetched go first
        client.fetch([entity, entity + 1, entity + 2, entity + 3])
        assert list(client._cache) == [entity + 1, entity + 2, entity + 3]
    finally:
        raw.delete(key)
        raw.close()
        client.close()


def test_a_model_trained_on_a_point_in_time_set_is_saved_with_its_features(settings, trained):
    assert [f"{v}:{f}" for v, f in trained.features] == [
        f"{v.name}:{f.name}" for s in decl.FEATURE_SERVICES if s.name == SERVICE for v in s.views for f in v.features
    ]
    assert trained.metrics["rows"] == 3000 and np.isfinite(trained.metrics["last_epoch_loss"])
    loaded = TrainedModel.load(model_path(settings))
    x = np.array([[1.0, 20.0, np.nan, 3, 4, 50.0, 80.0, 20.0, 1, np.nan]])
    assert loaded.features == trained.features
    assert loaded.score(x) == pytest.approx(trained.score(x), abs=1e-6)
    assert 0.0 <= float(loaded.score(x)[0]) <= 1.0


def test_scores_come_with_as_of_times_and_a_policy_for_bad_input(settings, users, trained):
    service = ScoringService.from_settings(settings)
    nobody = -random.randrange(10**15, 10**16)  # a fresh id: no test, demo or workload writes negative ids there
    answer = service.score(users[:10] + [nobody])
    assert answer["device"] in ("cpu", "cuda") and len(answer["results"]) == 11
    fetched = service.client.fetch(users[:10])
    expected = service.model.score(fetched.matrix())
    for n, (result, score) in enumerate(zip(answer["results"], expected, strict=False)):
        assert result["score"] == pytest.approx(float(score), abs=1e-6)
        assert result["as_of"] == {v: t.isoformat() for v, t in fetched.as_of_row(n).items()}
    assert answer["results"][-1] == {
        "id": nobody,
        "score": None,
        "as_of": {v.name: None for v in (decl.TRANSACTION_RISK, decl.USER_ACTIVITY)},
        "nulls": [],
        "reason": "unknown entity",
    }
    for bad, message in (
        ([], "non-empty"),
        (list(range(MAX_BATCH + 1)), "limit"),
        (["7"], "64-bit"),
        ([2**64], "64-bit"),
        ([True], "64-bit"),
    ):
        with pytest.raises(ScoringError, match=message):
            service.score(bad)

    token = settings.scoring_token.get_secret_value()
    http = TestClient(create_app(token, scoring=service), headers={"Authorization": f"Bearer {token}"})
    assert "txn_next_7d" in http.get("/health").json()["models"]
    stranger = TestClient(create_app(token, scoring=service))
    assert stranger.get("/health").status_code == 200  # health stays open; scoring does not
    for headers in ({}, {"Authorization": f"Bearer {token[:-1]}"}, {"Authorization": token}):
        refused = stranger.post("/score", json={"ids": users[:3]}, headers=headers)
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer", headers
        assert "results" not in refused.json()
    good = http.post("/score", json={"ids": users[:3]})
    assert good.status_code == 200 and [r["id"] for r in good.json()["results"]] == users[:3]
    assert http.post("/score", content=b"{not json").status_code == 400
    assert http.post("/score", json={"ids": "1,2"}).status_code == 400
    assert http.post("/score", json={"users": [1]}).status_code == 400
    too_many = http.post("/score", json={"ids": list(range(MAX_BATCH + 1))})
    assert too_many.status_code == 413 and "limit" in too_many.json()["error"]
    huge = http.post("/score", content=b'{"ids": [' + b"1, " * (MAX_BODY // 3) + b"1]}")
    assert huge.status_code == 413 and f"over {MAX_BODY} bytes" in huge.json()["error"]
    deep = http.post("/score", content=b"[" * 100_000)
    assert deep.status_code == 400 and "nests too deep" in deep.json()["error"]

    cli = run_cli("score", "--", str(users[0]), str(nobody))
    assert cli.returncode == 0, cli.stderr
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [line["id"] for line in lines] == [users[0], nobody] and lines[1]["reason"] == "unknown entity"
    assert datetime.fromisoformat(next(iter(lines[0]["as_of"].values()))).tzinfo is not None


def test_a_stalled_online_store_gives_503_within_a_second_and_health_says_so(settings, trained):
    """A Redis that accepts connections and never answers (as one under SIGSTOP does): the client's timeouts turn a
    request into a 503 within a second, and /health still answers, reporting Redis."""
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(64)
        service = ScoringService.from_settings(settings.model_copy(update={"redis_port": stalled.getsockname()[1]}))
        token = settings.scoring_token.get_secret_value()
        http = TestClient(create_app(token, scoring=service), headers={"Authorization": f"Bearer {token}"})
        started = time.monotonic()
        answer = http.post("/score", json={"ids": [1, 2, 3]})
        assert answer.status_code == 503 and "unreachable" in answer.json()["detail"]
        assert time.monotonic() - started < 1.0
        health = http.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        assert health.json()["redis"].startswith("unreachable")
