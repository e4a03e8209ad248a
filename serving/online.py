"""Online features for a batch of flights: one Feast lookup through the model's feature service,
then the request's own schedule features, exactly as the training set was assembled."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flight_delay.features import hours_since, schedule_features_row

# An entity is unknown when none of its views has a value for it.
ENTITY_VIEWS = {
    "origin": ("origin_hourly_weather", "origin_1h_departures"),
    "tailnum": ("aircraft_profile", "aircraft_last_departure"),
    "carrier": ("carrier_7d_delays",),
    "route": ("route_28d_delays",),
}


@dataclass
class Lookup:
    """Model inputs by column, and per row: feature ages by view and unknown entities."""

    inputs: dict[str, list[Any]]
    ages: list[dict[str, float | None]]
    unknown: list[list[str]]


class OnlineFeatures:
    def __init__(self, store: Any, service_name: str) -> None:
        self.store = store
        self.service = store.get_feature_service(service_name)
        self.views: dict[str, list[str]] = {
            p.name: [f.name for f in p.features] for p in self.service.feature_view_projections
        }
        # The point-in-time join of training drops values older than a view's TTL; the online
        # store returns them however old. Dropping them here too keeps serving = training.
        self.ttl_seconds: dict[str, float] = {
            name: store.get_feature_view(name).ttl.total_seconds() for name in self.views
        }

    def check(self) -> None:
        """Raise unless the online store answers (readiness)."""
        self.store.get_online_features(
            features=self.service,
            entity_rows=[{"origin": "EWR", "carrier": "UA", "tailnum": "UNKNOWN", "route": "EWR-IAH"}],
        )

    def lookup(self, flights: list[Any], now: datetime, numeric: tuple[str, ...],
               categorical: tuple[str, ...]) -> Lookup:
        rows = [{"origin": f.origin, "carrier": f.carrier, "tailnum": f.tailnum or "UNKNOWN",
                 "route": f"{f.origin}-{f.dest}"} for f in flights]
        found = self.store.get_online_features(features=self.service, entity_rows=rows).to_dict(
            include_event_timestamps=True
        )
        n = len(flights)
        times = [(f.prediction_time or now).timestamp() for f in flights]
        ages: list[dict[str, float | None]] = [{} for _ in range(n)]
        missing: list[set[str]] = [set() for _ in range(n)]
        for view, names in self.views.items():
            stamps = found[f"{names[0]}__ts"]
            ttl = self.ttl_seconds[view]
            for i in range(n):
                if all(found[c][i] is None for c in names):
                    missing[i].add(view)
                    ages[i][view] = None
                    continue
                age = times[i] - float(stamps[i])
                if ttl and age > ttl:  # expired: served as missing, like training
                    for c in names:
                        found[c][i] = None
                    missing[i].add(view)
                ages[i][view] = round(age, 3)
        unknown = [
            sorted(e for e, views in ENTITY_VIEWS.items() if all(v in missing[i] for v in views))
            for i in range(n)
        ]
        schedule = [schedule_features_row(f.scheduled_departure, f.distance) for f in flights]
        inputs: dict[str, list[Any]] = {}
        for c in numeric:
            if c == "hours_since_last_dep":
                col = [hours_since(_num(found["last_dep_unix"][i]), times[i]) for i in range(n)]
            elif c in schedule[0]:
                col = [float(s[c]) for s in schedule]
            else:
                col = [_num(v) for v in found[c]]
            inputs[c] = col
        request = {"carrier": [f.carrier for f in flights], "origin": [f.origin for f in flights],
                   "dest": [f.dest for f in flights], "weekday": [s["weekday"] for s in schedule]}
        for c in categorical:
            inputs[c] = request[c] if c in request else [("" if v is None else str(v)) for v in found[c]]
        return Lookup(inputs, ages, unknown)


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
