"""recommendation_v1: a PyTorch network over user x product (CUDA when present) scoring whether the user buys the
product within 7 days, and serving the top k of the candidate products for one user in one batch.

Input: the user's and the product's stored features of recommendation_v1 (standardized, nulls imputed and
flagged, as inference.model does), and a learned embedding of the product (products outside the training catalog
share one). Training rows are point-in-time (user, product, time) rows: each purchase, as of just before it, is a
positive; ``NEGATIVES`` products the user did not buy in the 7 days after that time are its negatives.

Only purchases by users the pipeline had served before them count (serving never scores another). Held out is
the latest fifth of those in time: for each, every candidate product is scored for the user
as of that time, a hit is the bought product among the top 10. Beside it, the popularity baseline ranks the same
candidates by ``purchases_30d`` as of the same time (product_ranking_v1's order).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd
import psycopg2
import torch
from torch import nn

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from inference import registry
from inference.model import device
from inference.registry import ModelCard
from offline.training import TrainingSetError, labelled_transactions, resolve, training_set

log = logging.getLogger(__name__)
NAME = SERVICE = "recommendation_v1"
MODEL_FILE = "model.pt"
HORIZON = timedelta(days=7)
BEFORE = timedelta(microseconds=1)
NEGATIVES = 4
TOP = 10
CANDIDATES = 1000  # the top products of product_ranking_v1 a recommendation ranks
POPULARITY = "purchases_30d"


class Network(nn.Module):
    """standardize(x with nulls imputed) ++ null mask ++ product embedding -> MLP -> logit."""

    def __init__(
        self, features: int, products: int, mean: np.ndarray, std: np.ndarray, dim: int = 16, hidden: int = 64
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))
        self.embedding = nn.Embedding(products + 1, dim)  # row 0: a product outside the training catalog
        self.net = nn.Sequential(
            nn.Linear(2 * features + dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
        )

    def forward(self, x: torch.Tensor, product: torch.Tensor) -> torch.Tensor:
        missing = torch.isnan(x)
        z = (torch.where(missing, self.mean, x) - self.mean) / self.std
        return self.net(torch.cat([z, missing.float(), self.embedding(product)], dim=1)).squeeze(1)


@dataclass
class RecommendModel:
    network: Network
    card: ModelCard | None  # None until registered
    catalog: dict[int, int]  # product id -> embedding row
    user_features: list[tuple[str, str]]
    product_features: list[tuple[str, str]]

    def rows(self, products) -> np.ndarray:
        return np.array([self.catalog.get(int(p), 0) for p in products], dtype=np.int64)

    @torch.inference_mode()
    def score(self, x: np.ndarray, products) -> np.ndarray:
        """Scores of (user, product) rows: user then product features, NaN for null."""
        on = self.network.mean.device
        return (
            torch.sigmoid(
                self.network(
                    torch.as_tensor(x, dtype=torch.float32, device=on), torch.as_tensor(self.rows(products), device=on)
                )
            )
            .cpu()
            .numpy()
        )

    @classmethod
    def load(cls, settings: Settings, version: int | None = None, on: torch.device | None = None) -> RecommendModel:
        card = registry.card(settings, NAME, version)
        saved = torch.load(card.folder(settings) / MODEL_FILE, map_location="cpu", weights_only=True)
        n = len(card.features)
        network = Network(n, len(saved["catalog"]), np.zeros(n), np.ones(n))
        network.load_state_dict(saved["state"])
        network.to(on or device()).eval()
        return cls(
            network,
            card,
            {int(p): i + 1 for i, p in enumerate(saved["catalog"])},
            [tuple(f) for f in card.extra["user_features"]],
            [tuple(f) for f in card.extra["product_features"]],
        )


def split_features() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """recommendation_v1's numeric features: the user's, then the product's."""
    user, product = [], []
    for view, names in resolve(SERVICE):
        dtypes = {f.name: f.dtype for f in view.features}
        (user if view.entity == decl.USER else product).extend(
            (view.name, name) for name in names if dtypes[name] != "string"
        )
    return user, product


def pairs_features(settings: Settings, pairs: pd.DataFrame) -> np.ndarray:
    """User then product features of (user_id, product_id, event_timestamp) rows, as of each row's time."""
    user, product = split_features()
    frame = training_set(settings, pairs[["user_id", "product_id", EVENT_TIMESTAMP]], SERVICE).to_pandas()
    return frame[[name for _, name in user + product]].astype("float64").to_numpy()


