"""Departures: the validated raw flights with UTC timestamps and the label."""

from collections.abc import Iterator

import dagster as dg
import pandas as pd

from flight_delay import feature_tables, schemas
from pipeline.checks import publish_if_valid, require_valid, schema_check_spec, validate_raw_flights
from pipeline.partitions import daily_asset

GROUP = "validated"


@dg.asset(
    **daily_asset(
        GROUP,
        "flight_date",
        check_specs=[schema_check_spec("departures", "DeparturesSchema: unique flights, label only when departed.")],
    )
)
def departures(
    context: dg.AssetExecutionContext, raw_flights: pd.DataFrame, raw_airports: pd.DataFrame
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """Departures with UTC timestamps and the 15-minute label."""
    days = list(context.partition_keys)
    require_valid(f"raw_flights {days[0]}…{days[-1]}", validate_raw_flights(raw_flights, raw_airports, days))
    frame = feature_tables.prepare_departures(raw_flights)
    metadata = {
        "rows": len(frame),
        "cancelled": int(frame["cancelled"].sum()),
        "late_rate": float(frame["is_late"].mean()) if frame["is_late"].notna().any() else float("nan"),
    }
    # The feature tables of later runs read departures without validating them again.
    yield from publish_if_valid("departures", frame, schemas.validate(schemas.DeparturesSchema, frame), metadata)
