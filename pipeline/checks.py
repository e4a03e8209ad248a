"""Pandera validation as Dagster asset checks.

Every validated asset declares a blocking ``schema`` check and yields its result with the
failure cases attached. A blocking check only stops downstream steps of the *same* run, so the
assets that read raw data validate it again (``require_valid``) and refuse to build from a day
that fails, whatever run produced it; and the assets others read (departures, the feature tables
Feast reads) are published only once their check has passed (``publish_if_valid``).
"""

from collections.abc import Iterator
from typing import Any

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


def _failure(what: str, result: schemas.ValidationResult, consequence: str) -> dg.Failure:
    return dg.Failure(
        description=f"{what} failed validation ({len(result.failure_cases)} failure cases); {consequence}. "
        "Fix the source data and re-materialize the partition.",
        metadata={"failure_cases": dg.MetadataValue.md(result.summary(limit=50))},
    )


def require_valid(what: str, result: schemas.ValidationResult) -> None:
    """Raise a Dagster ``Failure`` naming what was expected when ``result`` has failures."""
    if not result.passed:
        raise _failure(what, result, "nothing is built from it")


def publish_if_valid(
    asset: str, frame: pd.DataFrame, result: schemas.ValidationResult, metadata: dict[str, Any]
) -> Iterator[dg.Output | dg.AssetCheckResult]:
    """The asset's ``Output`` and its ``schema`` check result, the ``Output`` only if it passed.

    The IO manager writes an ``Output`` the moment it is yielded, where readers (Feast, later runs)
    find it, so the check comes first: a failing frame yields its failed check (failure cases
    attached) and fails the step, and nothing is written; a passing one is written, then its
    check result is recorded against that materialization.
    """
    check = check_result(asset, result)
    if not result.passed:
        yield check
        raise _failure(
            f"{asset}: its blocking check '{SCHEMA_CHECK}' ({result.schema})",
            result,
            f"expected every row to pass it; {asset} was not written and keeps what it had",
        )
    yield dg.Output(frame, metadata=metadata)
    yield check


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
