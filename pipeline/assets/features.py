"""Validated departures and the point-in-time feature tables, written where Feast reads them."""


from collections.abc import Iterator

import dagster as dg
import pandas as pd

from flight_delay import features as F
from flight_delay import schemas
from pipeline.checks import (
    check_result, require_valid, schema_check_spec, validate_raw_flights,
    validate_raw_weather,
)
from pipeline.partitions import daily_partitions

OFFLINE_IO = "offline_io_manager"
KNOWN_SINCE = pd.Timestamp("2012-12-31", tz="UTC")  # the registry extract predates the year


def _daily(group: str, partition_column: str, description: str, **kwargs) -> dict:
    return dict(
        group_name=group,
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata={"partition_column": partition_column},
        description=description,
        kinds={"pandas", "parquet"},
        **kwargs,
    )


def _lookback(days: int) -> dg.AssetIn:
    """The same days and the ``days`` before them (absent before the first partition)."""
    return dg.AssetIn(
        "departures",
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-days, end_offset=0, allow_nonexistent_upstream_partitions=True
        ),
    )


def _window(context: dg.AssetExecutionContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    window = context.partition_time_window
    return pd.Timestamp(window.start).tz_convert("UTC"), pd.Timestamp(window.end).tz_convert("UTC")


def _table(name: str, frame: pd.DataFrame) -> Iterator[dg.Output | dg.AssetCheckResult]:
    yield dg.Output(frame, metadata={"rows": len(frame), "columns": dg.MetadataValue.json(list(frame.columns))})
    yield check_result(name, schemas.validate(schemas.FEATURE_TABLE_SCHEMAS[name], frame))


@dg.asset(**_daily(
    "validated", "flight_date", "Departures with UTC timestamps and the 15-minute label.",
    check_specs=[schema_check_spec("departures", "DeparturesSchema: unique flights, label only when departed.")],
))
def departures(
    context: dg.AssetExecutionContext, raw_flights: pd.DataFrame, raw_airports: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    days = list(context.partition_keys)
    require_valid(f"raw_flights {days[0]}…{days[-1]}", validate_raw_flights(raw_flights, raw_airports, days))
    frame = F.prepare_departures(raw_flights)
    yield dg.Output(frame, metadata={
        "rows": len(frame),
        "cancelled": int(frame["cancelled"].sum()),
        "late_rate": float(frame["is_late"].mean()) if frame["is_late"].notna().any() else float("nan"),
    })
    yield check_result("departures", schemas.validate(schemas.DeparturesSchema, frame))


_FEATURES = "features"


@dg.asset(**_daily(
    _FEATURES, "event_timestamp", "Hourly weather per origin airport, implausible winds removed.", io_manager_key=OFFLINE_IO,
    check_specs=[schema_check_spec("origin_hourly_weather", "Feature table schema and ranges.")],
))
def origin_hourly_weather(
    context: dg.AssetExecutionContext, raw_weather: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    days = list(context.partition_keys)
    require_valid(f"raw_weather {days[0]}…{days[-1]}", validate_raw_weather(raw_weather, days))
    yield from _table("origin_hourly_weather", F.origin_hourly_weather(raw_weather))


@dg.asset(**_daily(
    _FEATURES, "event_timestamp", "Origin activity over the last hour, every 5 minutes (streamed).", io_manager_key=OFFLINE_IO, ins={"departures": _lookback(1)},
    check_specs=[schema_check_spec("origin_1h_departures", "Feature table schema and ranges.")],
))
def origin_1h_departures(
    context: dg.AssetExecutionContext, departures: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    start, end = _window(context)
    yield from _table("origin_1h_departures", F.departure_activity(departures, F.ORIGIN_1H, start, end))


@dg.asset(**_daily(
    _FEATURES, "event_timestamp", "Carrier activity per origin over 3 hours, every 15 minutes (streamed).", io_manager_key=OFFLINE_IO, ins={"departures": _lookback(1)},
    check_specs=[schema_check_spec("origin_carrier_3h_departures", "Feature table schema and ranges.")],
))
def origin_carrier_3h_departures(
    context: dg.AssetExecutionContext, departures: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    start, end = _window(context)
    yield from _table(
        "origin_carrier_3h_departures", F.departure_activity(departures, F.ORIGIN_CARRIER_3H, start, end)
    )


@dg.asset(**_daily(
    _FEATURES, "flight_date", "Each aircraft's departure delay, as of its departure (streamed).", io_manager_key=OFFLINE_IO,
    check_specs=[schema_check_spec("aircraft_last_departure", "Feature table schema and ranges.")],
))
def aircraft_last_departure(departures: pd.DataFrame) -> Iterator[dg.Output | dg.AssetCheckResult]:
    yield from _table("aircraft_last_departure", F.aircraft_last_departure(departures))


@dg.asset(**_daily(
    _FEATURES, "event_timestamp", "Carrier late rate and mean delay over the 7 previous days.", io_manager_key=OFFLINE_IO, ins={"departures": _lookback(7)},
    check_specs=[schema_check_spec("carrier_7d_delays", "Feature table schema and ranges.")],
))
def carrier_7d_delays(
    context: dg.AssetExecutionContext, departures: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    days = list(context.partition_keys)
    yield from _table(
        "carrier_7d_delays", F.daily_delay_rates(departures, "carrier", 7, "carrier_7d", days[0], days[-1])
    )


@dg.asset(**_daily(
    _FEATURES, "event_timestamp", "Route late rate and mean delay over the 28 previous days.", io_manager_key=OFFLINE_IO, ins={"departures": _lookback(28)},
    check_specs=[schema_check_spec("route_28d_delays", "Feature table schema and ranges.")],
))
def route_28d_delays(
    context: dg.AssetExecutionContext, departures: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    days = list(context.partition_keys)
    yield from _table(
        "route_28d_delays", F.daily_delay_rates(departures, "route", 28, "route_28d", days[0], days[-1])
    )


@dg.asset(
    group_name=_FEATURES, io_manager_key=OFFLINE_IO, kinds={"pandas", "parquet"},
    check_specs=[schema_check_spec("aircraft_profile", "Feature table schema and ranges.")],
)
def aircraft_profile(raw_planes: pd.DataFrame) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Registered attributes of each aircraft: build year, seats, engines, manufacturer."""
    require_valid("raw_planes", schemas.validate(schemas.PlanesSchema, raw_planes))
    yield from _table("aircraft_profile", F.aircraft_profile(raw_planes, KNOWN_SINCE))
