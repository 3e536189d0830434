"""The streaming state's SQL is derived from the feature declaration: what each mirror keeps and who owns it."""

from __future__ import annotations

from cdcf import features as decl
from streaming import sql


def test_each_mirror_keeps_exactly_the_columns_some_feature_reads():
    kept = {m.table.name: (m.key, [c.name for c in m.columns], [e.name for e in m.owners]) for m in sql.mirrors()}
    assert kept == {
        "users": ("user_id", ["user_id", "age", "income", "account_status"], ["user"]),
        "transactions": ("txn_id", ["user_id", "product_id", "amount", "created_at"], ["user", "product"]),
        "sessions": ("session_id", ["user_id", "started_at", "duration_s"], ["user"]),
        "reviews": ("review_id", ["product_id", "rating", "created_at"], ["product"]),
    }  # products: no feature reads it, so the job keeps nothing of it


def test_one_emit_statement_returns_every_feature_of_the_entity_in_view_order():
    for entity in decl.ENTITIES:
        statement = sql.emit(entity)
        names = [f.name for f in sql.features_of(entity)]
        assert statement.endswith(f"SELECT id, as_of, {', '.join(names)} FROM v")
        assert names == [f.name for v in decl.FEATURE_VIEWS if v.entity == entity for f in v.features]
        for view in sql.views_of(entity):  # each view's offline table gets its row in the same statement
            assert f"INSERT INTO {view.name} " in statement


def test_decay_rounds_each_window_up_to_its_hop():
    statement = sql.emit(decl.USER)
    assert statement.count("/ 60) * 60)") == 2  # 1h and 24h windows: minute hops
    assert statement.count("/ 3600) * 3600)") == 3  # 7d and 30d transactions, 7d sessions: hour hops
