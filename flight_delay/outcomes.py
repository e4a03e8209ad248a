"""What the loop's sensors read from the service's prediction log, read-only: the current data
time and the labelled flights scored by both champion and shadow challenger.

:func:`paired_outcomes` is the log's own reader with the outcome as 0/1. A log from before
shadow scoring has no paired outcomes.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from flight_delay import log_database as db
from flight_delay import log_reading
from flight_delay.prediction_log import data_day

PAIRED_COLUMNS = ("request_id", "prediction_time", "received_at", "late", "champion_p", "challenger_p")


def latest_data_time(path: str | Path) -> datetime | None:
    """The latest data time in the log: the largest prediction time (``predicted_at`` for rows
    logged without one), as a UTC datetime; None for a missing or empty log. ``path`` may be a
    PostgreSQL URL."""
    with log_reading.reading(db.location(path)) as conn:
        if conn is None:
            return None
        if "prediction_time" not in db.columns(conn, "predictions"):  # a log not yet migrated
            (value,) = conn.execute("SELECT MAX(predicted_at) FROM predictions").fetchone()
        else:
            # The latest data day from its index, then the latest time within it: two index
            # searches, where the largest COALESCE(...) alone reads the whole table. The day is a
            # non-decreasing function of the time, so the latest time has the latest day.
            (day,) = conn.execute(f"SELECT MAX({data_day()}) FROM predictions").fetchone()
            latest = f"SELECT MAX(COALESCE(prediction_time, predicted_at)) FROM predictions WHERE {data_day()} >= ?"
            (value,) = conn.execute(db.sql(conn, latest), (day,)).fetchone()
    return None if value is None else datetime.fromtimestamp(float(value), tz=UTC)


def paired_outcomes(path: str | Path, champion: str, challenger: str, since: float | None = None) -> pd.DataFrame:
    """Labelled flights the champion answered and the shadow challenger scored too, in the order
    their feedback arrived: request_id, prediction_time, received_at (UTC timestamps), late (0/1),
    champion_p, challenger_p. ``since`` (unix seconds): feedback received after it only. The log's
    own reader (:func:`flight_delay.log_reading.paired_outcomes`), with ``late`` as 0/1."""
    frame = log_reading.paired_outcomes(db.location(path), champion, challenger, since=since)
    frame["late"] = frame["late"].astype("int64")
    return frame  # already in arrival order (received_at, then the order they were written)
