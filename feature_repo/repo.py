"""Feast definitions of SPEC section 3, derived from the one feature declaration in ``cdcf.features``.

Every view reads its offline table (same name, written by our jobs) in the Postgres offline store and takes
online writes through a push source named ``<view>_push``. `feast apply` in this folder registers them.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource, ValueType
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.types import Float64, Int64, String

from cdcf import features as decl

FEAST_TYPES = {"int64": Int64, "float64": Float64, "string": String}

entities = {
    e.name: Entity(name=e.name, join_keys=[e.join_key], value_type=ValueType.INT64) for e in decl.ENTITIES
}


def _feature_view(view: decl.FeatureView) -> FeatureView:
    offline = PostgreSQLSource(name=f"{view.name}_offline", table=view.name,
                               timestamp_field=decl.EVENT_TIMESTAMP)
    push = PushSource(name=view.push_source, batch_source=offline)
    return FeatureView(
        name=view.name,
        entities=[entities[view.entity.name]],
        ttl=timedelta(0),  # every value carries its own as-of time; windows decay by new rows, not by TTL
        schema=[Field(name=view.entity.join_key, dtype=Int64)]
        + [Field(name=f.name, dtype=FEAST_TYPES[f.dtype]) for f in view.features],
        online=True,
        source=push,
    )


feature_views = {v.name: _feature_view(v) for v in decl.FEATURE_VIEWS}
feature_services = {
    s.name: FeatureService(name=s.name, features=[feature_views[v.name] for v in s.views])
    for s in decl.FEATURE_SERVICES
}
# `feast apply` collects module-level objects only: expose every entity, view and service by name.
globals().update({f"{name}_entity": entity for name, entity in entities.items()})
globals().update({f"{name}_view": fv for name, fv in feature_views.items()})
globals().update({f"{name}_service": fs for name, fs in feature_services.items()})
