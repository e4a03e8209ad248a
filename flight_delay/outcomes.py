"""What the loop's sensors read from the service's prediction log, read-only: the current data
time and the labelled flights scored by both champion and shadow challenger.

:func:`paired_outcomes` uses ``flight_delay.prediction_log.paired_outcomes`` when that module has
it (the service's shadow scoring adds it); until then it reads the columns the shadow scoring
writes (``shadow_model_version``, ``shadow_probability`` on ``predictions``) joined with
``feedback`` on ``request_id`` itself. A log without those columns has no paired outcomes.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from flight_delay import prediction_log

PAIRED_COLUMNS = ("request_id", "prediction_time", "received_at", "late", "champion_p", "challenger_p")


@contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        yield conn
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def latest_data_time(path: str | Path) -> datetime | None:
    """The latest data time in the log: the largest prediction time (``predicted_at`` for rows
    logged without one), as a UTC datetime; None for a missing or empty log."""
    if not Path(path).exists():
        return None
    with _read_only(Path(path)) as conn:
        have = _columns(conn, "predictions")
        if not have:
            raise ValueError(f"{path} is not a prediction log: it has no table predictions")
        when = "COALESCE(prediction_time, predicted_at)" if "prediction_time" in have else "predicted_at"
        (value,) = conn.execute(f"SELECT MAX({when}) FROM predictions").fetchone()
    return None if value is None else datetime.fromtimestamp(float(value), tz=UTC)


def _empty() -> pd.DataFrame:
    return _typed(pd.DataFrame({c: [] for c in PAIRED_COLUMNS}))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for column in ("prediction_time", "received_at"):
        frame[column] = pd.to_datetime(frame[column].astype("float64"), unit="s", utc=True)
    frame["late"] = frame["late"].astype("int64")
    for column in ("champion_p", "challenger_p"):
        frame[column] = frame[column].astype("float64")
    return frame[list(PAIRED_COLUMNS)].reset_index(drop=True)


def _own_paired_outcomes(path: Path, champion: str, challenger: str, since: float | None) -> pd.DataFrame:
    if not path.exists():
        return _empty()
    with _read_only(path) as conn:
        if not {"shadow_model_version", "shadow_probability"} <= _columns(conn, "predictions"):
            return _empty()
        rows = conn.execute(
            """
SELECT p.request_id, COALESCE(p.prediction_time, p.predicted_at), f.received_at, f.late, p.probability,
       p.shadow_probability
FROM predictions AS p JOIN feedback AS f ON f.request_id = p.request_id
WHERE p.model_version = ? AND p.shadow_model_version = ? AND p.shadow_probability IS NOT NULL
  AND f.received_at > ?
ORDER BY f.received_at, p.request_id
""",
            (champion, challenger, float("-inf") if since is None else since),
        ).fetchall()
    return _typed(pd.DataFrame.from_records(rows, columns=list(PAIRED_COLUMNS)))


def paired_outcomes(path: str | Path, champion: str, challenger: str, since: float | None = None) -> pd.DataFrame:
    """Labelled flights the champion answered and the shadow challenger scored too, in the order
    their feedback arrived: request_id, prediction_time, received_at (UTC timestamps), late (0/1),
    champion_p, challenger_p. ``since`` (unix seconds): feedback received after it only."""
    reader = getattr(prediction_log, "paired_outcomes", None)
    if reader is not None:
        frame = reader(Path(path), champion, challenger, since=since)
        return frame.sort_values(["received_at", "request_id"], kind="stable").reset_index(drop=True)
    return _own_paired_outcomes(Path(path), champion, challenger, since)
