"""Shared fixtures: a tiny slice of the real 2013 data in the source layout, and a data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from flight_delay import data
from tests.support.postgres import history_database, log_database, postgres_server, postgres_url  # noqa: F401
from tests.support.s3 import s3_bucket, s3_env, s3_server  # noqa: F401
from tests.support.source import SLICE_DAYS, slice_days, write_source


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
    monkeypatch.delenv("FLIGHT_DELAY_DATABASE_URL", raising=False)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
