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

import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from itertools import compress
from math import nan
from typing import Any

from flight_delay.feature_tables import HOURS_SINCE_LAST_DEP, LAST_DEP_UNIX, hours_since
from flight_delay.flights import (
    ENTITY_KEYS,
    SCHEDULE_CATEGORICAL,
    SCHEDULE_NUMERIC,
    entity_keys,
    schedule_features_row,
)

# What the readiness probe reads: a real entity key of every view (found or not, the store answered).
PROBE_ROW = entity_keys("EWR", "UA", None, "IAH")
# (view, entity) rows a worker keeps: a day of New York departures touches under 10,000 (the tail
# numbers twice, airports, carriers, routes); README's measured figures say what this bound costs.
MAX_CACHED = 20_000


@dataclass
class FeatureRows:
    """What the online store knows of a batch of flights: each feature's value per flight (None
    when missing, expired, or stamped after the flight's prediction time), the prediction time per
    flight (unix), each view's row age per flight (seconds, None when the view had no row) and the
    unknown entities per flight, how many rows came from the store and the cache, and how many
    values were stamped after their prediction time."""

    values: dict[str, list[Any]]
    times: list[float]
    ages: dict[str, list[float | None]]  # view -> the age of its row, one per flight
    unknown: list[list[str]]
    reads: Counter[tuple[str, str]]  # (view, "store" | "cache") -> rows
    future: Counter[str] = field(default_factory=Counter)  # view -> values served as missing

    def ages_of(self, i: int) -> dict[str, float | None]:
        """The age of each view's row for the flight at position ``i`` (a response's feature ages)."""
        return {view: column[i] for view, column in self.ages.items()}

    def subset(self, members: list[int]) -> FeatureRows:
        """The rows of the flights at positions ``members``, in that order (counts are the call's)."""
        return FeatureRows(
            {c: [col[i] for i in members] for c, col in self.values.items()},
            [self.times[i] for i in members],
            {v: [col[i] for i in members] for v, col in self.ages.items()},
            [self.unknown[i] for i in members],
            self.reads,
            self.future,
        )


@dataclass(frozen=True)
class _View:
    name: str
    features: tuple[str, ...]
    join_keys: tuple[str, ...]
    key_types: tuple[Any, ...]  # feast ValueType of each join key
    ttl: float  # seconds, 0 = no expiry
    table: Any  # the FeatureView


Entry = tuple[float, float | None, tuple | None]  # (monotonic read time, event time (unix) or None, values or None)


