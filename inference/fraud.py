"""fraud_detection_v1: gradient-boosted trees (XGBoost, CUDA when present) scoring one transaction.

Training rows are the transactions the pipeline had served their user before (serving scores no other).
Input, in the saved order: the service's stored features as of just before the transaction (point-in-time sets
in training, Redis in serving), its request-time features (``cdcf.features.fraud_request_features``, the function
Feast's on-demand view runs too), and how common its merchant is among the training transactions (an unseen
merchant is 0: account takeovers spend where ordinary users seldom do). Nulls stay NaN, which the trees route
by what they learned. Label: a chargeback within 60 days (``offline.training.labelled_transactions``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import xgboost as xgb

from cdcf import features as decl
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from inference import registry
from inference.model import auc, device
from inference.registry import ModelCard
from offline.training import CHARGEBACK_HORIZON, TrainingSetError, labelled_transactions, resolve, training_set

log = logging.getLogger(__name__)
NAME = SERVICE = "fraud_detection_v1"
MODEL_FILE = "model.ubj"
BEFORE = timedelta(microseconds=1)  # features as of just before the transaction: what a scorer sees pre-commit
FPR = 0.01  # the false-positive rate precision is reported at


@dataclass
class FraudModel:
    booster: xgb.Booster
    card: ModelCard

    @property
    def features(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in self.card.features]

    def matrix(
        self, stored: np.ndarray, amounts: Sequence[float | None], merchants: Sequence[str | None]
    ) -> np.ndarray:
        """The model's input: the stored features (NaN for null), then the request features and merchant share."""
        return inputs(
            stored, [name for _, name in self.features], amounts, merchants, self.card.extra["merchant_share"]
        )

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.booster.inplace_predict(x) if len(x) else np.empty(0)

    @classmethod
    def load(cls, settings: Settings, version: int | None = None) -> FraudModel:
        card = registry.card(settings, NAME, version)
        booster = xgb.Booster()
        booster.load_model(card.folder(settings) / MODEL_FILE)
        booster.set_param({"device": device().type})
        return cls(booster, card)


def inputs(
    stored: np.ndarray,
    names: list[str],
    amounts: Sequence[float | None],
    merchants: Sequence[str | None],
    merchant_share: dict[str, float],
) -> np.ndarray:
    request = np.array(
        [
            [
                np.nan if v is None else v
                for v in decl.fraud_request_features(
                    amount,
                    {
                        name: None if np.isnan(value) else float(value)
                        for name, value in zip(names, row, strict=True)
                        if name in decl.FRAUD_REQUEST_FEATURES.values()
                    },
                ).values()
            ]
            for amount, row in zip(amounts, stored, strict=True)
        ],
        dtype=np.float64,
    ).reshape(len(stored), -1)
    share = np.array([[merchant_share.get(m or "", 0.0)] for m in merchants], dtype=np.float64).reshape(-1, 1)
    return np.hstack([stored.astype(np.float64), request, share])


def train(settings: Settings, rows: int | None = None, seed: int = 0, rounds: int = 200) -> FraudModel:
    """Train on (up to ``rows``, sampled) labelled transactions with point-in-time features; register it."""
    txns = labelled_transactions(settings)
    if txns.empty or not txns["fraud"].any():
        raise TrainingSetError(
            "no labelled fraud in the change history: seed the sample data (it holds chargebacks) "
            "and let the archiver catch up"
        )
    if rows is not None and rows < len(txns):
        txns = txns.sample(rows, random_state=seed).sort_values("txn_id")
    views = resolve(SERVICE)
    features = [(view.name, name) for view, names in views for name in names]
    entities = pd.DataFrame({"user_id": txns["user_id"].to_numpy(), EVENT_TIMESTAMP: txns["created_at"] - BEFORE})
    frame = training_set(settings, entities, SERVICE).to_pandas()
    stored = frame[[name for _, name in features]].astype("float64").to_numpy()
    # a transaction of a user the pipeline had not yet served (rows seeded with past event times, say) has no stored
    # values as of its time: serving never scores such a user (unknown entity), so training leaves it out too
    served = ~np.isnan(stored).all(axis=1)
    if served.sum() < 50 or not txns["fraud"].to_numpy()[served].any():
        raise TrainingSetError(
            f"{served.sum()} transactions with stored features, and too few of them fraud: let a "
            "workload run a while (it makes account takeovers and chargebacks)"
        )
    txns, entities, stored = txns[served], entities[served], stored[served]
    share = (txns["merchant"].fillna("").value_counts(normalize=True)).to_dict()
    x = inputs(stored, [name for _, name in features], txns["amount"].tolist(), txns["merchant"].tolist(), share)
    y = txns["fraud"].astype("float64").to_numpy()
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(len(x) * 0.8)
    fit, held = order[:cut], order[cut:]
    on = device().type
    params = {
        "objective": "binary:logistic",
        "eval_metric": "auc",
        "max_depth": 4,
        "eta": 0.1,
        "subsample": 0.9,
        "tree_method": "hist",
        "device": on,
        "seed": seed,
        "scale_pos_weight": max(1.0, float((y[fit] == 0).sum()) / max(1.0, float(y[fit].sum()))),
    }
    names = [name for _, name in features] + list(decl.FRAUD_REQUEST_FEATURES) + ["merchant_share"]
    booster = xgb.train(params, xgb.DMatrix(x[fit], label=y[fit], feature_names=names), num_boost_round=rounds)
    held_scores = booster.inplace_predict(x[held])
    metrics = {
        "rows": len(x),
        "fraud_share": float(y.mean()),
        "held_out_rows": len(held),
        "held_out_auc": auc(y[held], held_scores),
        "held_out_precision_at_1pct_fpr": precision_at_fpr(y[held], held_scores, FPR),
        "device": on,
        "label": f"chargeback within {CHARGEBACK_HORIZON.days} days",
    }
    log.info("fraud model trained on %d transactions (%s): %s", len(x), on, metrics)
    card = registry.save(
        settings,
        {
            "name": NAME,
            "kind": "xgboost",
            "service": SERVICE,
            "features": [list(f) for f in features],
            "request_features": list(decl.FRAUD_REQUEST_FEATURES) + ["merchant_share"],
            "trained_from": str(entities[EVENT_TIMESTAMP].min()),
            "trained_to": str(entities[EVENT_TIMESTAMP].max()),
            "rows": len(x),
            "metrics": metrics,
            "extra": {"merchant_share": share},
        },
        lambda folder: booster.save_model(folder / MODEL_FILE),
    )
    return FraudModel(booster, card)


def precision_at_fpr(y: np.ndarray, scores: np.ndarray, fpr: float) -> float | None:
    """Precision among the scores above the threshold that lets ``fpr`` of the negatives through."""
    negatives = scores[y == 0]
    if len(negatives) == 0 or y.sum() == 0:
        return None
    threshold = np.quantile(negatives, 1 - fpr, method="higher")  # at most fpr of the negatives above it
    flagged = scores > threshold
    return float(y[flagged].mean()) if flagged.any() else 0.0
