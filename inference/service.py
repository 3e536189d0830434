"""Scoring: fetch a batch of entities' fresh features from Redis (inference.client), score them with the trained
model on CUDA when present, CPU otherwise, and return each score with the as-of times of the features behind it.

Policy for bad input, the same over HTTP and the batch CLI:
- an entity Redis knows nothing about gets no score, with reason "unknown entity" (never a made-up score);
- a null feature (the average or maximum of an empty window) is imputed by the model and listed in "nulls";
- more than ``MAX_BATCH`` entities, or ids that are not 64-bit integers, are refused with a message.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import redis
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from inference.client import FeatureClient
from inference.model import TrainedModel

log = logging.getLogger(__name__)
MAX_BATCH = 4096
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


def create_app(service: ScoringService):
    """The HTTP API: POST /score {"ids": [...]} and GET /health."""
    app = FastAPI(title="cdcf scoring")

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": service.model.label, "device": service.model.model.mean.device.type,
                "features": [f"{v}:{f}" for v, f in service.model.features], "metrics": service.model.metrics}

    @app.post("/score")
    async def score(request: Request):
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON; send {\"ids\": [1, 2, 3]}"}, status_code=400)
        if not isinstance(body, dict) or set(body) != {"ids"}:
            return JSONResponse({"error": "send a JSON object with one key, ids: {\"ids\": [1, 2, 3]}"},
                                status_code=400)
        try:
            return service.score(body["ids"])
        except ScoringError as exc:
            status = 413 if "limit" in str(exc) else 400
            return JSONResponse({"error": str(exc)}, status_code=status)
        except redis.RedisError as exc:
            raise HTTPException(status_code=503, detail=f"the online store is unreachable: {exc}") from exc

    return app
