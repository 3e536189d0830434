"""The model API: fetch fresh features from Redis (online.client), score them with the registered models on
CUDA when present, CPU otherwise, and return each answer with the model version and the as-of times of the
features behind it.

- ``POST /score/fraud_detection_v1`` {"transactions": [{"user_id", "amount", "merchant"}, ...]}: the fraud model
  (inference.fraud) on the users' stored features and each transaction's request-time features;
- ``POST /recommend`` {"user_id", "k"}: the top k of the candidate products (the top of product_ranking_v1) for
  the user, by the recommendation network (inference.recommend);
- ``GET /segment/{user_id}``: the user's segment, as the segmentation model's last batch scoring wrote it;
- ``POST /score`` {"ids": [...]}: the txn_next_7d network (inference.model);
- ``GET /health``.

Over HTTP every request but GET /health and GET /metrics carries the bearer token of the settings
(``scoring_token``); one without it gets 401 before its body is read. /metrics is Prometheus's: the latency of
every request by endpoint and status (``cdcf_api_request_seconds``).

Policy for bad input, the same over HTTP and the batch CLI:
- an entity Redis knows nothing about gets no score, with reason "unknown entity" (never a made-up score);
- a null feature (the average or maximum of an empty window) is imputed by the model and listed in "nulls";
- more than ``MAX_BATCH`` entities, or ids that are not 64-bit integers, are refused with a message;
- over HTTP, a body over ``MAX_BODY`` bytes gets 413 and one that is not JSON, or nests deeper than JSON's parser
  goes, 400; scoring (Redis and the model) runs off the event loop; a Redis that stalls or is down gives 503
  within a second (the client's timeouts), and /health still answers, saying so.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path

import numpy as np
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from cdcf import features as decl
from cdcf.exporter import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from inference.fraud import FraudModel
from inference.model import TrainedModel
from inference.recommend import Candidates, RecommendModel
from inference.registry import ModelNotFound
from inference.segments import scored_by
from online.client import FeatureClient, Fetched

log = logging.getLogger(__name__)
OPEN = ("/health", "/metrics")  # no token: liveness and Prometheus's scrape (latencies and counts, no data)
ENDPOINTS = ("/score", "/score/fraud_detection_v1", "/recommend")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_BATCH = 4096
MAX_BODY = 256 * 1024  # bytes: MAX_BATCH ids of 20 digits fit four times over
INT64 = (-(2**63), 2**63 - 1)


class ScoringError(ValueError):
    """A request the service refuses, with the reason to show the caller."""


def model_path(settings, label: str = "txn_next_7d") -> Path:
    return settings.paths.data / "models" / f"{label}.pt"


class ScoringService:
    def __init__(self, model: TrainedModel, client: FeatureClient) -> None:
        self.model, self.client = model, client

    @classmethod
    def from_settings(cls, settings, path: Path | None = None, cache_ttl_s: float = 0.0) -> ScoringService:
        path = path or model_path(settings)
        if not path.exists():
            raise ScoringError(f"no model at {path}: train one first (`cdcf train-model --model txn_next_7d`)")
        model = TrainedModel.load(path)
        return cls(model, FeatureClient.for_features(settings, model.features, cache_ttl_s))

    def score(self, ids: list) -> dict:
        _check_ids(ids)
        started = time.perf_counter()
        fetched = self.client.fetch(ids)
        x = fetched.matrix()
        results = _results(fetched, x, lambda known: self.model.score(x[known]), [f for _, f in self.model.features])
        for entity_id, result in zip(ids, results, strict=True):
            result["id"] = entity_id
        return {
            "model": self.model.label,
            "device": self.model.model.mean.device.type,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            "results": results,
        }


class FraudScorer:
    """fraud_detection_v1 on transactions: each scored with its user's fresh features and its own amount/merchant."""

    FIELDS = {"user_id", "amount", "merchant", "txn_id"}

    def __init__(self, model: FraudModel, client: FeatureClient) -> None:
        self.model, self.client = model, client

    @classmethod
    def from_settings(cls, settings, version: int | None = None, cache_ttl_s: float = 0.0) -> FraudScorer:
        model = FraudModel.load(settings, version)
        return cls(model, FeatureClient.for_features(settings, model.features, cache_ttl_s))

    def score(self, transactions: list) -> dict:
        if not isinstance(transactions, list) or not transactions:
            raise ScoringError(
                'send a non-empty list of transactions: [{"user_id": 1, "amount": 12.5, "merchant": "acme"}]'
            )
        if len(transactions) > MAX_BATCH:
            raise ScoringError(f"{len(transactions)} transactions in one request; the limit is {MAX_BATCH}")
        for t in transactions:
            _check_transaction(t, self.FIELDS)
        ids = [t["user_id"] for t in transactions]
        started = time.perf_counter()
        fetched = self.client.fetch(ids)
        stored = fetched.matrix()
        x = self.model.matrix(
            stored, [float(t["amount"]) for t in transactions], [t.get("merchant") for t in transactions]
        )
        results = _results(
            fetched, stored, lambda known: self.model.score(x[known]), [f for _, f in self.model.features]
        )
        for t, result in zip(transactions, results, strict=True):
            result.update(t)  # the transaction as sent, beside its score
        return {
            "model": self.model.card.name,
            "version": self.model.card.version,
            "device": _device(),
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            "results": results,
        }


