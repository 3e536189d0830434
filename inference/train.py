"""Train the scoring model on a point-in-time training set from the offline store and save it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cdcf import pg_clients
from cdcf.features import EVENT_TIMESTAMP
from inference.model import TrainedModel, train
from inference.service import model_path
from offline.training import LABELS, resolve, training_set


def entity_rows(settings, rows: int, join_key: str, view: str, seed: int = 0) -> pd.DataFrame:
    """Random (entity, time) pairs over the span of the offline history."""
    with pg_clients.offline_session(settings) as conn:
        with conn.cursor() as cur:
            cur.execute(
                f"SELECT array_agg(DISTINCT {join_key}), min({EVENT_TIMESTAMP}), max({EVENT_TIMESTAMP}) FROM {view}"
            )
            ids, first, last = cur.fetchone()
    if not ids:
        raise ValueError(f"the offline table {view} is empty: run the pipeline (or a backfill) first")
    rng = np.random.default_rng(seed)
    stamps = pd.Timestamp(first) + (pd.Timestamp(last) - pd.Timestamp(first)) * rng.random(rows)
    return pd.DataFrame({join_key: rng.choice(ids, rows), EVENT_TIMESTAMP: stamps})


def train_from_store(
    settings, rows: int = 20_000, service: str = "fraud_detection_v1", label: str = "txn_next_7d", epochs: int = 20
) -> tuple[TrainedModel, str]:
    """Train on ``rows`` point-in-time rows of ``service`` with ``label``; save; return the model and its path."""
    views = resolve(service)
    features = [(view.name, name) for view, names in views for name in names]
    join_key = LABELS[label].entity.join_key
    table = training_set(settings, entity_rows(settings, rows, join_key, views[0][0].name), service, labels=[label])
    frame = table.to_pandas()
    x = frame[[name for _, name in features]].astype("float64").to_numpy()
    y = frame[label].astype("float64").to_numpy()
    model = train(x, y, service=service, features=features, label=label, epochs=epochs)
    path = model_path(settings, label)
    model.save(path)
    return model, str(path)
