"""Feature views, named ``<entity>_<window>_<topic>``. Each TTL bounds how old a value may be at
prediction time before it counts as missing. The activity streams emit a row only when a value
changes, so their TTL is a day: a quiet night keeps its last (unchanged) value."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float64, String

from features import entities as e
from flight_delay.feature_tables import (
    AIRCRAFT_LAST_DEPARTURE_COLUMNS,
    AIRCRAFT_PROFILE_NUMERIC,
    AIRCRAFT_PROFILE_TEXT,
    CARRIER_7D,
    ORIGIN_1H,
    ORIGIN_CARRIER_3H,
    ROUTE_28D,
    WEATHER_COLUMNS,
    activity_columns,
)


def _floats(*names: str) -> list[Field]:
    return [Field(name=n, dtype=Float64) for n in names]


def build_views(sources: dict) -> dict[str, FeatureView]:
    """Every feature view, by name, over the sources of :func:`features.sources.build_sources`."""

    def view(name: str, entities: list, ttl: timedelta, schema: list[Field], description: str) -> FeatureView:
        return FeatureView(
            name=name, entities=entities, ttl=ttl, schema=schema, source=sources[name], description=description
        )

    views = [
        view(
            "origin_hourly_weather",
            [e.origin],
            timedelta(hours=3),
            _floats(*WEATHER_COLUMNS),
            "Last hourly weather observation at the origin airport.",
        ),
        view(
            "origin_1h_departures",
            [e.origin],
            timedelta(days=1),
            _floats(*activity_columns(ORIGIN_1H)),
            "Departures, mean delay and late rate at the origin over the last hour; flights due in the last "
            "two hours still waiting; departures scheduled in the next hour.",
        ),
        view(
            "origin_carrier_3h_departures",
            [e.origin, e.carrier],
            timedelta(days=1),
            _floats(*activity_columns(ORIGIN_CARRIER_3H)),
            "The carrier's departures, mean delay and late rate at the origin, last 3 hours.",
        ),
        view(
            "aircraft_last_departure",
            [e.aircraft],
            timedelta(days=7),
            _floats(*AIRCRAFT_LAST_DEPARTURE_COLUMNS),
            "Delay and time of the aircraft's most recent departure.",
        ),
        view(
            "aircraft_profile",
            [e.aircraft],
            timedelta(0),
            [*_floats(*AIRCRAFT_PROFILE_NUMERIC), *(Field(name=n, dtype=String) for n in AIRCRAFT_PROFILE_TEXT)],
            "Registered attributes of the aircraft (FAA registry).",
        ),
        view(
            "carrier_7d_delays",
            [e.carrier],
            timedelta(days=2),
            _floats(*CARRIER_7D.columns),
            "The carrier's departures, late rate and mean delay over the 7 previous days.",
        ),
        view(
            "route_28d_delays",
            [e.route],
            timedelta(days=2),
            _floats(*ROUTE_28D.columns),
            "The route's departures, late rate and mean delay over the 28 previous days.",
        ),
    ]
    return {v.name: v for v in views}