def served_users(settings: Settings, purchases: pd.DataFrame) -> np.ndarray:
    """Per purchase: had the pipeline served its user before it (a value in one of the user's views)? A purchase
    imported with a past event time was not, and serving never scores a user it has not served."""
    user, _ = split_features()
    frame = training_set(
        settings,
        pd.DataFrame({"user_id": purchases["user_id"].to_numpy(), EVENT_TIMESTAMP: purchases["created_at"] - BEFORE}),
        [f"{view}:{name}" for view, name in user],
    ).to_pandas()
    return frame[[name for _, name in user]].notna().any(axis=1).to_numpy()


def training_pairs(purchases: pd.DataFrame, catalog: list[int], rng: np.random.Generator) -> pd.DataFrame:
    """Each purchase as a positive as of just before it, and ``NEGATIVES`` catalog products the user did not buy
    in the ``HORIZON`` after that time."""
    bought: dict[tuple[int, int], list] = {}
    for user, product, at in purchases[["user_id", "product_id", "created_at"]].itertuples(index=False):
        bought.setdefault((user, product), []).append(at)
    for times in bought.values():
        times.sort()

    def buys(user: int, product: int, at) -> bool:
        times = bought.get((user, product), [])
        n = bisect.bisect_right(times, at)
        return n < len(times) and times[n] <= at + HORIZON

    rows = []
    for user, product, at in purchases[["user_id", "product_id", "created_at"]].itertuples(index=False):
        as_of = at - BEFORE
        rows.append((user, product, as_of, 1.0))
        found = 0
        for candidate in rng.choice(catalog, NEGATIVES * 3):
            if found == NEGATIVES:
                break
            if not buys(user, int(candidate), as_of):
                rows.append((user, int(candidate), as_of, 0.0))
                found += 1
    return pd.DataFrame(rows, columns=["user_id", "product_id", EVENT_TIMESTAMP, "label"])


