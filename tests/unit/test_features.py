"""The one declaration against docs/semantics.md#features (names and types are binding) and #windows (hops)."""

from __future__ import annotations

from datetime import timedelta

from cdcf import features as decl

SPEC_VIEWS = {
    "user_profile_features": ("user", {"age": "int64", "income": "float64", "account_status": "string"}),
    "user_activity_features": (
        "user",
        {
            "txn_count_7d": "int64",
            "txn_count_30d": "int64",
            "txn_amount_sum_7d": "float64",
            "txn_amount_sum_30d": "float64",
            "avg_order_value_30d": "float64",
            "sessions_7d": "int64",
            "avg_session_duration_7d": "float64",
        },
    ),
    "transaction_risk_features": (
        "user",
        {"txn_count_1h": "int64", "txn_amount_sum_1h": "float64", "txn_amount_max_24h": "float64"},
    ),
    "product_features": (
        "product",
        {"purchases_7d": "int64", "purchases_30d": "int64", "avg_rating_30d": "float64", "review_count_30d": "int64"},
    ),
}
SPEC_SERVICES = {
    "recommendation_v1": ["user_profile_features", "user_activity_features", "product_features"],
    "fraud_detection_v1": ["transaction_risk_features", "user_activity_features"],
    "customer_segmentation_v1": ["user_profile_features", "user_activity_features"],
    "product_ranking_v1": ["product_features"],
}


def test_views_features_and_types_are_the_contracts():
    got = {v.name: (v.entity.name, {f.name: f.dtype for f in v.features}) for v in decl.FEATURE_VIEWS}
    assert got == SPEC_VIEWS


def test_the_segment_view_is_written_by_batch_scoring_into_user_segments():
    assert [(v.name, v.entity.name, [(f.name, f.dtype) for f in v.features]) for v in decl.SCORED_VIEWS] == [
        ("user_segment_features", "user", [("segment", "int64")])
    ]
    assert decl.USER_SEGMENT.offline_table == "user_segments" and decl.USER_SEGMENT.scored
    assert "model_version TEXT NOT NULL" in decl.offline_table_ddl(decl.USER_SEGMENT)
    assert not any(v.scored for v in decl.FEATURE_VIEWS) and decl.ALL_VIEWS[-1] == decl.USER_SEGMENT


def test_request_features_are_ratios_null_when_the_window_is_empty():
    stored = {"avg_order_value_30d": 50.0, "txn_amount_max_24h": 200.0}
    assert decl.fraud_request_features(100.0, stored) == {
        "amount_over_avg_order_value_30d": 2.0,
        "amount_over_txn_amount_max_24h": 0.5,
    }
    assert decl.fraud_request_features(100.0, {"avg_order_value_30d": None, "txn_amount_max_24h": 0.0}) == {
        "amount_over_avg_order_value_30d": None,
        "amount_over_txn_amount_max_24h": None,
    }
    assert decl.fraud_request_features(None, stored) == dict.fromkeys(decl.FRAUD_REQUEST_FEATURES)
    assert decl.feature_refs("product_ranking_v1") == [
        f"product_features:{f}" for f in ("purchases_7d", "purchases_30d", "avg_rating_30d", "review_count_30d")
    ]


def test_services_are_the_contracts():
    assert {s.name: [v.name for v in s.views] for s in decl.FEATURE_SERVICES} == SPEC_SERVICES


def test_window_names_agree_with_their_windows_and_hops():
    suffix = {timedelta(hours=1): "1h", timedelta(days=1): "24h", timedelta(days=7): "7d", timedelta(days=30): "30d"}
    windows = [f for v in decl.FEATURE_VIEWS for f in v.features if isinstance(f, decl.WindowFeature)]
    assert len(windows) == 14
    for feature in windows:
        assert feature.name.endswith(suffix[feature.window]), feature.name
        assert feature.hop == (timedelta(minutes=1) if feature.window <= timedelta(days=1) else timedelta(hours=1))
        assert (feature.column is None) == (feature.aggregate == "count")
        assert feature.table.event_time is not None


def test_offline_table_ddl_is_keyed_by_entity_and_as_of_time():
    ddl = decl.offline_table_ddl(decl.TRANSACTION_RISK)
    assert ddl == (
        "CREATE TABLE IF NOT EXISTS transaction_risk_features (\n    user_id BIGINT NOT NULL,\n"
        "    event_timestamp TIMESTAMPTZ NOT NULL,\n    txn_count_1h BIGINT,\n    txn_amount_sum_1h DOUBLE PRECISION,\n"
        "    txn_amount_max_24h DOUBLE PRECISION,\n    PRIMARY KEY (user_id, event_timestamp)\n)"
    )


def test_the_declaration_and_the_avro_contracts_name_the_same_tables_and_columns():
    from cdcf import contracts

    rows = contracts.row_contracts()
    assert {t.name for t in decl.TABLES} | {contracts.HEARTBEAT} == set(rows)
    for table in decl.TABLES:
        if table.event_time:
            column = next(c for c in rows[table.name].columns if c.name == table.event_time)
            assert column.kind == "timestamp" and not column.nullable
    for view in decl.FEATURE_VIEWS:
        for feature in view.features:
            source = view.table if isinstance(feature, decl.ColumnFeature) else feature.table
            columns = rows[source.name].names
            assert (feature.column or rows[source.name].key) in columns
            assert view.entity.join_key in columns
