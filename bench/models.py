"""The gpu-node's models on the real stack: a workload of its own users and products (account takeovers and their
chargebacks, purchases by taste), then each model trained on point-in-time sets of it with its quality figure,
the latency of its serving path, and the batch scoring of every user's segment.

- ``fraud_auc``: held-out AUC of fraud_detection_v1 (beside its precision at 1% false positives);
- ``recommend_hit_rate_at_10`` beside ``recommend_popularity_hit_rate_at_10``: the bought product among the top 10
  of every catalog product for the buyer, by the network and by purchases_30d (product_ranking_v1's order);
- ``segmentation_silhouette`` and ``batch_score_users_per_s``: K-means as of now, then every user scored as of
  now through the point-in-time path into user_segments and the online view;
- ``infer_fraud_1_p99_ms``: one transaction, its user's features fetched from Redis and scored (the service's
  path, no HTTP); ``infer_recommend_p99_ms``: one user against ``CANDIDATES`` candidate products.
"""

from __future__ import annotations

import random
import shutil
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.cdc_capture import await_stream
from inference import fraud, recommend, segments
from inference.model import device, frozen_heap, serving_threads
from inference.recommend import CANDIDATES, Candidates
from inference.service import FraudScorer, Recommender
from ops.sample_data import add_users
from ops.workload import Workload


def run(
    settings,
    out: Path,
    seed: int,
    rate: float,
    seconds: float,
    users: int,
    products: int,
    repeats: int,
    train_rows: int,
    held_out: int,
) -> dict:
    base = random.Random(seed + 16).randrange(1, 9000) * 10**11 + 2 * 10**10
    add_users(settings, range(base + 1, base + users + 1), seed)
    Workload(settings, seed=seed, users=users, products=products, entity_base=base).run(rate, seconds)
    await_stream(settings)
    fraud_model = fraud.train(settings, rows=train_rows, seed=seed)
    recommender = recommend.train(settings, rows=train_rows // 2, seed=seed, held_out=held_out)
    as_of = datetime.now(UTC)
    segmenter = segments.train(settings, as_of, seed=seed, sample=train_rows // 2)
    shutil.copy(segmenter.card.folder(settings) / segments.PLOT, out / segments.PLOT)
    scored = segments.batch_score(settings, as_of, progress=False)

    serving_threads()  # as `cdcf serve-scores` does
    scorer = FraudScorer.from_settings(settings)
    rng = random.Random(seed)
    ids = list(range(base + 1, base + users + 1))
    fraud_ms = _timed(
        lambda: scorer.score(
            [
                {
                    "user_id": rng.choice(ids),
                    "amount": round(rng.uniform(1, 2500), 2),
                    "merchant": rng.choice(("acme", "quickcash")),
                }
            ]
        ),
        repeats,
    )
    ranker = Recommender.from_settings(settings)
    candidates = Candidates(settings, CANDIDATES).get()
    recommend_ms = _timed(lambda: ranker.recommend(rng.choice(ids), 10, candidates), repeats)
    return {
        "fraud_auc": fraud_model.card.metrics["held_out_auc"],
        "fraud_precision_at_1pct_fpr": fraud_model.card.metrics["held_out_precision_at_1pct_fpr"],
        "recommend_hit_rate_at_10": recommender.card.metrics["hit_rate_at_10"],
        "recommend_popularity_hit_rate_at_10": recommender.card.metrics["popularity_hit_rate_at_10"],
        "segmentation_silhouette": segmenter.card.metrics["silhouette"],
        "batch_score_users_per_s": scored["users_per_s"],
        "infer_fraud_1_p50_ms": fraud_ms[0],
        "infer_fraud_1_p99_ms": fraud_ms[1],
        "infer_recommend_p50_ms": recommend_ms[0],
        "infer_recommend_p99_ms": recommend_ms[1],
        "models": {
            "device": device().type,
            "workload": {"rate": rate, "seconds": seconds, "users": users, "products": products, "entity_base": base},
            "recommend_candidates": len(candidates),
            "batch_score": scored,
            "cards": {
                m.card.name: {
                    "version": m.card.version,
                    "rows": m.card.rows,
                    "metrics": m.card.metrics,
                    "trained_from": m.card.trained_from,
                    "trained_to": m.card.trained_to,
                }
                for m in (fraud_model, recommender, segmenter)
            },
        },
    }


def _timed(call, repeats: int) -> tuple[float, float]:
    """p50 and p99 in ms of ``repeats`` calls, after a few to warm up, with the heap frozen as the service does."""
    for _ in range(5):
        call()
    samples = []
    with frozen_heap():
        for _ in range(repeats):
            started = time.perf_counter()
            call()
            samples.append((time.perf_counter() - started) * 1000)
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return round(cuts[49], 3), round(cuts[98], 3)
