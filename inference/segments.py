"""customer_segmentation_v1: K-means (scikit-learn) over every user's features as of a time, and its batch scoring.

Inputs are the service's numeric features as of T, nulls filled with the training means, each put through a
signed log (sums and incomes span orders of magnitude) and standardized. ``batch_score`` reads every user known as
of T through the offline store's point-in-time path, a chunk at a time, and writes each user's segment to the
offline table ``user_segments`` (with the model version) and to the online view ``user_segment_features`` through
the pipeline's own online writer, as of T. Assigning a segment needs only numpy (the nearest center).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd
from psycopg2.extras import execute_values

from cdcf import features as decl
from cdcf import pg_clients
from cdcf.features import EVENT_TIMESTAMP
from cdcf.settings import Settings
from inference import registry
from inference.registry import ModelCard
from offline.training import TrainingSetError, resolve, training_set

log = logging.getLogger(__name__)
NAME = SERVICE = "customer_segmentation_v1"
MODEL_FILE = "centers.npz"
PLOT = "segments.png"
SCORED = "scored.json"  # per batch scoring: the version and as-of time it wrote
CHUNK = 5000


@dataclass
class SegmentModel:
    card: ModelCard
    centers: np.ndarray
    fill: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def features(self) -> list[tuple[str, str]]:
        return [tuple(f) for f in self.card.features]

    def standardize(self, x: np.ndarray) -> np.ndarray:
        return (_signed_log(np.where(np.isnan(x), self.fill, x)) - self.mean) / self.std

    def assign(self, x: np.ndarray) -> np.ndarray:
        """The nearest center of each row (a user's numeric features, NaN for null)."""
        z = self.standardize(x)
        return ((z[:, None, :] - self.centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1)

    @classmethod
    def load(cls, settings: Settings, version: int | None = None) -> SegmentModel:
        card = registry.card(settings, NAME, version)
        saved = np.load(card.folder(settings) / MODEL_FILE)
        return cls(card, saved["centers"], saved["fill"], saved["mean"], saved["std"])


def numeric_features() -> list[tuple[str, str]]:
    return [
        (view.name, name)
        for view, names in resolve(SERVICE)
        for name in names
        if {f.name: f.dtype for f in view.features}[name] != "string"
    ]


def users_as_of(settings: Settings, as_of: datetime) -> list[int]:
    """Every user with a value in one of the service's views as of ``as_of``."""
    views = {view.offline_table for view, _ in resolve(SERVICE)}
    query = " UNION ".join(f"SELECT user_id FROM {table} WHERE {EVENT_TIMESTAMP} <= %(t)s" for table in views)
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT user_id FROM ({query}) u ORDER BY 1", {"t": as_of})
            found = [r[0] for r in cur.fetchall()]
    return found


def features_as_of(settings: Settings, ids: list[int], as_of: datetime, features: list[tuple[str, str]]) -> np.ndarray:
    frame = training_set(settings, pd.DataFrame({"user_id": ids, EVENT_TIMESTAMP: [as_of] * len(ids)}), SERVICE)
    return frame.select([name for _, name in features]).to_pandas().astype("float64").to_numpy()


def train(
    settings: Settings, as_of: datetime | None = None, k: int = 4, seed: int = 0, sample: int = 50_000
) -> SegmentModel:
    """Fit K-means on (up to ``sample``) users' features as of ``as_of`` (default now); register it with its
    silhouette, segment sizes and a 2-D picture of the segments."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    as_of = as_of or datetime.now(UTC)
    ids = users_as_of(settings, as_of)
    if len(ids) < k:
        raise TrainingSetError(f"{len(ids)} users as of {as_of}: too few to make {k} segments; run the pipeline first")
    rng = np.random.default_rng(seed)
    if len(ids) > sample:
        ids = sorted(rng.choice(ids, sample, replace=False).tolist())
    features = numeric_features()
    x = features_as_of(settings, ids, as_of, features)
    fill = np.nan_to_num(np.nanmean(x, axis=0))
    logged = _signed_log(np.where(np.isnan(x), fill, x))
    mean, std = logged.mean(axis=0), logged.std(axis=0)
    std[std == 0] = 1.0
    z = (logged - mean) / std
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    labels = kmeans.labels_
    silhouette = float(silhouette_score(z, labels, sample_size=min(len(z), 5000), random_state=seed))
    sizes = np.bincount(labels, minlength=k).tolist()
    metrics = {
        "rows": len(ids),
        "k": k,
        "silhouette": silhouette,
        "segment_sizes": sizes,
        "inertia": float(kmeans.inertia_),
    }
    log.info("segmentation trained on %d users as of %s: %s", len(ids), as_of, metrics)

    def write(folder) -> None:
        np.savez(folder / MODEL_FILE, centers=kmeans.cluster_centers_, fill=fill, mean=mean, std=std)
        plot(
            z,
            labels,
            folder / PLOT,
            f"{NAME}: {len(ids)} users as of {as_of:%Y-%m-%d %H:%M} UTC, silhouette {silhouette:.3f}",
        )

    card = registry.save(
        settings,
        {
            "name": NAME,
            "kind": "kmeans",
            "service": SERVICE,
            "features": [list(f) for f in features],
            "request_features": [],
            "trained_from": as_of.isoformat(),
            "trained_to": as_of.isoformat(),
            "rows": len(ids),
            "metrics": metrics,
        },
        write,
    )
    return SegmentModel(card, kmeans.cluster_centers_, fill, mean, std)


def batch_score(
    settings: Settings, as_of: datetime, version: int | None = None, chunk: int = CHUNK, progress: bool = True
) -> dict:
    """Every user's segment as of ``as_of`` into ``user_segments`` and the online view; return what was done."""
    from tqdm import tqdm

    from online.writer import OnlineWriter

    model = SegmentModel.load(settings, version)
    started = time.monotonic()
    ids = users_as_of(settings, as_of)
    view = decl.USER_SEGMENT
    (feature,) = view.features
    writer = OnlineWriter(settings)
    sizes = np.zeros(len(model.centers), dtype=np.int64)
    conn = pg_clients.connect_offline(settings)
    try:
        bar = tqdm(total=len(ids), unit="user", desc=f"{NAME} v{model.card.version}", disable=not progress)
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            segments = model.assign(features_as_of(settings, part, as_of, model.features))
            sizes += np.bincount(segments, minlength=len(sizes))
            rows = [(user, as_of, int(segment)) for user, segment in zip(part, segments, strict=True)]
            with conn.cursor() as cur:
                execute_values(
                    cur,
                    f"INSERT INTO {view.offline_table} (user_id, {EVENT_TIMESTAMP}, {feature.name}, "
                    f"model_version) VALUES %s ON CONFLICT (user_id, {EVENT_TIMESTAMP}) DO UPDATE SET "
                    f"{feature.name} = EXCLUDED.{feature.name}, model_version = EXCLUDED.model_version",
                    [(*row, str(model.card.version)) for row in rows],
                    page_size=chunk,
                )
            conn.commit()
            writer.write(view, rows, only_newer=True)
            bar.update(len(part))
        bar.close()
    finally:
        conn.close()
        writer.close()
    seconds = time.monotonic() - started
    done = {
        "model": NAME,
        "version": model.card.version,
        "as_of": as_of.isoformat(),
        "users": len(ids),
        "seconds": round(seconds, 3),
        "users_per_s": round(len(ids) / seconds, 1) if seconds else None,
        "segment_sizes": sizes.tolist(),
    }
    record = registry.root(settings) / NAME / SCORED
    scored = json.loads(record.read_text()) if record.exists() else []
    record.write_text(json.dumps([*scored[-99:], done], indent=2))
    return done


def scored_by(settings: Settings, as_of: datetime) -> int | None:
    """The model version whose batch scoring wrote segments as of ``as_of``."""
    record = registry.root(settings) / NAME / SCORED
    for done in reversed(json.loads(record.read_text()) if record.exists() else []):
        if datetime.fromisoformat(done["as_of"]) == as_of:
            return done["version"]
    return None


def plot(z: np.ndarray, labels: np.ndarray, path, title: str) -> None:
    """The users in the plane of their two principal components, colored by segment."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centered = z - z.mean(axis=0)
    _, _, axes = np.linalg.svd(centered, full_matrices=False)
    xy = centered @ axes[:2].T
    fig, ax = plt.subplots(figsize=(7, 5))
    for segment in np.unique(labels):
        mine = labels == segment
        ax.scatter(xy[mine, 0], xy[mine, 1], s=6, alpha=0.6, label=f"segment {segment} ({mine.sum()})")
    ax.set_xlabel("first principal component")
    ax.set_ylabel("second principal component")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _signed_log(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.log1p(np.abs(x))
