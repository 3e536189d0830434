"""The one declaration of every feature (docs/semantics.md#features).

Each feature names its source table, owner entity, event-time column, aggregate and window here, once. The Feast
repo (``feature_repo/``), the offline store tables, the streaming job and the batch backfill are all derived
from these objects; nothing about a feature is declared anywhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

Dtype = Literal["int64", "float64", "string"]
Aggregate = Literal["count", "sum", "avg", "max"]

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
EVENT_TIMESTAMP = "event_timestamp"  # the as-of time column of every offline table and push


@dataclass(frozen=True)
class Entity:
    name: str
    join_key: str


@dataclass(frozen=True)
class Table:
    """A captured source table and, for event tables, the column holding event time. Its columns and primary
    key are the row contract in ``schemas/<name>.avsc``."""

    name: str
    event_time: str | None = None


@dataclass(frozen=True)
class ColumnFeature:
    """The current value of a column of the entity's own row (profile features)."""

    name: str
    column: str
    dtype: Dtype


@dataclass(frozen=True)
class WindowFeature:
    """``aggregate(column)`` over the owner's rows whose event time lies in (T - window, T]."""

    name: str
    table: Table
    aggregate: Aggregate
    column: str | None
    window: timedelta

    @property
    def dtype(self) -> Dtype:
        return "int64" if self.aggregate == "count" else "float64"

    @property
    def hop(self) -> timedelta:
        """How far the window may advance at once: 1 minute up to a day, 1 hour beyond (docs/semantics.md#windows)."""
        return MINUTE if self.window <= DAY else HOUR


@dataclass(frozen=True)
class ScoreFeature:
    """A value a model's batch scoring writes (not derived from the change stream): the segment of a user."""

    name: str
    dtype: Dtype


@dataclass(frozen=True)
class FeatureView:
    name: str
    entity: Entity
    features: tuple[ColumnFeature, ...] | tuple[WindowFeature, ...] | tuple[ScoreFeature, ...]
    table: Table | None = None  # the entity's own table, for views of ColumnFeatures
    offline: str | None = None  # its offline store table, when not named as the view

    @property
    def push_source(self) -> str:
        return f"{self.name}_push"

    @property
    def offline_table(self) -> str:
        return self.offline or self.name

    @property
    def scored(self) -> bool:
        """Written by a model's batch scoring: its offline rows also name the model version that wrote them."""
        return all(isinstance(f, ScoreFeature) for f in self.features)


@dataclass(frozen=True)
class FeatureService:
    name: str
    views: tuple[FeatureView, ...]


USER = Entity("user", "user_id")
PRODUCT = Entity("product", "product_id")
ENTITIES = (USER, PRODUCT)

USERS = Table("users")
PRODUCTS = Table("products")
TRANSACTIONS = Table("transactions", "created_at")
SESSIONS = Table("sessions", "started_at")
REVIEWS = Table("reviews", "created_at")
CHARGEBACKS = Table("chargebacks", "reported_at")  # fraud labels: captured and archived, read by no feature
TABLES = (USERS, PRODUCTS, TRANSACTIONS, SESSIONS, REVIEWS, CHARGEBACKS)
# (table, column) -> the (low, high) range its values keep (None: unbounded): what the feature checks of every
# emitted row hold the features derived from it to (cdcf.quality)
COLUMN_RANGES = {
    ("users", "age"): (0, 150),
    ("users", "income"): (0, None),
    ("transactions", "amount"): (0, None),
    ("sessions", "duration_s"): (0, None),
    ("reviews", "rating"): (1, 5),
}

USER_PROFILE = FeatureView(
    "user_profile_features",
    USER,
    (
        ColumnFeature("age", "age", "int64"),
        ColumnFeature("income", "income", "float64"),
        ColumnFeature("account_status", "account_status", "string"),
    ),
    table=USERS,
)

USER_ACTIVITY = FeatureView(
    "user_activity_features",
    USER,
    (
        WindowFeature("txn_count_7d", TRANSACTIONS, "count", None, 7 * DAY),
        WindowFeature("txn_count_30d", TRANSACTIONS, "count", None, 30 * DAY),
        WindowFeature("txn_amount_sum_7d", TRANSACTIONS, "sum", "amount", 7 * DAY),
        WindowFeature("txn_amount_sum_30d", TRANSACTIONS, "sum", "amount", 30 * DAY),
        WindowFeature("avg_order_value_30d", TRANSACTIONS, "avg", "amount", 30 * DAY),
        WindowFeature("sessions_7d", SESSIONS, "count", None, 7 * DAY),
        WindowFeature("avg_session_duration_7d", SESSIONS, "avg", "duration_s", 7 * DAY),
    ),
)

