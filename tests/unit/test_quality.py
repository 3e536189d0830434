"""The value checks of emitted feature rows (cdcf.quality), on rows made by hand: each check catches its defect,
names the entity and as-of time, and passes what the engine's semantics allow (nulls of empty windows)."""

from __future__ import annotations

import pyarrow as pa

from cdcf import features as decl
from cdcf.quality import CHECKS, check
from cdcf.sources import features_of

GOOD = {
    "age": 30,
    "income": 50_000.0,
    "account_status": "active",
    "txn_count_7d": 2,
    "txn_count_30d": 4,
    "txn_amount_sum_7d": 30.0,
    "txn_amount_sum_30d": 100.0,
    "avg_order_value_30d": 25.0,
    "sessions_7d": 1,
    "avg_session_duration_7d": 60.0,
    "txn_count_1h": 1,
    "txn_amount_sum_1h": 10.0,
    "txn_amount_max_24h": 10.0,
}
EMPTY = {
    **GOOD,
    "txn_count_30d": 0,
    "txn_amount_sum_30d": 0.0,
    "avg_order_value_30d": None,
    "txn_count_7d": 0,
    "txn_amount_sum_7d": 0.0,
    "sessions_7d": 0,
    "avg_session_duration_7d": None,
    "txn_count_1h": 0,
    "txn_amount_sum_1h": 0.0,
    "txn_amount_max_24h": None,
    "income": None,
}


def _rows(*values: dict) -> pa.Table:
    columns = {
        "id": [1000 + n for n in range(len(values))],
        "as_of_us": [1_796_000_000_000_000 + n for n in range(len(values))],
    }
    for f in features_of(decl.USER):
        columns[f.name] = [v[f.name] for v in values]
    return pa.table(columns)


def test_rows_the_semantics_allow_pass_and_their_nulls_are_counted():
    verdict = check(decl.USER, _rows(GOOD, EMPTY, {**GOOD, "avg_order_value_30d": 100.0 / 4 * (1 + 1e-12)}))
    assert verdict.bad == dict.fromkeys(CHECKS, 0), verdict.samples
    assert verdict.values == 3 * len(GOOD) and verdict.nulls == 4
    assert verdict.samples == []


def test_each_defect_is_caught_by_its_check_and_named_with_entity_and_as_of():
    verdict = check(
        decl.USER,
        _rows(
            GOOD,
            {**GOOD, "txn_count_7d": -1},  # negative_count
            {**GOOD, "avg_order_value_30d": 26.0},  # not 100 / 4
            {**EMPTY, "avg_order_value_30d": 0.0},  # an empty window's avg is null, not 0
            {**GOOD, "age": 200},  # out of the users.age range
            {**GOOD, "txn_amount_sum_1h": -5.0},  # a sum of amounts (never negative) below zero
            {**GOOD, "txn_amount_max_24h": -1.0},
        ),
    )
    assert verdict.bad == {"negative_count": 1, "avg_not_sum_over_count": 2, "out_of_range": 3}
    assert any(s.startswith("negative_count: txn_count_7d=-1 for user 1001 as of 2026-") for s in verdict.samples)
    assert any(s.startswith("avg_not_sum_over_count: avg_order_value_30d=26.0 for user 1002 ") for s in verdict.samples)
    assert any(s.startswith("out_of_range: age=200 for user 1004 ") for s in verdict.samples)


def test_a_product_average_rating_keeps_to_one_through_five():
    names = [f.name for f in features_of(decl.PRODUCT)]
    good = {"purchases_7d": 1, "purchases_30d": 2, "avg_rating_30d": 4.5, "review_count_30d": 2}
    rows = pa.table(
        {"id": [1, 2], "as_of_us": [0, 1], **{n: [good[n], {**good, "avg_rating_30d": 5.5}[n]] for n in names}}
    )
    assert check(decl.PRODUCT, rows).bad["out_of_range"] == 1
