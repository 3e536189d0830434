"""The gpu-node's three models on the real stack: trained on point-in-time sets and registered, served by the model
API (and Feast's on-demand view for the fraud model's request features) with the bad-input policy, and every
user's segment batch-scored into the offline table and the online view."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.feast_config import feature_store
from inference import fraud, recommend, registry, segments
from inference.registry import ModelNotFound
from inference.service import MAX_BATCH, FraudScorer, Recommender, ScoringError, SegmentReader, create_app
from offline.training import labelled_transactions
from online.client import ServiceClient
from ops.sample_data import add_users
from ops.workload import Workload
from tests.conftest import run_cli, wait_for

pytestmark = pytest.mark.integration
USERS, PRODUCTS = 300, 40


def _offline(settings, query: str, args=()) -> list[tuple]:
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(query, args)
            rows = cur.fetchall()
    return rows


@pytest.fixture(scope="module")
def history(settings) -> list[int]:
    """Users (with profile rows: they buy by taste) and products of their own, after a workload with account
    takeovers and chargebacks that the streaming job has served; their ids."""
    base = random.randrange(10**4, 10**7) * 10**5
    ids = list(range(base + 1, base + USERS + 1))
    add_users(settings, range(ids[0], ids[-1] + 1))
    Workload(settings, seed=random.randrange(10**6), users=USERS, products=PRODUCTS, entity_base=base).run(
        300, 20, burst_every_s=0
    )
    served = f"SELECT count(DISTINCT user_id) FROM {decl.TRANSACTION_RISK.name} WHERE user_id BETWEEN %s AND %s"
    wait_for(lambda: _offline(settings, served, (ids[0], ids[-1]))[0][0] >= USERS // 2, 120, "served users")
    return ids


@pytest.fixture(scope="module")
def trained(settings, history) -> dict:
    as_of = datetime.now(UTC)
    return {
        "fraud": fraud.train(settings, rows=20_000),
        "recommend": recommend.train(settings, rows=5_000, held_out=100),
        "segments": segments.train(settings, as_of),
        "as_of": as_of,
    }


def _http(settings, **models) -> tuple[TestClient, TestClient]:
    token = settings.scoring_token.get_secret_value()
    app = create_app(token, **models)
    return TestClient(app, headers={"Authorization": f"Bearer {token}"}), TestClient(app)


def test_the_fraud_label_is_a_chargeback_within_60_days(settings, history):
    user, now = history[0], datetime.now(UTC)
    txn = random.randrange(10**15, 10**16)
    with pg_clients.session(settings) as conn, conn.cursor() as cur:
        for n, (created, reported) in enumerate(((70, 10), (70, 8), (5, None))):  # days ago
            at = now - timedelta(days=created)
            cur.execute(
                "INSERT INTO transactions VALUES (%s, %s, NULL, 900, 'quickcash', %s, %s)", (txn + n, user, at, now)
            )
            if reported is not None:
                cur.execute(
                    "INSERT INTO chargebacks VALUES (%s, %s, %s)", (txn + n, txn + n, now - timedelta(days=reported))
                )
    archived = (
        "SELECT count(*) FROM cdc_changelog WHERE source_table IN ('transactions', 'chargebacks') AND "
        "row_key BETWEEN %s AND %s"
    )
    wait_for(lambda: _offline(settings, archived, (txn, txn + 2))[0][0] == 5, 60, "archived rows")
    found = labelled_transactions(settings).set_index("txn_id")["fraud"]
    # reported 60 days after (70 - 10) counts, 62 days after (70 - 8) does not, never reported does not
    assert [bool(found[t]) for t in (txn, txn + 1, txn + 2)] == [True, False, False]


def test_models_are_registered_with_their_features_range_metrics_and_revision(settings, trained):
    card = trained["fraud"].card
    assert card.kind == "xgboost" and card.service == "fraud_detection_v1"
    assert [f"{v}:{f}" for v, f in card.features] == decl.feature_refs("fraud_detection_v1")
    assert card.request_features == [*decl.FRAUD_REQUEST_FEATURES, "merchant_share"]
    assert card.rows > 100 and card.trained_from < card.trained_to and card.code_revision != "unknown"
    assert card.metrics["held_out_auc"] > 0.8  # takeovers spend high amounts at rare merchants: easy to find
    assert 0 <= card.metrics["held_out_precision_at_1pct_fpr"] <= 1
    rec = trained["recommend"].card
    assert rec.kind == "torch" and rec.metrics["held_out"] > 0
    assert 0 <= rec.metrics["popularity_hit_rate_at_10"] <= 1 and 0 <= rec.metrics["hit_rate_at_10"] <= 1
    seg = trained["segments"].card
    assert -1 <= seg.metrics["silhouette"] <= 1 and sum(seg.metrics["segment_sizes"]) == seg.rows
    assert (seg.folder(settings) / segments.PLOT).read_bytes()[:4] == b"\x89PNG"

    assert registry.card(settings, card.name, card.version) == card  # pinned, and the newest
    assert registry.card(settings, card.name) == card
    with pytest.raises(ModelNotFound, match="no version"):
        registry.card(settings, card.name, 10**6)
    listed = run_cli("models", "list")
    assert listed.returncode == 0, listed.stderr
    for model in (card, rec, seg):
        assert f"{model.name} v{model.version} ({model.kind}" in listed.stdout


def test_fraud_scores_use_fresh_features_and_the_request_features_feast_computes(settings, history, trained):
    scorer = FraudScorer.from_settings(settings)
    assert scorer.model.card == trained["fraud"].card
    nobody = -random.randrange(10**15, 10**16)
    transactions = [{"user_id": u, "amount": 35.0 + n, "merchant": "acme"} for n, u in enumerate(history[:20])]
    answer = scorer.score([*transactions, {"user_id": nobody, "amount": 10, "merchant": None, "txn_id": 7}])
    assert answer["model"] == "fraud_detection_v1" and answer["version"] == trained["fraud"].card.version
    last = answer["results"][-1]
    assert last["score"] is None and last["reason"] == "unknown entity" and last["txn_id"] == 7
    # the model's input, rebuilt here: stored features from Redis, then the request features of the declaration
    fetched = scorer.client.fetch(history[:20])
    stored = fetched.matrix()
    names = [f for _, f in scorer.model.features]
    store = feature_store(settings)
    served = store.get_online_features(
        features=store.get_feature_service("fraud_detection_v1"),
        entity_rows=[{"user_id": t["user_id"], "amount": t["amount"], "merchant": t["merchant"]} for t in transactions],
    ).to_dict()
    share = scorer.model.card.extra["merchant_share"]
    for n, t in enumerate(transactions):
        request = decl.fraud_request_features(
            t["amount"], {name: None if np.isnan(v) else v for name, v in zip(names, stored[n], strict=True)}
        )
        for name, value in request.items():  # Feast's on-demand view runs the same function
            assert served[name][n] == (pytest.approx(value) if value is not None else None), name
        x = np.array([[*stored[n], *[np.nan if v is None else v for v in request.values()], share["acme"]]])
        assert answer["results"][n]["score"] == pytest.approx(
            float(scorer.model.booster.inplace_predict(x)[0]), abs=1e-6
        )
        assert answer["results"][n]["as_of"] == {v: t.isoformat() for v, t in fetched.as_of_row(n).items()}
    for bad, message in (
        ([], "non-empty"),
        ([{"user_id": 1}], "user_id and amount"),
        ([{"user_id": 1, "amount": -1}], "amount"),
        ([{"user_id": True, "amount": 1}], "64-bit"),
        ([{"user_id": 1, "amount": 1, "card": "x"}], "optionally"),
        ([{"user_id": 1, "amount": 1}] * (MAX_BATCH + 1), "limit"),
    ):
        with pytest.raises(ScoringError, match=message):
            scorer.score(bad)

    http, stranger = _http(settings, fraud=scorer)
    good = http.post("/score/fraud_detection_v1", json={"transactions": transactions[:3]})
    assert good.status_code == 200 and [r["user_id"] for r in good.json()["results"]] == history[:3]
    assert stranger.post("/score/fraud_detection_v1", json={"transactions": transactions[:3]}).status_code == 401
    assert http.post("/score/fraud_detection_v1", json={"ids": [1]}).status_code == 400
    assert http.post("/score/fraud_detection_v1", json={"transactions": [{"user_id": 1}]}).status_code == 400
    assert http.post("/recommend", json={"user_id": 1}).status_code == 503  # a model not loaded says so
    metrics = stranger.get("/metrics")  # open to Prometheus, as /health is
    assert metrics.status_code == 200
    assert 'cdcf_api_request_seconds_count{endpoint="/score/fraud_detection_v1",status="200"} 1.0' in metrics.text
    assert 'cdcf_api_request_seconds_count{endpoint="/score/fraud_detection_v1",status="401"} 1.0' in metrics.text
    assert 'cdcf_api_request_seconds_count{endpoint="/score/fraud_detection_v1",status="400"} 2.0' in metrics.text
    cli = run_cli("score-fraud", "--", f"{history[0]}:35:acme", f"{nobody}:10")
    assert cli.returncode == 0, cli.stderr
    lines = [json.loads(line) for line in cli.stdout.splitlines()]
    assert [line["user_id"] for line in lines] == [history[0], nobody] and lines[1]["reason"] == "unknown entity"
    assert 0 <= lines[0]["score"] <= 1 and lines[0]["amount"] == 35
    assert run_cli("score-fraud", "x:1").returncode != 0


def test_recommendations_rank_candidates_for_one_user(settings, history, trained):
    ranker = Recommender.from_settings(settings)
    assert ranker.model.card == trained["recommend"].card
    candidates = list(range(history[0], history[0] + PRODUCTS))  # the products of this workload
    user = history[1]
    answer = ranker.recommend(user, 5, candidates)
    items = answer["items"]
    assert answer["version"] == trained["recommend"].card.version and len(items) == 5
    assert [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)
    # the same ranking, rebuilt from the features fetched here
    x = np.hstack(
        [np.repeat(ranker.users.fetch([user]).matrix(), PRODUCTS, axis=0), ranker.products.fetch(candidates).matrix()]
    )
    scores = ranker.model.score(x, candidates)
    assert [i["product_id"] for i in items] == [candidates[n] for n in np.argsort(-scores, kind="stable")[:5]]
    assert set(answer["as_of"]) == {decl.USER_PROFILE.name, decl.USER_ACTIVITY.name}
    unknown = ranker.recommend(-random.randrange(10**15, 10**16), 5, candidates)
    assert unknown["items"] == [] and unknown["reason"] == "unknown entity"
    with pytest.raises(ScoringError, match="k must be"):
        ranker.recommend(user, 0, candidates)

    # any service through one client, two entities per row, as Feast reads it
    nobody = -random.randrange(10**15, 10**16)
    client = ServiceClient.for_service(settings, "recommendation_v1", cache_ttl_s=1.0)
    rows = {"user_id": [user, history[2], nobody], "product_id": [candidates[0], candidates[0], candidates[1]]}
    fetched = client.fetch(rows)
    feast = (
        feature_store(settings)
        .get_online_features(
            features=decl.feature_refs("recommendation_v1"),
            entity_rows=[{"user_id": u, "product_id": p} for u, p in zip(*rows.values(), strict=True)],
        )
        .to_dict()
    )
    for n in range(3):
        assert fetched.row(n) == [feast[name][n] for _, name in client.features]
    assert fetched.known.tolist() == [True, True, False]
    assert set(fetched.as_of) == {decl.USER_PROFILE.name, decl.USER_ACTIVITY.name, decl.PRODUCT_STATS.name}
    client.close()

    http, stranger = _http(settings, recommender=ranker)
    served = http.post("/recommend", json={"user_id": user, "k": 3})
    assert served.status_code == 200 and len(served.json()["items"]) == 3
    assert served.json()["candidates"] == len(ranker.candidates.get())  # the top of product_ranking_v1
    assert stranger.post("/recommend", json={"user_id": user}).status_code == 401
    assert http.post("/recommend", json={"user_id": user, "k": "3"}).status_code == 400
    assert http.post("/recommend", json={"k": 3}).status_code == 400
    cli = run_cli("recommend", str(user), "--k", "3")
    assert cli.returncode == 0, cli.stderr
    items = [json.loads(line) for line in cli.stdout.splitlines()]
    assert len(items) == 3 and [i["score"] for i in items] == sorted((i["score"] for i in items), reverse=True)


def test_batch_scoring_writes_every_users_segment_offline_and_online(settings, history, trained):
    as_of = trained["as_of"]
    done = segments.batch_score(settings, as_of, progress=False)
    model = trained["segments"]
    assert done["version"] == model.card.version and done["users"] == len(segments.users_as_of(settings, as_of))
    rows = dict(
        _offline(
            settings,
            f"SELECT user_id, segment FROM {decl.USER_SEGMENT.offline_table} WHERE "
            "event_timestamp = %s AND model_version = %s AND user_id BETWEEN %s AND %s",
            (as_of, str(model.card.version), history[0], history[-1]),
        )
    )
    assert len(rows) >= USERS // 2
    mine = sorted(rows)
    expected = model.assign(segments.features_as_of(settings, mine, as_of, model.features))
    assert [rows[u] for u in mine] == expected.tolist()
    store = feature_store(settings)
    online = store.get_online_features(
        features=["user_segment_features:segment"], entity_rows=[{"user_id": u} for u in mine]
    ).to_dict()
    assert online["segment"] == [rows[u] for u in mine]

    reader = SegmentReader.from_settings(settings)
    http, stranger = _http(settings, segments=reader)
    got = http.get(f"/segment/{mine[0]}")
    assert got.status_code == 200 and got.json()["segment"] == rows[mine[0]]
    assert got.json()["version"] == model.card.version
    assert got.json()["as_of"] == {decl.USER_SEGMENT.name: as_of.isoformat()}
    assert http.get(f"/segment/{-random.randrange(10**15, 10**16)}").status_code == 404
    assert stranger.get(f"/segment/{mine[0]}").status_code == 401
    cli = run_cli("segment", str(mine[0]))
    assert cli.returncode == 0 and json.loads(cli.stdout)["segment"] == rows[mine[0]], cli.stderr

    later = (as_of + timedelta(seconds=2)).replace(microsecond=0)
    cli = run_cli("batch-score", "--model", "customer_segmentation_v1", "--as-of", later.strftime("%Y-%m-%dT%H:%M:%S"))
    assert cli.returncode == 0, cli.stderr
    assert "users scored by customer_segmentation_v1" in cli.stdout and "user/s" in cli.stderr  # the progress bar
    assert http.get(f"/segment/{mine[0]}").json()["as_of"][decl.USER_SEGMENT.name] == later.isoformat()
