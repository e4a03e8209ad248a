"""The raw schemas accept the real data and reject each kind of corruption."""

import pandas as pd
import pytest

from flight_delay import data, schemas
from pipeline.checks import validate_raw_flights, validate_raw_weather

DAY = ["2013-01-01"]


@pytest.fixture(scope="module")
def airports() -> pd.DataFrame:
    return data.read_table("airports")


@pytest.fixture()
def day_flights(real_flights) -> pd.DataFrame:
    return real_flights[data.local_day(real_flights) == DAY[0]].reset_index(drop=True)


def test_real_day_is_valid(day_flights, airports):
    assert validate_raw_flights(day_flights, airports, DAY).passed


def test_caribbean_destinations_are_known_airports(airports):
    assert {"SJU", "BQN", "STT", "PSE"} <= set(airports["faa"])


def _failed_checks(result: schemas.ValidationResult) -> set[str]:
    assert not result.passed
    return set(result.failure_cases["check"].astype(str))


def test_negative_distance_fails(day_flights, airports):
    day_flights.loc[3, "distance"] = -200.0
    cases = validate_raw_flights(day_flights, airports, DAY).failure_cases
    assert (cases["column"] == "distance").any()


def test_unknown_airport_fails(day_flights, airports):
    day_flights.loc[5, "dest"] = "ZZZ"
    assert "unknown airport code in dest" in _failed_checks(validate_raw_flights(day_flights, airports, DAY))


def test_unknown_origin_fails(day_flights, airports):
    day_flights.loc[5, "origin"] = "BOS"
    cases = validate_raw_flights(day_flights, airports, DAY).failure_cases
    assert (cases["column"] == "origin").any()


def test_duplicate_flight_fails(day_flights, airports):
    doubled = pd.concat([day_flights, day_flights.iloc[[7]]], ignore_index=True)
    assert "multiple_fields_uniqueness" in _failed_checks(validate_raw_flights(doubled, airports, DAY))


def test_wrong_type_fails(day_flights, airports):
    day_flights["dep_delay"] = day_flights["dep_delay"].astype(str)
    cases = validate_raw_flights(day_flights, airports, DAY).failure_cases
    assert (cases["column"] == "dep_delay").any()


def test_rows_outside_the_partition_fail(day_flights, airports):
    assert "flights outside partition days" in _failed_checks(
        validate_raw_flights(day_flights, airports, ["2013-01-02"])
    )


def test_timestamp_inconsistent_with_the_day_fails(day_flights, airports):
    day_flights.loc[0, "time_hour"] = day_flights.loc[0, "time_hour"] + pd.Timedelta(days=3)
    assert "scheduled_hour_matches_time_hour" in _failed_checks(validate_raw_flights(day_flights, airports, DAY))


def test_unexpected_column_fails(day_flights, airports):
    day_flights["surprise"] = 1
    assert not validate_raw_flights(day_flights, airports, DAY).passed


def test_weather_humidity_out_of_range_fails(real_weather):
    weather = real_weather[data.local_day(real_weather) == DAY[0]].reset_index(drop=True)
    assert validate_raw_weather(weather, DAY).passed
    weather.loc[2, "humid"] = 140.0
    cases = validate_raw_weather(weather, DAY).failure_cases
    assert (cases["column"] == "humid").any()


def test_failure_summary_names_column_and_check(day_flights, airports):
    day_flights.loc[3, "distance"] = -200.0
    summary = validate_raw_flights(day_flights, airports, DAY).summary()
    assert "distance" in summary and "greater_than" in summary
