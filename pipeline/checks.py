"""Pandera validation as Dagster asset checks.

Every validated asset declares a blocking ``schema`` check and yields its result with the
failure cases attached. A blocking check only stops downstream steps of the *same* run, so the
assets that read raw data validate it again (``require_valid``) and refuse to build from a day
that fails, whatever run produced it.
"""

import dagster as dg
import pandas as pd

from flight_delay import schemas

SCHEMA_CHECK = "schema"


def schema_check_spec(asset: str, description: str) -> dg.AssetCheckSpec:
    return dg.AssetCheckSpec(SCHEMA_CHECK, asset=asset, blocking=True, description=description)


def check_result(asset: str, result: schemas.ValidationResult) -> dg.AssetCheckResult:
    """The asset check result of a validation, failure cases in its metadata."""
    metadata: dict[str, dg.MetadataValue] = {
        "rows": dg.MetadataValue.int(result.rows),
        "failures": dg.MetadataValue.int(len(result.failure_cases)),
    }
    if not result.passed:
        counts = result.failure_cases.groupby(["column", "check"], dropna=False).size()
        metadata["failures_by_check"] = dg.MetadataValue.md(
            counts.rename("failures").reset_index().astype(str).to_markdown(index=False)
        )
        metadata["failure_cases"] = dg.MetadataValue.md(result.summary(limit=50))
    return dg.AssetCheckResult(
        asset_key=asset,
        check_name=SCHEMA_CHECK,
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata=metadata,
    )


def require_valid(what: str, result: schemas.ValidationResult) -> None:
    """Raise a Dagster ``Failure`` naming what was expected when ``result`` has failures."""
    if result.passed:
        return
    raise dg.Failure(
        description=f"{what} failed validation ({len(result.failure_cases)} failure cases); "
        "nothing is built from it. Fix the source data and re-materialize the partition.",
        metadata={"failure_cases": dg.MetadataValue.md(result.summary(limit=50))},
    )


def validate_raw_flights(frame: pd.DataFrame, airports: pd.DataFrame, days: list[str]) -> schemas.ValidationResult:
    """Raw flights against their schema, the airport codes and the partition's days."""
    return schemas.validate(
        schemas.RawFlightsSchema,
        frame,
        [
            schemas.known_codes_check("dest", set(airports["faa"].astype(str)), "airport code"),
            schemas.in_days_check("year/month/day", days, "flights"),
        ],
    )


def validate_raw_weather(frame: pd.DataFrame, days: list[str]) -> schemas.ValidationResult:
    return schemas.validate(
        schemas.RawWeatherSchema, frame, [schemas.in_days_check("year/month/day", days, "observations")]
    )
