"""The hot-path feature client: a feature service's values for a batch of entities, straight from Redis in Feast's
layout (cdcf.layout), with each view's as-of time.

One HMGET per entity of only the fields the model needs (never HGETALL), all written in one send: the commands are
packed by hand (the fields part once) and the replies read by hiredis, which skips redis-py's per-command pipeline
machinery. Values are decoded a column at a time (doubles in one numpy pass, repeated ints from a memo, as-of
times vectorized), with no protobuf objects. An
optional local cache keeps each entity's raw fields for ``cache_ttl_s`` seconds: a scorer hammering the same
entities then reads Redis once per TTL, at the price of values up to that old; it holds at most ``cache_entries``
entities (the least recently fetched go first).

Redis calls time out after ``REDIS_TIMEOUT_S`` and are not retried: a stalled or unreachable Redis is an error
the caller sees at once (the scoring service answers 503), never a request hanging on it.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cdcf import features as decl
from cdcf import layout
from cdcf.redis_clients import redis_client

REDIS_TIMEOUT_S = 0.4  # per connect and per reply
CACHE_ENTRIES = 100_000


@dataclass(frozen=True)
class Fetched:
    ids: list  # the entity ids, or per row a tuple of them (ServiceClient)
    columns: list[np.ndarray]  # per feature, in request order: float64 with NaN for null, or objects
    kinds: list[str]  # per feature: "double", "int64" or "object"
    as_of: dict[str, np.ndarray]  # per view: datetime64[us] per entity, NaT where the view has no value
    known: np.ndarray  # per entity: does Redis hold anything of it

    def matrix(self) -> np.ndarray:
        """The values as float64, NaN where null (numeric features only)."""
        return np.column_stack(self.columns).astype(np.float64) if self.columns else np.empty((len(self.ids), 0))

    def row(self, n: int) -> list:
        """Entity ``n``'s values as Python objects (None for null), typed as Feast returns them."""
        values = []
        for column, kind in zip(self.columns, self.kinds, strict=True):
            value = column[n]
            if kind != "object":
                value = None if np.isnan(value) else (int(value) if kind == "int64" else float(value))
            values.append(value)
        return values

    def as_of_row(self, n: int) -> dict[str, datetime | None]:
        return {
            view: None if np.isnat(stamps[n]) else stamps[n].astype(datetime).replace(tzinfo=UTC)
            for view, stamps in self.as_of.items()
        }