def train(
    settings: Settings, rows: int | None = 20_000, seed: int = 0, epochs: int = 8, held_out: int = 300
) -> RecommendModel:
    """Train on (up to ``rows``) purchases before the held-out period, evaluate on up to ``held_out`` purchases
    after it against the popularity baseline; register the model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    purchases = labelled_transactions(settings).dropna(subset=["product_id"])
    purchases = purchases[~purchases["fraud"]].astype({"product_id": "int64"})  # taste, not takeovers
    if rows is not None and len(purchases) > 5 * rows:
        purchases = purchases.sample(5 * rows, random_state=seed)
    purchases = purchases[served_users(settings, purchases)]
    if len(purchases) < 100:
        raise TrainingSetError(
            f"{len(purchases)} purchases by users the pipeline had served before them: let a workload run a while first"
        )
    cut = purchases["created_at"].quantile(0.8)
    catalog = purchases["product_id"].value_counts().index[:CANDIDATES].sort_values().tolist()
    fit = purchases[purchases["created_at"] < cut]
    if rows is not None and rows < len(fit):
        fit = fit.sample(rows, random_state=seed)
    pairs = training_pairs(fit, catalog, rng)
    x = pairs_features(settings, pairs)
    user, product = split_features()
    served = ~np.isnan(x[:, : len(user)]).all(axis=1)  # users the pipeline had served (serving scores no other)
    pairs, x = pairs[served].reset_index(drop=True), x[served]
    if len(pairs) < 100:
        raise TrainingSetError(
            f"{len(pairs)} training rows with the user's features as of their time: let a workload run a while first"
        )
    mean = np.nan_to_num(np.nanmean(x, axis=0))
    std = np.nan_to_num(np.nanstd(x, axis=0), nan=1.0)
    std[std == 0] = 1.0
    on = device()
    network = Network(x.shape[1], len(catalog), mean, std).to(on)
    model = RecommendModel(network, None, {p: i + 1 for i, p in enumerate(catalog)}, user, product)
    xs = torch.as_tensor(x, dtype=torch.float32, device=on)
    ps = torch.as_tensor(model.rows(pairs["product_id"]), device=on)
    ys = torch.as_tensor(pairs["label"].to_numpy(), dtype=torch.float32, device=on)
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses = []
    for _ in range(epochs):
        network.train()
        for batch in torch.randperm(len(xs), device=on).split(512):
            optimizer.zero_grad()
            loss = loss_fn(network(xs[batch], ps[batch]), ys[batch])
            loss.backward()
            optimizer.step()
        losses.append(float(loss.detach()))
    network.eval()
    tests = purchases[purchases["created_at"] >= cut]
    tests = tests.sample(min(held_out, len(tests)), random_state=seed)
    hits = hit_rates(settings, model, tests, catalog)
    metrics = {
        "rows": len(pairs),
        "purchases": int(pairs["label"].sum()),
        "catalog": len(catalog),
        "epochs": epochs,
        "first_epoch_loss": losses[0],
        "last_epoch_loss": losses[-1],
        **hits,
        "device": on.type,
    }
    log.info("recommendation trained on %d pairs (%s): %s", len(pairs), on.type, metrics)
    card = registry.save(
        settings,
        {
            "name": NAME,
            "kind": "torch",
            "service": SERVICE,
            "features": [list(f) for f in user + product],
            "request_features": [],
            "trained_from": str(pairs[EVENT_TIMESTAMP].min()),
            "trained_to": str(pairs[EVENT_TIMESTAMP].max()),
            "rows": len(pairs),
            "metrics": metrics,
            "extra": {"user_features": [list(f) for f in user], "product_features": [list(f) for f in product]},
        },
        lambda folder: torch.save({"state": network.state_dict(), "catalog": catalog}, folder / MODEL_FILE),
    )
    model.card = card
    return model


def hit_rates(settings: Settings, model: RecommendModel, tests: pd.DataFrame, catalog: list[int]) -> dict:
    """Hit rate at ``TOP`` of the model and of popularity, each ranking every catalog product for the buyer as of
    just before each held-out purchase; purchases of a user the pipeline had not served yet are left out."""
    if tests.empty:
        return {"held_out": 0, "hit_rate_at_10": None, "popularity_hit_rate_at_10": None}
    n = len(catalog)
    grid = pd.DataFrame(
        {
            "user_id": np.repeat(tests["user_id"].to_numpy(), n),
            "product_id": np.tile(catalog, len(tests)),
            EVENT_TIMESTAMP: np.repeat((tests["created_at"] - BEFORE).to_numpy(), n),
        }
    )
    x = pairs_features(settings, grid)
    user, _ = split_features()
    popularity = x[:, len(user) + [name for _, name in model.product_features].index(POPULARITY)]
    scores = model.score(x, grid["product_id"]).reshape(len(tests), n)
    served = ~np.isnan(x[::n, : len(user)]).all(axis=1)
    bought = np.array([catalog.index(p) if p in catalog else -1 for p in tests["product_id"]])
    ours = _hits(scores, bought)
    theirs = _hits(np.nan_to_num(popularity.reshape(len(tests), n), nan=-1.0), bought)
    return {
        "held_out": int(served.sum()),
        "hit_rate_at_10": float(ours[served].mean()) if served.any() else None,
        "popularity_hit_rate_at_10": float(theirs[served].mean()) if served.any() else None,
    }


def _hits(scores: np.ndarray, bought: np.ndarray) -> np.ndarray:
    """Per row: is the bought column among the ``TOP`` highest scores (ties broken by column order, stable)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :TOP]
    return (top == bought[:, None]).any(axis=1)


class Candidates:
    """The top ``size`` products of product_ranking_v1 (by their latest purchases_30d in the offline store),
    reloaded in the background once older than ``refresh_s``; the first call waits for them."""

    def __init__(self, settings: Settings, size: int = CANDIDATES, refresh_s: float = 60.0) -> None:
        self.settings, self.size, self.refresh_s = settings, size, refresh_s
        self._ids: list[int] | None = None
        self._loaded = 0.0
        self._lock = threading.Lock()

    def get(self) -> list[int]:
        if self._ids is None:
            self._reload()
        elif time.monotonic() - self._loaded > self.refresh_s and self._lock.acquire(blocking=False):
            threading.Thread(target=self._reload, args=(True,), daemon=True).start()
        return self._ids

    def _reload(self, locked: bool = False) -> None:
        try:
            table = decl.PRODUCT_STATS.offline_table
            with pg_clients.offline_session(self.settings, timeout_s=5) as conn, conn.cursor() as cur:
                cur.execute(
                    f"SELECT product_id FROM (SELECT DISTINCT ON (product_id) product_id, {POPULARITY} FROM "
                    f"{table} ORDER BY product_id, {EVENT_TIMESTAMP} DESC) latest ORDER BY {POPULARITY} DESC "
                    "NULLS LAST, product_id LIMIT %s",
                    (self.size,),
                )
                self._ids = [r[0] for r in cur.fetchall()]
            self._loaded = time.monotonic()
        except psycopg2.Error:
            if self._ids is None:
                raise
            log.warning("could not reload the candidate products; serving the previous ones", exc_info=True)
        finally:
            if locked:
                self._lock.release()