class OnlineFeatures:
    """Reads a feature service's views for flights, with a bounded per-worker cache.

    A call goes in three steps so that the service can keep store reads off its event loop:
    :meth:`begin` takes what the cache holds (no I/O), :meth:`Lookup.fetch` reads the rest from
    the store (I/O: run it on a thread), :meth:`Lookup.finish` assembles the rows. A lookup keeps
    every row it uses, so the cache evicting an entry meanwhile can never fail a request. The
    cache holds at most ``max_entries`` (view, entity) rows, least recently used evicted first,
    found and not-found alike.
    """

    def __init__(
        self, store: Any, service_name: str, max_staleness: float = 1.0, max_entries: int = MAX_CACHED
    ) -> None:
        self.store = store
        self.max_staleness = max_staleness
        self.max_entries = max_entries
        # Feast's own feature server reads through the provider as well; it is the one object
        # that knows which online store (SQLite, Redis) the repo config selected.
        self._provider = store._get_provider()
        self.views: tuple[_View, ...] = tuple(_service_views(store, service_name))
        # An entity is unknown when none of the views keyed by it alone has a value for it.
        self.entity_views = {k: tuple(v.name for v in self.views if v.join_keys == (k,)) for k in sorted(ENTITY_KEYS)}
        self.served: frozenset[str] = frozenset(f for v in self.views for f in v.features)
        self._cache: OrderedDict[tuple[str, tuple], Entry] = OrderedDict()
        self._lock = threading.Lock()

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

    def can_serve(self, spec: Any) -> str | None:
        """None when :func:`model_inputs` can build every input of ``spec`` (a FeatureSpec) from a
        request and this feature service, else what is missing (the router refuses such a model)."""
        numeric = set(SCHEDULE_NUMERIC) | self.served
        if LAST_DEP_UNIX in self.served:
            numeric.add(HOURS_SINCE_LAST_DEP)
        missing = [c for c in spec.numeric if c not in numeric]
        missing += [c for c in spec.categorical if c not in set(REQUEST_CATEGORICAL) | self.served]
        if missing:
            return (
                f"inputs {missing} are neither request fields nor features of the service's feature views "
                f"({', '.join(v.name for v in self.views)})"
            )
        return None

    def cached_entries(self) -> int:
        return len(self._cache)

    def _cached(self, name: str, keys: set[tuple], fresh_after: float) -> dict[tuple, Entry]:
        """The cache's fresh entries among ``keys`` (marked recently used)."""
        found: dict[tuple, Entry] = {}
        cache = self._cache
        with self._lock:
            for key in keys:
                entry = cache.get((name, key))
                if entry is not None and entry[0] > fresh_after:  # max_staleness 0: every entry is stale
                    cache.move_to_end((name, key))
                    found[key] = entry
        return found

    def _remember(self, name: str, entries: dict[tuple, Entry]) -> None:
        cache = self._cache
        with self._lock:
            for key, entry in entries.items():
                cache[(name, key)] = entry
                cache.move_to_end((name, key))
            while len(cache) > self.max_entries:
                cache.popitem(last=False)

    def begin(self, flights: list[Any], now: datetime) -> Lookup:
        """What the cache holds for ``flights`` (``api_models.Flight``); no I/O."""
        entity_rows = [entity_keys(f.origin, f.carrier, f.tailnum, f.dest) for f in flights]
        default_time = now.timestamp()
        times = [f.prediction_time.timestamp() if f.prediction_time else default_time for f in flights]
        fresh_after = time.monotonic() - self.max_staleness
        # Each view's entity keys, built once per distinct set of join keys, column-wise.
        columns = {k: [row[k] for row in entity_rows] for k in ENTITY_KEYS}
        by_join_keys: dict[tuple[str, ...], list[tuple]] = {}
        for v in self.views:
            if v.join_keys not in by_join_keys:
                by_join_keys[v.join_keys] = list(zip(*(columns[k] for k in v.join_keys)))
        keys = {v.name: by_join_keys[v.join_keys] for v in self.views}
        cached = {v.name: self._cached(v.name, set(keys[v.name]), fresh_after) for v in self.views}
        return Lookup(self, keys, cached, times)

    def read(self, flights: list[Any], now: datetime) -> FeatureRows:
        """Every view's values for ``flights`` at their prediction times (``now`` for those without
        one), in one call: :meth:`begin`, :meth:`Lookup.fetch`, :meth:`Lookup.finish`."""
        lookup = self.begin(flights, now)
        lookup.fetch()
        return lookup.finish()


