"""cdcf.layout writes and reads Feast's Redis layout byte for byte, checked against Feast's own helpers."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp

from cdcf import layout


@pytest.mark.parametrize("entity_id", [0, 1, 42, 10**13, 2**63 - 1, -7])
def test_entity_keys_are_feasts(entity_id):
    feast_key = (
        serialize_entity_key(
            EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=entity_id)]),
            entity_key_serialization_version=3,
        )
        + b"homelab_ml_platform"
    )
    assert layout.entity_key(layout.key_prefix("user_id"), entity_id, b"homelab_ml_platform") == feast_key


def test_field_hashes_are_feasts():
    for name in ("user_activity_features:txn_count_7d", "product_features:avg_rating_30d"):
        view, feature = name.split(":")
        assert layout.field(view, feature) == _mmh3(name)


@pytest.mark.parametrize(
    "value, proto",
    [
        (0, Value(int64_val=0)),
        (300, Value(int64_val=300)),
        (-5, Value(int64_val=-5)),
        (2**62, Value(int64_val=2**62)),
        (0.0, Value(double_val=0.0)),
        (1234.56, Value(double_val=1234.56)),
        (-1e-300, Value(double_val=-1e-300)),
        ("active", Value(string_val="active")),
        ("", Value(string_val="")),
        (None, Value()),
    ],
)
def test_values_encode_as_feast_and_decode_back(value, proto):
    assert layout.encode_value(value) == proto.SerializeToString()
    decoded = layout.decode_value(proto.SerializeToString())
    assert decoded == value and type(decoded) is type(value)


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 27, 21, 12, 40, 103520, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=UTC),
        datetime(1970, 1, 1, 0, 0, 1, tzinfo=UTC),
    ],
)
def test_timestamps_encode_as_protobuf_and_decode_back(at):
    proto = Timestamp()
    proto.FromDatetime(at)
    assert layout.encode_timestamp(at) == proto.SerializeToString()
    assert layout.decode_timestamp(proto.SerializeToString()) == at


def test_an_unknown_value_tag_is_an_error_not_a_guess():
    with pytest.raises(ValueError, match="unsupported ValueProto field tag"):
        layout.decode_value(Value(bool_val=True).SerializeToString())


def test_columns_decode_like_single_values():
    rng = random.Random(9)
    columns = {
        "double": [rng.choice([None, rng.random() * 1e6, -0.0, 1e-300]) for _ in range(300)],
        "int64": [rng.choice([None, 0, 1, rng.randrange(-(2**63), 2**63), rng.randrange(100)]) for _ in range(300)],
        "object": [rng.choice([None, "active", "", 5]) for _ in range(300)],
    }
    for kind, values in columns.items():
        for size in (len(values), 3):  # numpy and per-value paths
            decoded, got_kind = layout.decode_column([layout.encode_value(v) or None for v in values[:size]])
            assert got_kind == kind or (size == 3 and all(v is None for v in values[:3]))
            again = [None if kind != "object" and np.isnan(d) else d for d in decoded]
            assert again == [v if kind != "int64" or v is None else float(v) for v in values[:size]]


def test_timestamp_columns_decode_like_single_timestamps():
    rng = random.Random(10)
    stamps = [
        datetime(2026, 11, 27, tzinfo=UTC)
        + timedelta(seconds=rng.randrange(-(10**8), 10**8), microseconds=rng.choice([0, rng.randrange(10**6)]))
        for _ in range(200)
    ] + [datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC), datetime(2500, 1, 1, tzinfo=UTC)]
    raw = [layout.encode_timestamp(t) for t in stamps] + [None]
    for part in (raw, raw[-4:]):  # numpy and per-value paths
        decoded = layout.decode_timestamps(part)
        assert [d.astype(datetime).replace(tzinfo=UTC) for d in decoded[:-1]] == (stamps + [None])[-len(part) : -1]
        assert np.isnat(decoded[-1])