class FeatureClient:
    def __init__(
        self,
        client: redis.Redis,
        project: str,
        join_key: str,
        features: Sequence[tuple[str, str]],
        cache_ttl_s: float = 0.0,
        cache_entries: int = CACHE_ENTRIES,
    ) -> None:
        self.client = client
        self.project = project.encode()
        self.prefix = layout.key_prefix(join_key)
        self.features = list(features)
        self.views = list(dict.fromkeys(view for view, _ in features))
        self.fields = [layout.field(v, f) for v, f in features] + [layout.ts_field(v) for v in self.views]
        self.cache_ttl_s, self.cache_entries = cache_ttl_s, cache_entries
        self._cache: OrderedDict[int, tuple[float, list]] = OrderedDict()
        # RESP: *<args>\r\n $5\r\nHMGET\r\n $<len>\r\n<key>\r\n then the fields, the same for every key
        self._head = f"*{2 + len(self.fields)}\r\n$5\r\nHMGET\r\n".encode()
        self._tail = b"".join(b"$%d\r\n%s\r\n" % (len(f), f) for f in self.fields)

    @classmethod
    def for_service(cls, settings, service: str, cache_ttl_s: float = 0.0) -> FeatureClient:
        """A client of one feature service of one entity, on the settings' Redis (ServiceClient reads any)."""
        return cls.for_features(settings, [tuple(ref.split(":")) for ref in decl.feature_refs(service)], cache_ttl_s)

    @classmethod
    def for_features(cls, settings, features: Sequence[tuple[str, str]], cache_ttl_s: float = 0.0) -> FeatureClient:
        """A client of (view, feature) pairs of one entity's views, on the settings' Redis."""
        (join_key,) = {v.entity.join_key for v in decl.ALL_VIEWS if v.name in {view for view, _ in features}}
        client = redis_client(
            settings,
            "reader",
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
        return cls(client, settings.feast_project, join_key, features, cache_ttl_s)

    def fetch(self, ids: Sequence[int]) -> Fetched:
        replies = self._raw(ids)
        n = len(self.features)
        decoded = [layout.decode_column([r[k] for r in replies]) for k in range(n)]
        as_of = {view: layout.decode_timestamps([r[n + k] for r in replies]) for k, view in enumerate(self.views)}
        known = np.array([any(b is not None for b in r) for r in replies], dtype=bool)
        return Fetched(list(ids), [c for c, _ in decoded], [k for _, k in decoded], as_of, known)

    def _raw(self, ids: Sequence[int]) -> list[list]:
        """Each entity's field bytes (None where absent), from the cache when fresh, else one pipeline."""
        now = time.monotonic()
        found: dict[int, list] = {}
        if self.cache_ttl_s > 0:
            found = {i: hit[1] for i in ids if (hit := self._cache.get(i)) and hit[0] > now}
        wanted = [i for i in dict.fromkeys(ids) if i not in found]
        if wanted:
            replies = self._hmget_all(wanted)
            found.update(zip(wanted, replies, strict=True))
            if self.cache_ttl_s > 0:
                self._remember(wanted, replies, now + self.cache_ttl_s)
        return [found[i] for i in ids]

    def _remember(self, ids: list[int], replies: list[list], until: float) -> None:
        for i, reply in zip(ids, replies, strict=True):
            self._cache[i] = (until, reply)
            self._cache.move_to_end(i)
        while len(self._cache) > self.cache_entries:
            self._cache.popitem(last=False)

    def ping(self) -> str:
        """ "ok", or why Redis does not answer."""
        try:
            self.client.ping()
            return "ok"
        except redis.RedisError as exc:
            return f"unreachable: {exc}"

    def _hmget_all(self, ids: list[int]) -> list[list]:
        return layout.execute_packed(
            self.client,
            [
                b"%s%s%s" % (self._head, layout.bulk(layout.entity_key(self.prefix, i, self.project)), self._tail)
                for i in ids
            ],
            chunk=len(ids) or 1,
        )

    def close(self) -> None:
        self.client.close()


class ServiceClient:
    """Any feature service, two-entity ones included (recommendation_v1: user and product views): one
    FeatureClient per entity, on one Redis connection; a row's values are those of each of its entities."""

    def __init__(self, features: list[tuple[str, str]], clients: dict[str, FeatureClient]) -> None:
        self.features, self.clients = features, clients
        # each feature: the join key whose client holds it, and its column there
        self._where = [
            (key, client.features.index(f)) for f in features for key, client in clients.items() if f in client.features
        ]

    @classmethod
    def for_service(cls, settings, service: str, cache_ttl_s: float = 0.0) -> ServiceClient:
        features = [tuple(ref.split(":")) for ref in decl.feature_refs(service)]
        key_of = {v.name: v.entity.join_key for v in decl.ALL_VIEWS}
        connection = None
        clients: dict[str, FeatureClient] = {}
        for key in dict.fromkeys(key_of[view] for view, _ in features):
            mine = [(view, name) for view, name in features if key_of[view] == key]
            client = (
                FeatureClient.for_features(settings, mine, cache_ttl_s)
                if connection is None
                else FeatureClient(connection, settings.feast_project, key, mine, cache_ttl_s)
            )
            connection, clients[key] = client.client, client
        return cls(features, clients)

    def fetch(self, keys: dict[str, Sequence[int]]) -> Fetched:
        """Rows given as equal-length id lists per join key, e.g. {"user_id": [1, 1], "product_id": [5, 6]}: the
        values in the service's order (each entity fetched once); a row is known when each of its entities is."""
        if set(keys) != set(self.clients) or len({len(ids) for ids in keys.values()}) != 1:
            raise ValueError(f"give equally many ids for each of {', '.join(self.clients)}")
        parts = {}
        for key, client in self.clients.items():
            unique = list(dict.fromkeys(keys[key]))
            position = {entity: n for n, entity in enumerate(unique)}
            parts[key] = (client.fetch(unique), np.array([position[i] for i in keys[key]], dtype=np.int64))
        columns = [parts[key][0].columns[k][parts[key][1]] for key, k in self._where]
        kinds = [parts[key][0].kinds[k] for key, k in self._where]
        as_of = {view: stamps[rows] for fetched, rows in parts.values() for view, stamps in fetched.as_of.items()}
        known = np.logical_and.reduce([fetched.known[rows] for fetched, rows in parts.values()])
        return Fetched(list(zip(*keys.values(), strict=True)), columns, kinds, as_of, known)

    def close(self) -> None:
        next(iter(self.clients.values())).close()
