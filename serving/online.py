"""Online features for a batch of flights, read from Feast's online store view by view through the
model's feature service, then the request's own schedule features, exactly as the training set
was assembled.

Feast's generic ``get_online_features`` assembles protobuf responses row by row, which costs more
than the whole prediction. The service reads the same rows through the same provider
(``online_read``: SQLite by default, Redis when configured) and decodes only what it uses. Each
worker keeps what it read for ``max_staleness`` seconds (0 turns it off): the three airports'
weather and activity, the carriers and the routes are shared by most requests, so a second of
staleness saves most reads, and every response still reports each view's age.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flight_delay.feature_tables import HOURS_SINCE_LAST_DEP, LAST_DEP_UNIX, hours_since
from flight_delay.flights import ENTITY_KEYS, entity_keys, schedule_features_row

# What the readiness probe reads: a real entity key of every view (found or not, the store answered).
PROBE_ROW = entity_keys("EWR", "UA", None, "IAH")
# Entries cached per worker before the cache starts over (a few times the year's tail numbers).
MAX_CACHED = 200_000


@dataclass
class FeatureRows:
    """What the online store knows of a batch of flights: each feature's value per flight (None
    when missing or expired), the prediction time per flight (unix), feature ages by view and
    the unknown entities per flight, and how many rows came from the store and the cache."""

    values: dict[str, list[Any]]
    times: list[float]
    ages: list[dict[str, float | None]]
    unknown: list[list[str]]
    reads: Counter[tuple[str, str]]  # (view, "store" | "cache") -> rows

    def subset(self, members: list[int]) -> FeatureRows:
        """The rows of the flights at positions ``members``, in that order (reads are the call's)."""
        return FeatureRows(
            {c: [col[i] for i in members] for c, col in self.values.items()},
            [self.times[i] for i in members],
            [self.ages[i] for i in members],
            [self.unknown[i] for i in members],
            self.reads,
        )


@dataclass(frozen=True)
class _View:
    name: str
    features: tuple[str, ...]
    join_keys: tuple[str, ...]
    key_types: tuple[Any, ...]  # feast ValueType of each join key
    ttl: float  # seconds, 0 = no expiry
    table: Any  # the FeatureView


class OnlineFeatures:
    def __init__(self, store: Any, service_name: str, max_staleness: float = 1.0) -> None:
        self.store = store
        self.max_staleness = max_staleness
        # Feast's own feature server reads through the provider as well; it is the one object
        # that knows which online store (SQLite, Redis) the repo config selected.
        self._provider = store._get_provider()
        service = store.get_feature_service(service_name)
        key_type = {e.join_key: e.value_type for e in store.list_entities()}
        views = []
        for p in service.feature_view_projections:
            if p.join_key_map:
                raise ValueError(
                    f"feature service {service_name!r}: view {p.name!r} remaps join keys "
                    f"{p.join_key_map}; the service expects the views' own keys"
                )
            try:
                fv = store.get_feature_view(p.name)
            except Exception as exc:
                raise ValueError(
                    f"feature service {service_name!r}: {p.name!r} is not a batch or "
                    f"stream feature view the service can read online: {exc}"
                ) from exc
            keys = tuple(fv.join_keys)
            views.append(
                _View(
                    p.name,
                    tuple(f.name for f in p.features),
                    keys,
                    tuple(key_type[k] for k in keys),
                    fv.ttl.total_seconds() if fv.ttl else 0.0,
                    fv,
                )
            )
        self.views: tuple[_View, ...] = tuple(views)
        # An entity is unknown when none of the views keyed by it alone has a value for it.
        self.entity_views = {k: tuple(v.name for v in views if v.join_keys == (k,)) for k in ENTITY_KEYS}
        # (view, key) -> (monotonic read time, event time (unix) or None, values or None)
        self._cache: dict[tuple[str, tuple], tuple[float, float | None, tuple | None]] = {}

    def check(self) -> None:
        """Raise unless the online store answers every view (readiness); bypasses the cache."""
        for view in self.views:
            self._read(view, [tuple(PROBE_ROW[k] for k in view.join_keys)])

    def _read(self, view: _View, keys: list[tuple]) -> list[tuple[float | None, tuple | None]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.type_map import feast_value_type_to_python_type, python_values_to_proto_values

        # One conversion per join key for all the keys (per value, Feast's converter dominated).
        columns = [python_values_to_proto_values([key[j] for key in keys], t) for j, t in enumerate(view.key_types)]
        join_keys = list(view.join_keys)
        entity_keys = [EntityKey(join_keys=join_keys, entity_values=values) for values in zip(*columns)]
        out = []
        for ts, values in self._provider.online_read(self.store.config, view.table, entity_keys, list(view.features)):
            if values is None:
                out.append((None, None))
                continue
            row = tuple(feast_value_type_to_python_type(values[f]) if f in values else None for f in view.features)
            out.append((ts.timestamp() if ts is not None else None, None if all(v is None for v in row) else row))
        return out

    def _rows(self, view: _View, keys: list[tuple], reads: Counter) -> list[tuple[float, float | None, tuple | None]]:
        cache, name = self._cache, view.name
        now = time.monotonic()
        stale_before = now - self.max_staleness
        wanted = []
        for key in set(keys):
            entry = cache.get((name, key))
            if entry is None or entry[0] <= stale_before:  # max_staleness 0: every entry is stale
                wanted.append(key)
        if wanted:
            if len(cache) + len(wanted) > MAX_CACHED:
                cache.clear()
            for key, (ts, row) in zip(wanted, self._read(view, wanted)):
                cache[(name, key)] = (now, ts, row)
            reads[(name, "store")] += len(wanted)
        if len(keys) > len(wanted):
            reads[(name, "cache")] += len(keys) - len(wanted)
        return [cache[(name, key)] for key in keys]

    def read(self, flights: list[Any], now: datetime) -> FeatureRows:
        """Every view's values for ``flights`` (``api_models.Flight``) at their prediction times
        (``now`` for those without one); a value past its view's TTL is missing, like training."""
        n = len(flights)
        entity_rows = [entity_keys(f.origin, f.carrier, f.tailnum, f.dest) for f in flights]
        default_time = now.timestamp()
        times = [f.prediction_time.timestamp() if f.prediction_time else default_time for f in flights]
        ages: list[dict[str, float | None]] = [{} for _ in range(n)]
        missing: list[set[str]] = [set() for _ in range(n)]
        found: dict[str, list[Any]] = {}
        reads: Counter[tuple[str, str]] = Counter()
        for view in self.views:
            keys = [tuple(r[k] for k in view.join_keys) for r in entity_rows]
            columns: list[list[Any]] = [[None] * n for _ in view.features]
            for i, (_, ts, row) in enumerate(self._rows(view, keys, reads)):
                if row is None:
                    missing[i].add(view.name)
                    ages[i][view.name] = None
                    continue
                age = times[i] - ts
                ages[i][view.name] = round(age, 3)
                if view.ttl and age > view.ttl:  # expired: served as missing, like training
                    missing[i].add(view.name)
                    continue
                for column, value in zip(columns, row):
                    column[i] = value
            found.update(zip(view.features, columns))
        unknown = [
            sorted(e for e, views in self.entity_views.items() if all(v in missing[i] for v in views)) for i in range(n)
        ]
        return FeatureRows(found, times, ages, unknown, reads)


def model_inputs(
    flights: list[Any], rows: FeatureRows, numeric: tuple[str, ...], categorical: tuple[str, ...]
) -> dict[str, list[Any]]:
    """The model's input columns for ``flights`` (the rows ``rows`` was read for, in order): looked-up
    values, the request's own schedule features and request-time features, assembled exactly as the
    training set was (numerics as floats, NaN for missing; categories as strings, "" for missing)."""
    n = len(flights)
    schedule = [schedule_features_row(f.scheduled_departure, f.distance) for f in flights]
    found, times = rows.values, rows.times
    inputs: dict[str, list[Any]] = {}
    for c in numeric:
        if c == HOURS_SINCE_LAST_DEP:
            inputs[c] = [hours_since(_num(found[LAST_DEP_UNIX][i]), times[i]) for i in range(n)]
        elif c in schedule[0]:
            inputs[c] = [float(s[c]) for s in schedule]
        else:
            inputs[c] = [_num(v) for v in found[c]]
    request = {
        "carrier": [f.carrier for f in flights],
        "origin": [f.origin for f in flights],
        "dest": [f.dest for f in flights],
        "weekday": [s["weekday"] for s in schedule],
    }
    for c in categorical:
        inputs[c] = request[c] if c in request else [("" if v is None else str(v)) for v in found[c]]
    return inputs


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
