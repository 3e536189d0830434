"""Scoring: fetch a batch of entities' fresh features from Redis (inference.client), score them with the trained
model on CUDA when present, CPU otherwise, and return each score with the as-of times of the features behind it.

Over HTTP every request but GET /health carries the bearer token of the settings (``scoring_token``); one without
it gets 401 before its body is read.

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
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from inference.client import FeatureClient
from inference.model import TrainedModel

log = logging.getLogger(__name__)
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
            raise ScoringError(f"no model at {path}: train one first (`cdcf train-model`)")
        model = TrainedModel.load(path)
        return cls(model, FeatureClient.for_features(settings, model.features, cache_ttl_s))

    def score(self, ids: list) -> dict:
        if not isinstance(ids, list) or not ids:
            raise ScoringError("send a non-empty list of entity ids")
        if len(ids) > MAX_BATCH:
            raise ScoringError(f"{len(ids)} entities in one request; the limit is {MAX_BATCH}")
        bad = [i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not INT64[0] <= i <= INT64[1]]
        if bad:
            raise ScoringError(f"entity ids must be 64-bit integers; got {bad[:5]!r}")
        started = time.perf_counter()
        fetched = self.client.fetch(ids)
        x = fetched.matrix()
        scores = np.full(len(ids), np.nan)
        if fetched.known.any():
            scores[fetched.known] = self.model.score(x[fetched.known])
        names = [f for _, f in self.model.features]
        results = []
        nulls = np.isnan(x)
        for n, entity_id in enumerate(ids):
            known = bool(fetched.known[n])
            results.append({
                "id": entity_id,
                "score": float(scores[n]) if known else None,
                "as_of": {v: (t.isoformat() if t else None) for v, t in fetched.as_of_row(n).items()},
                "nulls": [name for name, null in zip(names, nulls[n], strict=True) if null] if known else [],
                **({} if known else {"reason": "unknown entity"}),
            })
        return {"model": self.model.label, "device": self.model.model.mean.device.type,
                "elapsed_ms": round((time.perf_counter() - started) * 1000, 3), "results": results}


def create_app(service: ScoringService, token: str):
    """The HTTP API: POST /score {"ids": [...]}, for callers with the bearer ``token`` only, and GET /health."""
    app = FastAPI(title="cdcf scoring")
    expected = f"Bearer {token}".encode()

    @app.middleware("http")
    async def bearer_token(request: Request, call_next):
        if request.url.path != "/health" and not hmac.compare_digest(
                request.headers.get("authorization", "").encode(), expected):
            return JSONResponse({"error": "send the scoring token: Authorization: Bearer <CDCF_SCORING_TOKEN>"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/health")
    def health() -> dict:
        redis_state = service.client.ping()
        return {"status": "ok" if redis_state == "ok" else "degraded", "redis": redis_state,
                "model": service.model.label, "device": service.model.model.mean.device.type,
                "features": [f"{v}:{f}" for v, f in service.model.features], "metrics": service.model.metrics}

    @app.post("/score")
    async def score(request: Request):
        raw = await _body(request)
        if raw is None:
            return JSONResponse({"error": f"the body is over {MAX_BODY} bytes; send at most {MAX_BATCH} ids"},
                                status_code=413)
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            why = "nests too deep" if isinstance(exc, RecursionError) else "is not JSON"
            return JSONResponse({"error": f"the body {why}; send {{\"ids\": [1, 2, 3]}}"}, status_code=400)
        if not isinstance(body, dict) or set(body) != {"ids"}:
            return JSONResponse({"error": "send a JSON object with one key, ids: {\"ids\": [1, 2, 3]}"},
                                status_code=400)
        try:
            return await run_in_threadpool(service.score, body["ids"])
        except ScoringError as exc:
            status = 413 if "limit" in str(exc) else 400
            return JSONResponse({"error": str(exc)}, status_code=status)
        except redis.RedisError as exc:
            raise HTTPException(status_code=503, detail=f"the online store is unreachable: {exc}") from exc

    return app


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