class Recommender:
    """recommendation_v1 for one user: the candidate products (the top of product_ranking_v1) scored in one batch
    with the user's and each product's fresh features; the top k."""

    def __init__(
        self, model: RecommendModel, users: FeatureClient, products: FeatureClient, candidates: Candidates
    ) -> None:
        self.model, self.users, self.products, self.candidates = model, users, products, candidates
        self.client = users

    @classmethod
    def from_settings(cls, settings, version: int | None = None, cache_ttl_s: float = 0.0) -> Recommender:
        model = RecommendModel.load(settings, version)
        return cls(
            model,
            FeatureClient.for_features(settings, model.user_features, cache_ttl_s),
            FeatureClient.for_features(settings, model.product_features, cache_ttl_s),
            Candidates(settings),
        )

    def recommend(self, user_id, k=10, candidates: list[int] | None = None) -> dict:
        _check_ids([user_id])
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 100:
            raise ScoringError(f"k must be an integer from 1 to 100; got {k!r}")
        started = time.perf_counter()
        ids = candidates if candidates is not None else self.candidates.get()
        user = self.users.fetch([user_id])
        answer = {
            "user_id": user_id,
            "model": self.model.card.name,
            "version": self.model.card.version,
            "as_of": {v: (t.isoformat() if t else None) for v, t in user.as_of_row(0).items()},
        }
        if not user.known[0]:
            return {**answer, "items": [], "reason": "unknown entity"}
        products = self.products.fetch(ids)
        x = np.hstack([np.repeat(user.matrix(), len(ids), axis=0), products.matrix()])
        scores = self.model.score(x, ids)
        top = np.argsort(-scores, kind="stable")[:k]
        (view,) = products.as_of
        names = [f for _, f in self.model.user_features]
        return {
            **answer,
            "nulls": [n for n, null in zip(names, np.isnan(user.matrix()[0]), strict=True) if null],
            "candidates": len(ids),
            "device": self.model.network.mean.device.type,
            "elapsed_ms": round((time.perf_counter() - started) * 1000, 3),
            "items": [
                {
                    "product_id": ids[n],
                    "score": float(scores[n]),
                    "as_of": {
                        view: None
                        if np.isnat(products.as_of[view][n])
                        else str(np.datetime_as_string(products.as_of[view][n], unit="us")) + "+00:00"
                    },
                }
                for n in top
            ],
        }


class SegmentReader:
    """A user's segment from the online view user_segment_features, with the model version that wrote it."""

    def __init__(self, settings, client: FeatureClient) -> None:
        self.settings, self.client = settings, client

    @classmethod
    def from_settings(cls, settings) -> SegmentReader:
        view = decl.USER_SEGMENT
        return cls(settings, FeatureClient.for_features(settings, [(view.name, f.name) for f in view.features]))

    def segment(self, user_id: int) -> dict:
        _check_ids([user_id])
        fetched = self.client.fetch([user_id])
        (segment,) = fetched.row(0)
        as_of = fetched.as_of_row(0)[decl.USER_SEGMENT.name]
        if segment is None or as_of is None:
            return {"user_id": user_id, "segment": None, "reason": "unknown entity: no segment scored for this user"}
        return {
            "user_id": user_id,
            "segment": segment,
            "model": "customer_segmentation_v1",
            "version": scored_by(self.settings, as_of),
            "as_of": {decl.USER_SEGMENT.name: as_of.isoformat()},
        }


