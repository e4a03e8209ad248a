"""Feature views, named ``<entity>_<window>_<topic>``. Each TTL bounds how old a value may be at
prediction time before it counts as missing. The activity streams emit a row only when a value
changes, so their TTL is a day: a quiet night keeps its last (unchanged) value."""

from datetime import timedelta

from feast import FeatureView, Field
from feast.types import Float64, String

from features import entities as e


def _floats(*names: str) -> list[Field]:
    return [Field(name=n, dtype=Float64) for n in names]


def build_views(sources: dict) -> dict[str, FeatureView]:
    """Every feature view, by name, over the sources of :func:`features.sources.build_sources`."""
    views = [
        FeatureView(
            name="origin_hourly_weather",
            entities=[e.origin],
            ttl=timedelta(hours=3),
            schema=_floats("temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip",
                           "pressure", "visib"),
            source=sources["origin_hourly_weather"],
            description="Last hourly weather observation at the origin airport.",
        ),
        FeatureView(
            name="origin_1h_departures",
            entities=[e.origin],
            ttl=timedelta(days=1),
            schema=_floats("origin_1h_departures", "origin_1h_mean_delay", "origin_1h_late_rate",
                           "origin_1h_pending", "origin_1h_scheduled_next"),
            source=sources["origin_1h_departures"],
            description="Departures, mean delay and late rate at the origin over the last hour; flights "
            "due in the last two hours still waiting; departures scheduled in the next hour.",
        ),
        FeatureView(
            name="origin_carrier_3h_departures",
            entities=[e.origin, e.carrier],
            ttl=timedelta(days=1),
            schema=_floats("origin_carrier_3h_departures", "origin_carrier_3h_mean_delay",
                           "origin_carrier_3h_late_rate"),
            source=sources["origin_carrier_3h_departures"],
            description="The carrier's departures, mean delay and late rate at the origin, last 3 hours.",
        ),
        FeatureView(
            name="aircraft_last_departure",
            entities=[e.aircraft],
            ttl=timedelta(days=7),
            schema=_floats("last_dep_delay", "last_dep_unix"),
            source=sources["aircraft_last_departure"],
            description="Delay and time of the aircraft's most recent departure.",
        ),
        FeatureView(
            name="aircraft_profile",
            entities=[e.aircraft],
            ttl=timedelta(0),
            schema=[
                *_floats("plane_year", "plane_seats", "plane_engines"),
                Field(name="plane_manufacturer", dtype=String),
                Field(name="plane_engine", dtype=String),
            ],
            source=sources["aircraft_profile"],
            description="Registered attributes of the aircraft (FAA registry).",
        ),
        FeatureView(
            name="carrier_7d_delays",
            entities=[e.carrier],
            ttl=timedelta(days=2),
            schema=_floats("carrier_7d_departures", "carrier_7d_late_rate", "carrier_7d_mean_delay"),
            source=sources["carrier_7d_delays"],
            description="The carrier's departures, late rate and mean delay over the 7 previous days.",
        ),
        FeatureView(
            name="route_28d_delays",
            entities=[e.route],
            ttl=timedelta(days=2),
            schema=_floats("route_28d_departures", "route_28d_late_rate", "route_28d_mean_delay"),
            source=sources["route_28d_delays"],
            description="The route's departures, late rate and mean delay over the 28 previous days.",
        ),
    ]
    return {view.name: view for view in views}
