"""The model: an MLP scoring whether a user transacts in the next 7 days, trained on a point-in-time training set.

Features are a feature service's numeric features, in a fixed order saved with the weights; nulls (the average
or maximum of an empty window) are replaced by the training mean, and the model also sees which were null.
Training runs on CUDA when present, CPU otherwise; the saved file loads on either.
"""

from __future__ import annotations

import gc
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@contextmanager
def frozen_heap():
    """Keep everything loaded so far (torch, numpy, the model) out of the cyclic collector's reach while serving:
    with torch imported a full collection walks millions of objects, a pause that otherwise lands in a request's
    p99. Unfrozen on exit, so that the interpreter's shutdown still frees it."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def serving_threads(threads: int = 1) -> None:
    """A request scores one small batch: on a CPU shared with the pipeline, torch's intra-op threads wait on each
    other more than they help (one user against 1,000 candidates on this 2-core machine beside the streaming job:
    p99 31-62 ms on one thread, 125-145 ms on two). No effect on CUDA."""
    if device().type == "cpu":
        torch.set_num_threads(threads)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Scorer(nn.Module):
    """standardize(x with nulls imputed) ++ null mask -> MLP -> probability."""

    def __init__(self, features: int, mean: np.ndarray, std: np.ndarray, hidden: int = 64) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(2 * features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x)
        x = torch.where(missing, self.mean, x)
        z = (x - self.mean) / self.std
        return torch.sigmoid(self.net(torch.cat([z, missing.float()], dim=1))).squeeze(1)


@dataclass
class TrainedModel:
    model: Scorer
    service: str
    features: list[tuple[str, str]]  # (view, feature), the input order
    label: str
    metrics: dict

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state": self.model.state_dict(),
                "service": self.service,
                "features": self.features,
                "label": self.label,
                "metrics": self.metrics,
                "hidden": self.model.net[0].out_features,
            },
            path,
        )

    @classmethod
    def load(cls, path: Path, on: torch.device | None = None) -> TrainedModel:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        n = len(saved["features"])
        model = Scorer(n, np.zeros(n), np.ones(n), hidden=saved["hidden"])
        model.load_state_dict(saved["state"])
        model.to(on or device()).eval()
        return cls(model, saved["service"], [tuple(f) for f in saved["features"]], saved["label"], saved["metrics"])

    @torch.inference_mode()
    def score(self, x: np.ndarray) -> np.ndarray:
        on = self.model.mean.device
        return self.model(torch.as_tensor(x, dtype=torch.float32, device=on)).cpu().numpy()


def train(
    x: np.ndarray,
    y: np.ndarray,
    *,
    service: str,
    features: list[tuple[str, str]],
    label: str,
    epochs: int = 20,
    seed: int = 0,
) -> TrainedModel:
    """Fit on 80% of the rows (shuffled), report loss and AUC on the other 20%."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    cut = int(len(x) * 0.8)
    fit, held = order[:cut], order[cut:]
    mean = np.nan_to_num(np.nanmean(x[fit], axis=0))
    std = np.nan_to_num(np.nanstd(x[fit], axis=0), nan=1.0)
    std[std == 0] = 1.0
    on = device()
    model = Scorer(x.shape[1], mean, std).to(on)
    xs, ys = (torch.as_tensor(a, dtype=torch.float32, device=on) for a in (x, y))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.BCELoss()
    losses = []
    for _ in range(epochs):
        model.train()
        for batch in torch.as_tensor(fit, device=on).split(512):
            optimizer.zero_grad()
            loss = loss_fn(model(xs[batch]), ys[batch])
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.inference_mode():
        held_scores = model(xs[held]).cpu().numpy() if len(held) else np.array([])
    metrics = {
        "rows": len(x),
        "positives": float(y.mean()) if len(y) else 0.0,
        "epochs": epochs,
        "first_epoch_loss": losses[0],
        "last_epoch_loss": losses[-1],
        "held_out_auc": auc(y[held], held_scores),
        "device": on.type,
        "trained_at": datetime.now(UTC).isoformat(),
    }
    log.info("trained on %d rows (%s): %s", len(x), on.type, metrics)
    return TrainedModel(model, service, features, label, metrics)


def auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve by ranks (Mann-Whitney); None when one class is absent."""
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))