def loaded_models(settings, cache_ttl_s: float = 0.0) -> dict:
    """create_app's keyword arguments for every model the registry (or the data folder) holds, newest versions."""
    models = {}
    for name, load in (
        ("scoring", lambda: ScoringService.from_settings(settings, cache_ttl_s=cache_ttl_s)),
        ("fraud", lambda: FraudScorer.from_settings(settings, cache_ttl_s=cache_ttl_s)),
        ("recommender", lambda: Recommender.from_settings(settings, cache_ttl_s=cache_ttl_s)),
        ("segments", lambda: SegmentReader.from_settings(settings)),
    ):
        try:
            models[name] = load()
        except (ScoringError, ModelNotFound) as exc:
            log.warning("not serving %s: %s", name, exc)
    return models


def _check_ids(ids: list) -> None:
    if not isinstance(ids, list) or not ids:
        raise ScoringError("send a non-empty list of entity ids")
    if len(ids) > MAX_BATCH:
        raise ScoringError(f"{len(ids)} entities in one request; the limit is {MAX_BATCH}")
    bad = [i for i in ids if not _is_int64(i)]
    if bad:
        raise ScoringError(f"entity ids must be 64-bit integers; got {bad[:5]!r}")


def _is_int64(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and INT64[0] <= value <= INT64[1]


def _check_transaction(t, fields: set[str]) -> None:
    if not isinstance(t, dict) or not {"user_id", "amount"} <= set(t) or not set(t) <= fields:
        raise ScoringError(
            f"each transaction is an object with user_id and amount, and optionally merchant and "
            f"txn_id; got {str(t)[:200]}"
        )
    if not _is_int64(t["user_id"]) or ("txn_id" in t and not _is_int64(t["txn_id"])):
        raise ScoringError(f"user_id and txn_id must be 64-bit integers; got {str(t)[:200]}")
    amount = t["amount"]
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not 0 <= amount < 1e12:
        raise ScoringError(f"amount must be a number from 0 up to 1e12; got {amount!r}")
    merchant = t.get("merchant")
    if merchant is not None and (not isinstance(merchant, str) or len(merchant) > 200):
        raise ScoringError(f"merchant must be a string of at most 200 characters or null; got {str(merchant)[:50]!r}")


def _results(fetched: Fetched, x: np.ndarray, score, names: list[str]) -> list[dict]:
    """Per entity: its score (none for an entity Redis does not know, with the reason), the as-of time of each
    view behind it, and the features that were null (imputed by the model)."""
    scores = np.full(len(fetched.ids), np.nan)
    if fetched.known.any():
        scores[fetched.known] = score(fetched.known)
    nulls = np.isnan(x)
    results = []
    for n in range(len(fetched.ids)):
        known = bool(fetched.known[n])
        results.append(
            {
                "score": float(scores[n]) if known else None,
                "as_of": {v: (t.isoformat() if t else None) for v, t in fetched.as_of_row(n).items()},
                "nulls": [name for name, null in zip(names, nulls[n], strict=True) if null] if known else [],
                **({} if known else {"reason": "unknown entity"}),
            }
        )
    return results


def _device() -> str:
    from inference.model import device

    return device().type


def create_app(
    token: str,
    *,
    scoring: ScoringService | None = None,
    fraud: FraudScorer | None = None,
    recommender: Recommender | None = None,
    segments: SegmentReader | None = None,
):
    """The HTTP API, for callers with the bearer ``token`` only (but GET /health): the endpoints of the models
    given; one whose model is not given answers 503 saying how to train it."""
    app = FastAPI(title="cdcf model API")
    expected = f"Bearer {token}".encode()
    registry = CollectorRegistry()  # the app's own: two apps in one process (tests) count apart
    latency = Histogram(
        "cdcf_api_request_seconds",
        "Model API requests: seconds from arrival to answer, by endpoint and status",
        ["endpoint", "status"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        path = request.url.path
        if path in OPEN:
            return await call_next(request)
        started = time.perf_counter()
        if not hmac.compare_digest(request.headers.get("authorization", "").encode(), expected):
            response = JSONResponse(
                {"error": "send the scoring token: Authorization: Bearer <CDCF_SCORING_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        else:
            response = await call_next(request)
        endpoint = "/segment/{user_id}" if path.startswith("/segment/") else path if path in ENDPOINTS else "other"
        latency.labels(endpoint, str(response.status_code)).observe(time.perf_counter() - started)
        return response

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    def health() -> dict:
        clients = [c.client for c in (scoring, fraud, recommender, segments) if c is not None]
        redis_state = clients[0].ping() if clients else "unused"
        return {
            "status": "ok" if redis_state in ("ok", "unused") else "degraded",
            "redis": redis_state,
            "device": _device(),
            "models": {
                **(
                    {
                        "txn_next_7d": {
                            "features": [f"{v}:{f}" for v, f in scoring.model.features],
                            "metrics": scoring.model.metrics,
                        }
                    }
                    if scoring
                    else {}
                ),
                **{
                    m.card.name: {"version": m.card.version, "metrics": m.card.metrics}
                    for m in (fraud and fraud.model, recommender and recommender.model)
                    if m
                },
            },
        }

    @app.post("/score")
    async def score(request: Request):
        return await _answer(request, "ids", "[1, 2, 3]", scoring and scoring.score, "txn_next_7d")

    @app.post("/score/fraud_detection_v1")
    async def score_fraud(request: Request):
        return await _answer(
            request,
            "transactions",
            '[{"user_id": 1, "amount": 12.5, "merchant": "acme"}]',
            fraud and fraud.score,
            "fraud_detection_v1",
        )

    @app.post("/recommend")
    async def recommend(request: Request):
        return await _answer(
            request,
            None,
            '{"user_id": 1, "k": 10}',
            recommender and (lambda body: recommender.recommend(**body)),
            "recommendation_v1",
            keys={"user_id", "k"},
            required={"user_id"},
        )

    @app.get("/segment/{user_id}")
    async def segment(user_id: int):
        if segments is None:
            return _untrained("customer_segmentation_v1")
        try:
            answer = await run_in_threadpool(segments.segment, user_id)
        except ScoringError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        except redis.RedisError as exc:
            raise HTTPException(status_code=503, detail=f"the online store is unreachable: {exc}") from exc
        return JSONResponse(answer, status_code=404 if answer["segment"] is None else 200)

    return app


async def _answer(
    request: Request,
    key: str | None,
    example: str,
    score,
    model: str,
    keys: set[str] | None = None,
    required: set[str] | None = None,
):
    """Read a JSON body ``{key: [...]}`` within the limits and answer with ``score(body[key])``; with no ``key``,
    a body of the ``keys`` (``required`` among them), answered with ``score(body)``."""
    if score is None:
        return _untrained(model)
    raw = await _body(request)
    if raw is None:
        return JSONResponse(
            {"error": f"the body is over {MAX_BODY} bytes; send at most {MAX_BATCH} {key or 'ids'}"}, status_code=413
        )
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        why = "nests too deep" if isinstance(exc, RecursionError) else "is not JSON"
        shown = f'{{"{key}": {example}}}' if key else example
        return JSONResponse({"error": f"the body {why}; send {shown}"}, status_code=400)
    if key is None:
        if not isinstance(body, dict) or not required <= set(body) <= keys:
            return JSONResponse(
                {
                    "error": f"send a JSON object with {', '.join(sorted(required))} and optionally "
                    f"{', '.join(sorted(keys - required))}: {example}"
                },
                status_code=400,
            )
    elif not isinstance(body, dict) or set(body) != {key}:
        return JSONResponse(
            {"error": f'send a JSON object with one key, {key}: {{"{key}": {example}}}'}, status_code=400
        )
    try:
        return await run_in_threadpool(score, body if key is None else body[key])
    except ScoringError as exc:
        status = 413 if "limit" in str(exc) else 400
        return JSONResponse({"error": str(exc)}, status_code=status)
    except redis.RedisError as exc:
        raise HTTPException(status_code=503, detail=f"the online store is unreachable: {exc}") from exc


def _untrained(model: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"no {model} model is loaded: train it (`cdcf train-model --model {model}`) and restart the service"},
        status_code=503,
    )


async def _body(request: Request) -> bytes | None:
    """The request body, or None once it is over ``MAX_BODY`` bytes (by its length header, or as it streams in)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)
