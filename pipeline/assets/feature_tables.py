"""The point-in-time feature tables, written where Feast's offline store reads them."""

import warnings
from collections.abc import Iterator

import dagster as dg
import pandas as pd

from flight_delay import feature_tables as tables
from flight_delay import schemas
from pipeline.checks import publish_if_valid, require_valid, schema_check_spec, validate_raw_weather
from pipeline.partitions import daily_asset
from pipeline.step_resources import step_op_tags

GROUP = "feature_tables"
OFFLINE_IO = "offline_io_manager"
KNOWN_SINCE = pd.Timestamp("2012-12-31", tz="UTC")  # the registry extract predates the year
FeatureTable = Iterator[dg.Output | dg.AssetCheckResult]


def _feature_table_asset(name: str, partition_column: str | None, **kwargs) -> dict:
    """Definition arguments of a feature table: offline IO, its schema as a blocking check, and
    for a daily table the partitions."""
    check = [schema_check_spec(name, "Feature table schema and ranges.")]
    if partition_column is None:
        return dict(
            group_name=GROUP,
            op_tags=step_op_tags(GROUP),
            io_manager_key=OFFLINE_IO,
            kinds={"pandas", "parquet"},
            check_specs=check,
            **kwargs,
        )
    return daily_asset(GROUP, partition_column, io_manager_key=OFFLINE_IO, check_specs=check, **kwargs)


# The first days of the year have no earlier days to look back on, by construction; the parameter
# that says so is flagged as beta at every use, which says nothing to someone running the pipeline.
warnings.filterwarnings(
    "ignore",
    message=r"Parameter `allow_nonexistent_upstream_partitions` .* is currently in beta",
    category=dg.BetaWarning,
)


def _lookback(spec: tables.ActivityWindow | tables.DelayRateWindow) -> dg.AssetIn:
    """The same days and the ``spec.lookback_days`` before them (absent before the first
    partition): what each day of the table is computed from, alone or in a range."""
    return dg.AssetIn(
        "departures",
        partition_mapping=dg.TimeWindowPartitionMapping(
            start_offset=-spec.lookback_days, end_offset=0, allow_nonexistent_upstream_partitions=True
        ),
    )


def _window(context: dg.AssetExecutionContext) -> tuple[pd.Timestamp, pd.Timestamp]:
    window = context.partition_time_window
    return pd.Timestamp(window.start).tz_convert("UTC"), pd.Timestamp(window.end).tz_convert("UTC")


def _table(name: str, frame: pd.DataFrame) -> FeatureTable:
    """The table, written where Feast reads it only once its schema check has passed."""
    result = schemas.validate(schemas.FEATURE_TABLE_SCHEMAS[name], frame)
    metadata = {"rows": len(frame), "columns": dg.MetadataValue.json(list(frame.columns))}
    yield from publish_if_valid(name, frame, result, metadata)


@dg.asset(**_feature_table_asset("origin_hourly_weather", "event_timestamp"))
def origin_hourly_weather(context: dg.AssetExecutionContext, raw_weather: pd.DataFrame) -> FeatureTable:
    """Hourly weather per origin airport, implausible winds removed."""
    days = list(context.partition_keys)
    require_valid(f"raw_weather {days[0]}…{days[-1]}", validate_raw_weather(raw_weather, days))
    yield from _table("origin_hourly_weather", tables.origin_hourly_weather(raw_weather))


@dg.asset(
    **_feature_table_asset("origin_1h_departures", "event_timestamp", ins={"departures": _lookback(tables.ORIGIN_1H)})
)
def origin_1h_departures(context: dg.AssetExecutionContext, departures: pd.DataFrame) -> FeatureTable:
    """Origin activity over the last hour, every 5 minutes (streamed)."""
    start, end = _window(context)
    yield from _table("origin_1h_departures", tables.departure_activity(departures, tables.ORIGIN_1H, start, end))


@dg.asset(
    **_feature_table_asset(
        "origin_carrier_3h_departures", "event_timestamp", ins={"departures": _lookback(tables.ORIGIN_CARRIER_3H)}
    )
)
def origin_carrier_3h_departures(context: dg.AssetExecutionContext, departures: pd.DataFrame) -> FeatureTable:
    """Carrier activity per origin over 3 hours, every 15 minutes (streamed)."""
    start, end = _window(context)
    frame = tables.departure_activity(departures, tables.ORIGIN_CARRIER_3H, start, end)
    yield from _table("origin_carrier_3h_departures", frame)


@dg.asset(**_feature_table_asset("aircraft_last_departure", "flight_date"))
def aircraft_last_departure(departures: pd.DataFrame) -> FeatureTable:
    """Each aircraft's departure delay, as of its departure (streamed)."""
    yield from _table("aircraft_last_departure", tables.aircraft_last_departure(departures))


@dg.asset(
    **_feature_table_asset("carrier_7d_delays", "event_timestamp", ins={"departures": _lookback(tables.CARRIER_7D)})
)
def carrier_7d_delays(context: dg.AssetExecutionContext, departures: pd.DataFrame) -> FeatureTable:
    """Carrier late rate and mean delay over the 7 previous days."""
    days = list(context.partition_keys)
    yield from _table("carrier_7d_delays", tables.daily_delay_rates(departures, tables.CARRIER_7D, days[0], days[-1]))


@dg.asset(
    **_feature_table_asset("route_28d_delays", "event_timestamp", ins={"departures": _lookback(tables.ROUTE_28D)})
)
def route_28d_delays(context: dg.AssetExecutionContext, departures: pd.DataFrame) -> FeatureTable:
    """Route late rate and mean delay over the 28 previous days."""
    days = list(context.partition_keys)
    yield from _table("route_28d_delays", tables.daily_delay_rates(departures, tables.ROUTE_28D, days[0], days[-1]))


@dg.asset(**_feature_table_asset("aircraft_profile", None))
def aircraft_profile(raw_planes: pd.DataFrame) -> FeatureTable:
    """Registered attributes of each aircraft: build year, seats, engines, manufacturer."""
    require_valid("raw_planes", schemas.validate(schemas.PlanesSchema, raw_planes))
    yield from _table("aircraft_profile", tables.aircraft_profile(raw_planes, KNOWN_SINCE))
