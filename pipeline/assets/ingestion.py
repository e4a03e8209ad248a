"""Raw tables as the source publishes them, each validated by a blocking Pandera check."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from flight_delay import schemas
from pipeline.checks import check_result, schema_check_spec, validate_raw_flights, validate_raw_weather
from pipeline.partitions import daily_asset
from pipeline.resources import FlightDataSource
from pipeline.step_resources import step_op_tags

GROUP = "ingestion"


def _reference_asset(name: str, table: str, schema: type, description: str) -> dg.AssetsDefinition:
    @dg.asset(
        name=name,
        group_name=GROUP,
        op_tags=step_op_tags(GROUP),
        description=description,
        check_specs=[schema_check_spec(name, f"{schema.__name__}: types, ranges, unique keys.")],
        kinds={"pandas", "parquet"},
    )
    def _asset(source: FlightDataSource) -> Iterator[dg.Output | dg.AssetCheckResult]:
        frame = source.read_table(table)
        yield dg.Output(frame, metadata={"rows": len(frame)})
        yield check_result(name, schemas.validate(schema, frame))

    return _asset


raw_airports = _reference_asset("raw_airports", "airports", schemas.AirportsSchema, "Airports of the FAA database.")
raw_airlines = _reference_asset("raw_airlines", "airlines", schemas.AirlinesSchema, "Airline names by carrier code.")
raw_planes = _reference_asset(
    "raw_planes", "planes", schemas.PlanesSchema, "Aircraft of the FAA registry by tail number."
)


@dg.asset(
    **daily_asset(
        GROUP,
        "year/month/day",
        check_specs=[
            schema_check_spec(
                "raw_flights",
                "Types and ranges, known airports, unique (day, carrier, flight, origin), rows inside the day.",
            )
        ],
    )
)
def raw_flights(
    context: dg.AssetExecutionContext, source: FlightDataSource, raw_airports: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Scheduled departures from EWR, JFK and LGA, one partition per local day."""
    days = list(context.partition_keys)
    frame = source.read_days("flights", days)
    yield dg.Output(frame, metadata={"rows": len(frame), "days": len(days)})
    yield check_result("raw_flights", validate_raw_flights(frame, raw_airports, days))


@dg.asset(
    **daily_asset(
        GROUP,
        "year/month/day",
        check_specs=[schema_check_spec("raw_weather", "Types and ranges, unique (origin, hour), rows inside the day.")],
    )
)
def raw_weather(
    context: dg.AssetExecutionContext, source: FlightDataSource
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Hourly weather observations at the three origin airports, one partition per local day."""
    days = list(context.partition_keys)
    frame = source.read_days("weather", days)
    yield dg.Output(frame, metadata={"rows": len(frame), "days": len(days)})
    yield check_result("raw_weather", validate_raw_weather(frame, days))