TRANSACTION_RISK = FeatureView(
    "transaction_risk_features",
    USER,
    (
        WindowFeature("txn_count_1h", TRANSACTIONS, "count", None, HOUR),
        WindowFeature("txn_amount_sum_1h", TRANSACTIONS, "sum", "amount", HOUR),
        WindowFeature("txn_amount_max_24h", TRANSACTIONS, "max", "amount", DAY),
    ),
)

PRODUCT_STATS = FeatureView(
    "product_features",
    PRODUCT,
    (
        WindowFeature("purchases_7d", TRANSACTIONS, "count", None, 7 * DAY),
        WindowFeature("purchases_30d", TRANSACTIONS, "count", None, 30 * DAY),
        WindowFeature("avg_rating_30d", REVIEWS, "avg", "rating", 30 * DAY),
        WindowFeature("review_count_30d", REVIEWS, "count", None, 30 * DAY),
    ),
)

# the views the pipeline derives from the change stream (streaming job and backfill alike)
FEATURE_VIEWS = (USER_PROFILE, USER_ACTIVITY, TRANSACTION_RISK, PRODUCT_STATS)

# the views a model's batch scoring writes (`cdcf batch-score`), through the same online writer and offline tables
USER_SEGMENT = FeatureView("user_segment_features", USER, (ScoreFeature("segment", "int64"),), offline="user_segments")
SCORED_VIEWS = (USER_SEGMENT,)
ALL_VIEWS = FEATURE_VIEWS + SCORED_VIEWS

FEATURE_SERVICES = (
    FeatureService("recommendation_v1", (USER_PROFILE, USER_ACTIVITY, PRODUCT_STATS)),
    FeatureService("fraud_detection_v1", (TRANSACTION_RISK, USER_ACTIVITY)),
    FeatureService("customer_segmentation_v1", (USER_PROFILE, USER_ACTIVITY)),
    FeatureService("product_ranking_v1", (PRODUCT_STATS,)),
)


def feature_refs(service: str) -> list[str]:
    """ "view:feature" of every stored feature of ``service`` (not its request-time ones), in declaration order."""
    (chosen,) = [s for s in FEATURE_SERVICES if s.name == service]
    return [f"{v.name}:{f.name}" for v in chosen.views for f in v.features]


# Request-time features of fraud_detection_v1: derived from the transaction being scored (its amount) and the
# user's stored features, by this one function in training, in the scoring service and in Feast's on-demand
# feature view alike. A ratio whose denominator is null (an empty window) or zero is null.
FRAUD_REQUEST = ("amount", "merchant")
FRAUD_REQUEST_FEATURES = {
    "amount_over_avg_order_value_30d": "avg_order_value_30d",
    "amount_over_txn_amount_max_24h": "txn_amount_max_24h",
}


def fraud_request_features(amount: float | None, stored: dict[str, float | None]) -> dict[str, float | None]:
    """The request-time features of one transaction of ``amount``, given the user's stored feature values."""
    result = {}
    for name, denominator in FRAUD_REQUEST_FEATURES.items():
        base = stored.get(denominator)
        result[name] = None if amount is None or base is None or base != base or base == 0 else amount / base
    return result


# Each declared dtype's type in the offline store (SQL) and in Feast (the name in ``feast.types``); the dtypes are
# also Arrow's type aliases (``pyarrow.type_for_alias``), and cdcf.layout encodes each as Feast's ValueProto does.
SQL_TYPES: dict[Dtype, str] = {"int64": "BIGINT", "float64": "DOUBLE PRECISION", "string": "TEXT"}
FEAST_TYPES: dict[Dtype, str] = {"int64": "Int64", "float64": "Float64", "string": "String"}


def offline_table_ddl(view: FeatureView) -> str:
    """DDL of the offline store table of ``view``: one row per value change, keyed by entity and as-of time."""
    key = view.entity.join_key
    columns = ",\n    ".join(
        [f"{f.name} {SQL_TYPES[f.dtype]}" for f in view.features]
        + (["model_version TEXT NOT NULL"] if view.scored else [])
    )
    return (
        f"CREATE TABLE IF NOT EXISTS {view.offline_table} (\n    {key} BIGINT NOT NULL,\n"
        f"    {EVENT_TIMESTAMP} TIMESTAMPTZ NOT NULL,\n    {columns},\n    PRIMARY KEY ({key}, {EVENT_TIMESTAMP})\n)"
    )
