"""`make demo`: the stack's story so far — source data seeded, Feast registry and online store answering."""

from __future__ import annotations

from collections.abc import Callable

from cdcf import features as decl
from cdcf import sample_data, stack
from cdcf.feast_config import feature_store
from cdcf.settings import Settings


def run(settings: Settings, out: Callable[[str], None]) -> None:
    counts = sample_data.seed(settings)
    out("source database '{}': {}".format(settings.app_db, ", ".join(f"{n} {t}" for t, n in counts.items())))
    for health in stack.status(settings):
        out(health.line())
    store = feature_store(settings)
    for service in decl.FEATURE_SERVICES:
        views = ", ".join(v.name for v in service.views)
        out(f"feature service {service.name}: {views}")
    rows = store.get_online_features(features=store.get_feature_service("recommendation_v1"),
                                     entity_rows=[{"user_id": u} for u in (1, 2, 3)]).to_dict()
    filled = sum(v is not None for k, col in rows.items() if k != "user_id" for v in col)
    out(f"get_online_features(recommendation_v1, users 1-3): {filled} of "
        f"{(len(rows) - 1) * 3} values present (the streaming job that fills them is not built yet)")
