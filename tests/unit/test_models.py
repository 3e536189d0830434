"""The models' pure parts, with no services: the generators' fraud and taste, the fraud metric, the
recommendation's training pairs and hit counting, the registry on disk and the segmentation's assignment."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cdcf.settings import SECRET_FIELDS, Settings
from inference import fraud, recommend, registry
from inference.registry import ModelNotFound
from inference.segments import SegmentModel
from ops import sample_data


def test_takeovers_are_bursts_of_high_amounts_within_an_hour_mostly_at_risky_merchants():
    rng = random.Random(1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    bursts = [sample_data.fraud_burst(rng, start) for _ in range(500)]
    assert all(3 <= len(b) <= 6 for b in bursts)
    rows = [row for b in bursts for row in b]
    assert all(400 <= amount <= 2500 and start <= at < start + timedelta(hours=1) for amount, _, at in rows)
    risky = sum(merchant in sample_data.RISKY_MERCHANTS for _, merchant, _ in rows) / len(rows)
    assert 0.75 < risky < 0.85
    delays = [sample_data.report_delay(rng) for _ in range(2000)]
    reported = [d for d in delays if d is not None]
    assert 0.8 < len(reported) / len(delays) < 0.9 and all(
        timedelta(days=1) <= d <= timedelta(days=45) for d in reported
    )


def test_users_buy_the_products_of_their_age_band_the_popular_ones_most():
    rng = random.Random(2)
    for age in (20, 40, 70):
        bought = Counter(sample_data.pick_product(rng, age, 30) for _ in range(6000))
        in_band = sum(n for p, n in bought.items() if p % 3 == sample_data.age_band(age)) / 6000
        assert 0.78 < in_band < 0.88  # 75% by band, and a third of the rest by chance
        assert bought[3 - (3 - sample_data.age_band(age)) % 3 or 3] > 0
    anyone = Counter(sample_data.pick_product(rng, None, 30) for _ in range(6000))
    assert anyone[1] > anyone[30] * 3  # 1/sqrt(id): product 1 is sqrt(30) times as popular as product 30
    assert [sample_data.age_band(a) for a in (18, 34, 35, 54, 55, 80)] == [0, 0, 1, 1, 2, 2]


def test_precision_at_a_false_positive_rate():
    y = np.array([0] * 100 + [1] * 10)
    scores = np.concatenate([np.linspace(0, 0.5, 100), np.linspace(0.45, 1, 10)])
    # the threshold is the 99th percentile of the negatives (0.5): above it lie 9 positives and no negative
    assert fraud.precision_at_fpr(y, scores, 0.01) == 1.0
    assert fraud.precision_at_fpr(np.zeros(5), np.zeros(5), 0.01) is None


def test_training_pairs_take_negatives_the_user_did_not_buy_in_the_next_7_days():
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    purchases = pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "product_id": [10, 11, 10],
            "created_at": [t0, t0 + pd.Timedelta(days=2), t0 + pd.Timedelta(days=20)],
        }
    )
    pairs = recommend.training_pairs(purchases, [10, 11, 12], np.random.default_rng(0))
    positives = pairs[pairs["label"] == 1]
    assert positives[["user_id", "product_id"]].values.tolist() == [[1, 10], [1, 11], [2, 10]]
    assert positives["event_timestamp"].tolist() == (purchases["created_at"] - recommend.BEFORE).tolist()
    negatives = pairs[pairs["label"] == 0]
    # user 1 as of t0 bought 10 (then) and 11 (2 days later): only 12 is a negative; as of t0+2d, 10 and 12
    first = negatives[negatives["event_timestamp"] == t0 - recommend.BEFORE]["product_id"]
    assert set(first) == {12}
    second = negatives[negatives["event_timestamp"] == t0 + pd.Timedelta(days=2) - recommend.BEFORE]["product_id"]
    assert set(second) <= {10, 12} and len(second) == recommend.NEGATIVES


def test_a_hit_is_the_bought_product_among_the_top_10():
    scores = np.tile(np.arange(20, dtype=float), (3, 1))  # column 19 scores highest
    assert recommend._hits(scores, np.array([19, 10, 9])).tolist() == [True, True, False]


def test_the_registry_counts_versions_up_and_loads_the_newest_or_a_pinned_one(tmp_path):
    settings = Settings(home=tmp_path, **{field: "pw" for field in SECRET_FIELDS})
    card = {
        "name": "m",
        "kind": "test",
        "service": "s",
        "features": [["v", "f"]],
        "request_features": [],
        "trained_from": None,
        "trained_to": None,
        "rows": 3,
        "metrics": {"auc": 0.5},
    }
    first = registry.save(settings, card, lambda folder: (folder / "w").write_text("1"))
    second = registry.save(settings, {**card, "rows": 4}, lambda folder: (folder / "w").write_text("2"))
    assert (first.version, second.version) == (1, 2)
    assert registry.card(settings, "m") == second and registry.card(settings, "m", 1) == first
    assert (first.folder(settings) / "w").read_text() == "1"
    assert [c.version for c in registry.cards(settings)] == [1, 2]
    assert "m v2 (test, 1 features, 4 rows" in second.line()
    with pytest.raises(ModelNotFound, match="train it first"):
        registry.card(settings, "other")


def test_a_segment_is_the_nearest_center_of_the_standardized_features():
    model = SegmentModel(
        card=None,
        centers=np.array([[0.0, 0.0], [2.0, 2.0]]),
        fill=np.array([np.expm1(2.0), 0.0]),
        mean=np.zeros(2),
        std=np.ones(2),
    )
    x = np.array([[0.1, 0.0], [np.expm1(2.0), np.expm1(2.0)], [np.nan, np.expm1(1.9)]])
    assert model.assign(x).tolist() == [0, 1, 1]  # a null takes the fill (the training mean)
