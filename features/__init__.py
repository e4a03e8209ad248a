"""The Feast feature repository: entities, sources, feature views and feature services, split by
object type. ``definitions`` builds every object for one offline root; the pipeline applies them
programmatically, and ``features/repo.py`` exposes them to the ``feast`` CLI.

Names live here and Feast is imported only when objects are built, so the pipeline's code
location and the service can name tables and services without paying Feast's import time.
"""

FLIGHT_DELAY_SERVICE = "flight_delay_v1"

BATCH_TABLES: tuple[str, ...] = (
    "origin_hourly_weather",
    "aircraft_profile",
    "carrier_7d_delays",
    "route_28d_delays",
)
# Tables a streaming job would write; each reaches the online store through its push source.
STREAM_TABLES: tuple[str, ...] = (
    "origin_1h_departures",
    "origin_carrier_3h_departures",
    "aircraft_last_departure",
)


def push_source_name(table: str) -> str:
    return f"{table}_push"


def offline_path(offline_root: str, table: str) -> str:
    """Folder of the daily Parquet files of one feature table."""
    return f"{offline_root.rstrip('/')}/{table}"


def definitions(offline_root: str) -> list:
    """Every Feast object of the repo, in the order ``FeatureStore.apply`` takes them."""
    from features.entities import ENTITIES
    from features.services import build_services
    from features.sources import build_sources
    from features.views import build_views

    sources = build_sources(offline_root)
    views = build_views(sources)
    return [*ENTITIES, *sources.values(), *views.values(), *build_services(views)]
