"""Pandera schemas for the raw inputs, the feature tables and the training set.

Raw schemas say what the source must look like; a day that breaks them (wrong types, impossible
values, unknown airports, duplicate flights, rows outside the day) is blocked before anything is
built from it. ``validate`` returns the failure cases instead of raising, so callers can attach
them to an asset check and decide.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors
from pandera.typing import Series

from flight_delay.data import local_day
from flight_delay.feature_tables import (
    AIRCRAFT_LAST_DEPARTURE_COLUMNS,
    AIRCRAFT_PROFILE_TEXT,
    CARRIER_7D,
    MAX_PLAUSIBLE_WIND_MPH,
    ORIGIN_1H,
    ORIGIN_CARRIER_3H,
    ROUTE_28D,
    WEATHER_COLUMNS,
    activity_columns,
)
from flight_delay.flights import LOCAL_TZ

NYC_ORIGINS = ("EWR", "JFK", "LGA")


class RawFlightsSchema(pa.DataFrameModel):
    """One scheduled departure from a New York airport, as the source publishes it."""

    year: Series[int] = pa.Field(ge=2000, le=2100)
    month: Series[int] = pa.Field(ge=1, le=12)
    day: Series[int] = pa.Field(ge=1, le=31)
    dep_time: Series[float] = pa.Field(nullable=True, ge=0, le=2400)
    sched_dep_time: Series[int] = pa.Field(ge=0, le=2359)
    dep_delay: Series[float] = pa.Field(nullable=True, ge=-180, le=48 * 60)
    arr_time: Series[float] = pa.Field(nullable=True, ge=0, le=2400)
    sched_arr_time: Series[int] = pa.Field(ge=0, le=2359)
    arr_delay: Series[float] = pa.Field(nullable=True)
    carrier: Series[str] = pa.Field(str_matches=r"^[A-Z0-9]{2}$")
    flight: Series[int] = pa.Field(ge=1)
    tailnum: Series[str] = pa.Field(nullable=True)
    origin: Series[str] = pa.Field(isin=list(NYC_ORIGINS))
    dest: Series[str] = pa.Field(str_matches=r"^[A-Z0-9]{3}$")
    air_time: Series[float] = pa.Field(nullable=True, ge=0)
    distance: Series[float] = pa.Field(gt=0, le=10_000)
    hour: Series[int] = pa.Field(ge=0, le=23)
    minute: Series[int] = pa.Field(ge=0, le=59)
    time_hour: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})

    class Config:
        strict = True
        coerce = False
        unique = ["year", "month", "day", "carrier", "flight", "origin"]

    @pa.dataframe_check
    @classmethod
    def scheduled_hour_matches_time_hour(cls, df: pd.DataFrame) -> Series[bool]:
        """``time_hour`` is the scheduled hour: same local date and hour as the row says."""
        local = df["time_hour"].dt.tz_convert(LOCAL_TZ)
        return (
            (local.dt.year == df["year"])
            & (local.dt.month == df["month"])
            & (local.dt.day == df["day"])
            & (local.dt.hour == df["hour"])
        )


class RawWeatherSchema(pa.DataFrameModel):
    """One hourly observation at a New York airport."""

    origin: Series[str] = pa.Field(isin=list(NYC_ORIGINS))
    year: Series[int] = pa.Field(ge=2000, le=2100)
    month: Series[int] = pa.Field(ge=1, le=12)
    day: Series[int] = pa.Field(ge=1, le=31)
    hour: Series[int] = pa.Field(ge=0, le=23)
    temp: Series[float] = pa.Field(nullable=True, ge=-60, le=130)
    dewp: Series[float] = pa.Field(nullable=True, ge=-80, le=100)
    humid: Series[float] = pa.Field(nullable=True, ge=0, le=100)
    wind_dir: Series[float] = pa.Field(nullable=True, ge=0, le=360)
    # The source has a known 1048 mph reading; the raw schema admits it and the feature table
    # drops it (see flight_delay.features.origin_hourly_weather).
    wind_speed: Series[float] = pa.Field(nullable=True, ge=0)
    wind_gust: Series[float] = pa.Field(nullable=True, ge=0)
    precip: Series[float] = pa.Field(nullable=True, ge=0, le=10)
    pressure: Series[float] = pa.Field(nullable=True, ge=900, le=1100)
    visib: Series[float] = pa.Field(nullable=True, ge=0, le=100)
    time_hour: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})

    class Config:
        strict = True
        unique = ["origin", "time_hour"]


class PlanesSchema(pa.DataFrameModel):
    tailnum: Series[str] = pa.Field(unique=True)
    year: Series[float] = pa.Field(nullable=True, ge=1900, le=2100)
    type: Series[str]
    manufacturer: Series[str]
    model: Series[str]
    engines: Series[int] = pa.Field(ge=0, le=8)
    seats: Series[int] = pa.Field(ge=1, le=1000)
    speed: Series[float] = pa.Field(nullable=True, ge=0)
    engine: Series[str]

    class Config:
        strict = True


class AirportsSchema(pa.DataFrameModel):
    faa: Series[str] = pa.Field(unique=True, str_matches=r"^[A-Z0-9]{3,4}$")
    name: Series[str]
    lat: Series[float] = pa.Field(ge=-90, le=90)
    lon: Series[float] = pa.Field(ge=-180, le=180)
    alt: Series[int]
    tz: Series[float] = pa.Field(nullable=True)
    dst: Series[str] = pa.Field(nullable=True)
    tzone: Series[str] = pa.Field(nullable=True)

    class Config:
        strict = True


class AirlinesSchema(pa.DataFrameModel):
    carrier: Series[str] = pa.Field(unique=True, str_matches=r"^[A-Z0-9]{2}$")
    name: Series[str]

    class Config:
        strict = True


class DeparturesSchema(pa.DataFrameModel):
    """Departures prepared for feature computation: UTC timestamps and the label."""

    flight_id: Series[str] = pa.Field(unique=True)
    flight_date: Series[str] = pa.Field(str_matches=r"^\d{4}-\d{2}-\d{2}$")
    carrier: Series[str]
    flight: Series[int]
    tailnum: Series[str]
    origin: Series[str] = pa.Field(isin=list(NYC_ORIGINS))
    dest: Series[str]
    route: Series[str]
    distance: Series[float] = pa.Field(gt=0)
    sched_dep_ts: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    actual_dep_ts: Series[pd.DatetimeTZDtype] = pa.Field(nullable=True, dtype_kwargs={"unit": "ns", "tz": "UTC"})
    dep_delay: Series[float] = pa.Field(nullable=True)
    cancelled: Series[bool]
    is_late: Series[float] = pa.Field(nullable=True, isin=[0.0, 1.0])

    class Config:
        strict = True

    @pa.dataframe_check
    @classmethod
    def label_only_when_departed(cls, df: pd.DataFrame) -> Series[bool]:
        return df["is_late"].isna() == df["cancelled"]


def feature_table_schema(
    name: str,
    keys: tuple[str, ...],
    rates: tuple[str, ...] = (),
    counts: tuple[str, ...] = (),
    values: tuple[str, ...] = (),
    ranges: dict[str, tuple[float, float]] | None = None,
    texts: tuple[str, ...] = (),
) -> pa.DataFrameSchema:
    """Schema of one feature table: string keys, a UTC ``event_timestamp``, float features with
    rates in [0, 1], counts ≥ 0, and optional explicit ranges."""
    ranges = ranges or {}
    columns: dict[str, pa.Column] = {k: pa.Column(str, nullable=False) for k in keys}
    columns["event_timestamp"] = pa.Column(pd.DatetimeTZDtype("ns", "UTC"), nullable=False)
    for c in rates:
        columns[c] = pa.Column(float, pa.Check.in_range(0, 1), nullable=True)
    for c in counts:
        columns[c] = pa.Column(float, pa.Check.ge(0), nullable=True)
    for c in values:
        lo_hi = ranges.get(c)
        checks = [pa.Check.in_range(*lo_hi)] if lo_hi else []
        columns[c] = pa.Column(float, checks, nullable=True)
    for c in texts:
        columns[c] = pa.Column(str, nullable=True)
    return pa.DataFrameSchema(columns, name=name, strict=True, unique=[*keys, "event_timestamp"])


@dataclass(frozen=True)
class ValidationResult:
    """Outcome of one validation: the failure cases (empty when it passed)."""

    schema: str
    rows: int
    failure_cases: pd.DataFrame

    @property
    def passed(self) -> bool:
        return self.failure_cases.empty

    def summary(self, limit: int = 20) -> str:
        """The first failure cases as a Markdown table, for asset metadata and error messages."""
        if self.passed:
            return f"{self.schema}: {self.rows} rows valid"
        cases = self.failure_cases
        cols = [c for c in ("column", "check", "failure_case", "index") if c in cases.columns]
        return cases[cols].head(limit).astype(str).to_markdown(index=False)


def validate(
    schema: type[pa.DataFrameModel] | pa.DataFrameSchema,
    frame: pd.DataFrame,
    extra_checks: list[pa.Check] | None = None,
) -> ValidationResult:
    """Run ``schema`` lazily over ``frame`` and collect every failure case."""
    compiled = schema.to_schema() if isinstance(schema, type) else schema
    if extra_checks:
        compiled = copy.deepcopy(compiled)
        compiled.checks = [*(compiled.checks or []), *extra_checks]
    try:
        # Failure cases name rows by position; a duplicated index label would break their report.
        compiled.validate(frame.reset_index(drop=True), lazy=True)
    except SchemaErrors as err:
        return ValidationResult(compiled.name or "schema", len(frame), err.failure_cases)
    return ValidationResult(compiled.name or "schema", len(frame), pd.DataFrame())


def in_days_check(column_days: str, days: list[str], describe: str) -> pa.Check:
    """Rows must belong to one of ``days`` (``YYYY-MM-DD``): nothing outside the partition."""
    allowed = set(days)

    def _check(df: pd.DataFrame) -> pd.Series:
        if column_days == "year/month/day":
            key = local_day(df)
        else:
            key = df[column_days].astype(str)
        return key.isin(allowed)

    return pa.Check(_check, name="within_partition", error=f"{describe} outside partition days")


def known_codes_check(column: str, codes: set[str], describe: str) -> pa.Check:
    """Every value of ``column`` is one of ``codes`` (known airports, carriers...)."""

    def _check(df: pd.DataFrame) -> pd.Series:
        return df[column].isin(codes)

    return pa.Check(_check, name=f"known_{column}", error=f"unknown {describe} in {column}")


def _window_schema(name: str, keys: tuple[str, ...], columns: list[str]) -> pa.DataFrameSchema:
    """A departure-window table: rates in [0, 1], mean delays any value, every other column a count."""
    rates = tuple(c for c in columns if c.endswith("_late_rate"))
    values = tuple(c for c in columns if c.endswith("_mean_delay"))
    counts = tuple(c for c in columns if c not in rates and c not in values)
    return feature_table_schema(name, keys, rates=rates, counts=counts, values=values)


FEATURE_TABLE_SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "origin_hourly_weather": feature_table_schema(
        "OriginHourlyWeather",
        ("origin",),
        values=WEATHER_COLUMNS,
        ranges={
            "temp": (-60, 130),
            "humid": (0, 100),
            "wind_dir": (0, 360),
            "wind_speed": (0, MAX_PLAUSIBLE_WIND_MPH),
            "wind_gust": (0, MAX_PLAUSIBLE_WIND_MPH),
            "precip": (0, 10),
            "pressure": (900, 1100),
            "visib": (0, 100),
        },
    ),
    "origin_1h_departures": _window_schema("Origin1hDepartures", ORIGIN_1H.keys, activity_columns(ORIGIN_1H)),
    "origin_carrier_3h_departures": _window_schema(
        "OriginCarrier3hDepartures", ORIGIN_CARRIER_3H.keys, activity_columns(ORIGIN_CARRIER_3H)
    ),
    "aircraft_last_departure": feature_table_schema(
        "AircraftLastDeparture",
        ("tailnum",),
        values=AIRCRAFT_LAST_DEPARTURE_COLUMNS,
        texts=("flight_date",),
    ),
    "aircraft_profile": feature_table_schema(
        "AircraftProfile",
        ("tailnum",),
        counts=("plane_seats", "plane_engines"),
        values=("plane_year",),
        ranges={"plane_year": (1900, 2100)},
        texts=AIRCRAFT_PROFILE_TEXT,
    ),
    "carrier_7d_delays": _window_schema("Carrier7dDelays", (CARRIER_7D.key,), CARRIER_7D.columns),
    "route_28d_delays": _window_schema("Route28dDelays", (ROUTE_28D.key,), ROUTE_28D.columns),
}


def training_set_schema(feature_columns: list[str]) -> pa.DataFrameSchema:
    """The training set: one row per flight and prediction time, a 0/1 label, numeric features
    as floats and the split it belongs to."""
    columns = {
        "flight_id": pa.Column(str, unique=True),
        "event_timestamp": pa.Column(pd.DatetimeTZDtype("ns", "UTC")),
        "sched_dep_ts": pa.Column(pd.DatetimeTZDtype("ns", "UTC")),
        "is_late": pa.Column(int, pa.Check.isin([0, 1])),
        "split": pa.Column(str, pa.Check.isin(["train", "evaluation"])),
    }
    for c in feature_columns:
        columns.setdefault(c, pa.Column(nullable=True, required=True))
    return pa.DataFrameSchema(
        columns,
        checks=[
            pa.Check(
                lambda df: df["event_timestamp"] < df["sched_dep_ts"],
                name="predicted_before_departure",
                error="prediction time must come before scheduled departure",
            )
        ],
        name="TrainingSet",
    )