class Lookup:
    """One call's rows: those the cache held when it began, and those :meth:`fetch` read."""

    def __init__(
        self,
        online: OnlineFeatures,
        keys: dict[str, list[tuple]],
        rows: dict[str, dict[tuple, Entry]],
        times: list[float],
    ) -> None:
        self.online, self.keys, self.rows, self.times = online, keys, rows, times
        self.missing = {name: sorted(set(k) - rows[name].keys()) for name, k in keys.items()}

    @property
    def needs_store(self) -> bool:
        return any(self.missing.values())

    def fetch(self) -> None:
        """Read what the cache did not hold from the online store (I/O; may raise the store's error)."""
        read_at = time.monotonic()
        for view in self.online.views:
            wanted = self.missing[view.name]
            if not wanted:
                continue
            entries = {key: (read_at, ts, row) for key, (ts, row) in zip(wanted, self.online._read(view, wanted))}
            self.rows[view.name].update(entries)
            self.online._remember(view.name, entries)

    def finish(self) -> FeatureRows:
        """Values per feature, ages and unknown entities; a value past its view's TTL, or stamped
        after the flight's prediction time, is missing, as the point-in-time join of training
        treats it."""
        absent = [key for name, keys in self.missing.items() for key in keys if key not in self.rows[name]]
        if absent:
            raise RuntimeError(f"Lookup.finish() before fetch(): {len(absent)} rows were not in the cache")
        n = len(self.times)
        times = self.times
        views = self.online.views
        age_columns: list[list[float | None]] = []  # per view, per flight
        missing: dict[str, list[bool]] = {}  # per view, per flight
        found: dict[str, list[Any]] = {}
        reads: Counter[tuple[str, str]] = Counter()
        future: Counter[str] = Counter()
        # Column by column: one pass per view over the flights, then the view's rows transposed
        # into feature columns at C speed; a batch costs a few list operations per flight and view.
        for view in views:
            rows, keys = self.rows[view.name], self.keys[view.name]
            fetched = len(self.missing[view.name])  # distinct keys read; repeats within a call are not
            if fetched:
                reads[(view.name, "store")] += fetched
            if n > fetched:
                reads[(view.name, "cache")] += n - fetched
            ttl = view.ttl
            view_ages: list[float | None] = []
            served: list[tuple | None] = []
            late = 0
            for t, key in zip(times, keys):
                _, ts, row = rows[key]
                if row is None:
                    view_ages.append(None)
                    served.append(None)
                    continue
                age = t - ts
                view_ages.append(round(age, 3))
                if age < 0:  # known only after the prediction time: training would not see it
                    late += 1
                    served.append(None)
                elif ttl and age > ttl:  # expired: served as missing, like training
                    served.append(None)
                else:
                    served.append(row)
            if late:
                future[view.name] += late
            age_columns.append(view_ages)
            absent_rows = [r is None for r in served]
            missing[view.name] = absent_rows
            if any(absent_rows):
                blank = (None,) * len(view.features)
                served = [blank if r is None else r for r in served]
            found.update(zip(view.features, map(list, zip(*served))))
        unknown: list[list[str]] = [[] for _ in range(n)]
        for entity, entity_views in self.online.entity_views.items():  # in sorted order
            flags = [True] * n
            for name in entity_views:
                flags = [a and b for a, b in zip(flags, missing[name])]
            for i in compress(range(n), flags):
                unknown[i].append(entity)
        return FeatureRows(found, times, dict(zip((v.name for v in views), age_columns)), unknown, reads, future)


def _service_views(store: Any, service_name: str) -> list[_View]:
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
    return views


# Request fields a model may take as categories, as model_inputs builds them.
REQUEST_CATEGORICAL: tuple[str, ...] = ("carrier", "origin", "dest", *SCHEDULE_CATEGORICAL)


def model_inputs(
    flights: list[Any], rows: FeatureRows, numeric: tuple[str, ...], categorical: tuple[str, ...]
) -> dict[str, list[Any]]:
    """The model's input columns for ``flights`` (the rows ``rows`` was read for, in order): looked-up
    values, the request's own schedule features and request-time features, assembled exactly as the
    training set was (numerics as floats, NaN for missing; categories as strings, "" for missing)."""
    schedule = [schedule_features_row(f.scheduled_departure, f.distance) for f in flights]
    found, times = rows.values, rows.times
    inputs: dict[str, list[Any]] = {}
    for c in numeric:
        if c == HOURS_SINCE_LAST_DEP:
            inputs[c] = [hours_since(nan if v is None else float(v), t) for v, t in zip(found[LAST_DEP_UNIX], times)]
        elif c in schedule[0]:
            inputs[c] = [float(s[c]) for s in schedule]
        else:
            inputs[c] = [nan if v is None else float(v) for v in found[c]]
    request = {
        "carrier": [f.carrier for f in flights],
        "origin": [f.origin for f in flights],
        "dest": [f.dest for f in flights],
        **{c: [s[c] for s in schedule] for c in SCHEDULE_CATEGORICAL},
    }
    for c in categorical:
        inputs[c] = request[c] if c in request else [("" if v is None else str(v)) for v in found[c]]
    return inputs
