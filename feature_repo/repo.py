"""Feast definitions of docs/semantics.md#features, derived from the one feature declaration in ``cdcf.features``.

Every view reads its offline table (written by our jobs) in the Postgres offline store and takes online writes
through a push source named ``<view>_push``. fraud_detection_v1 also carries the on-demand view of the request-time
features of the transaction being scored (``cdcf.features.fraud_request_features``, the function the model's
training and its scoring service run too). `feast apply` in this folder registers them.
"""

from datetime import timedelta

from feast import Entity, FeatureService, FeatureView, Field, PushSource, RequestSource, ValueType, types
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float64, Int64, String

from cdcf import features as decl

entities = {e.name: Entity(name=e.name, join_keys=[e.join_key], value_type=ValueType.INT64) for e in decl.ENTITIES}


def _feature_view(view: decl.FeatureView) -> FeatureView:
    offline = PostgreSQLSource(
        name=f"{view.name}_offline", table=view.offline_table, timestamp_field=decl.EVENT_TIMESTAMP
    )
    push = PushSource(name=view.push_source, batch_source=offline)
    return FeatureView(
        name=view.name,
        entities=[entities[view.entity.name]],
        ttl=timedelta(0),  # every value carries its own as-of time; windows decay by new rows, not by TTL
        schema=[Field(name=view.entity.join_key, dtype=Int64)]
        + [Field(name=f.name, dtype=getattr(types, decl.FEAST_TYPES[f.dtype])) for f in view.features],
        online=True,
        source=push,
    )


feature_views = {v.name: _feature_view(v) for v in decl.ALL_VIEWS}

fraud_transaction = RequestSource(
    name="fraud_transaction", schema=[Field(name="amount", dtype=Float64), Field(name="merchant", dtype=String)]
)


@on_demand_feature_view(
    sources=[feature_views[decl.TRANSACTION_RISK.name], feature_views[decl.USER_ACTIVITY.name], fraud_transaction],
    schema=[Field(name=name, dtype=Float64) for name in decl.FRAUD_REQUEST_FEATURES],
    mode="python",
)
def fraud_request_features(inputs: dict) -> dict:
    from cdcf import (
        features as decl,  # imported here: Feast stores this function's source and runs it elsewhere
    )

    rows = [
        decl.fraud_request_features(amount, {name: inputs[name][n] for name in decl.FRAUD_REQUEST_FEATURES.values()})
        for n, amount in enumerate(inputs["amount"])
    ]
    return {name: [row[name] for row in rows] for name in decl.FRAUD_REQUEST_FEATURES}


on_demand = {"fraud_detection_v1": [fraud_request_features]}
feature_services = {
    s.name: FeatureService(name=s.name, features=[feature_views[v.name] for v in s.views] + on_demand.get(s.name, []))
    for s in decl.FEATURE_SERVICES
}
# `feast apply` collects module-level objects only: expose every entity, view and service by name.
globals().update({f"{name}_entity": entity for name, entity in entities.items()})
globals().update({f"{name}_view": fv for name, fv in feature_views.items()})
globals().update({f"{name}_service": fs for name, fs in feature_services.items()})
