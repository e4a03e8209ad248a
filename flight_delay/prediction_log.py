"""The prediction log as data: its tables and its reader.

The service writes every prediction and every feedback record to a SQLite database
(``serving.log_writer``); the pipeline reads it, read-only, with :func:`read_log`. Both take the
tables from here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

_SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    predicted_at REAL NOT NULL,
    flight_key TEXT NOT NULL,
    model_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    probability REAL NOT NULL,
    features TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS predictions_by_flight ON predictions (flight_key, predicted_at);
CREATE TABLE IF NOT EXISTS feedback (
    request_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    flight_key TEXT NOT NULL,
    departure_delay_minutes REAL NOT NULL,
    late INTEGER NOT NULL
);
"""


BUSY_TIMEOUT_SECONDS = 30.0


def open_for_writing(path: Path, timeout: float = BUSY_TIMEOUT_SECONDS) -> sqlite3.Connection:
    """A connection to the log at ``path`` (created with its tables if need be) for a writer:
    WAL, so readers never block it, and ``synchronous=FULL``, so a commit is on disk.

    Several workers open the same log when a service starts. Switching a new database to WAL
    needs it to itself, and SQLite answers "database is locked" at once, without waiting for the
    busy timeout, when another connection is creating the tables at that moment: the switch and
    the schema are retried until ``timeout``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)


# What ``read_log`` returns besides one column per logged feature, in this order: the prediction,
# then the latest feedback on it (all missing when none came).
PREDICTION_COLUMNS = ("request_id", "predicted_at", "flight_key", "model_version", "variant", "probability")
FEEDBACK_COLUMNS = ("departure_delay_minutes", "late", "feedback_at")
_REQUIRED = {
    "predictions": {"request_id", "predicted_at", "flight_key", "model_version", "variant", "probability", "features"},
    "feedback": {"request_id", "received_at", "departure_delay_minutes", "late"},
}
# One row per prediction; the latest feedback per request id (last written on a tie).
_READ = """
SELECT p.request_id, p.predicted_at, p.flight_key, p.model_version, p.variant, p.probability, p.features,
       f.departure_delay_minutes, f.late, f.received_at
FROM predictions AS p
LEFT JOIN (
    SELECT request_id, departure_delay_minutes, late, received_at,
           ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY received_at DESC, rowid DESC) AS n
    FROM feedback
) AS f ON f.request_id = p.request_id AND f.n = 1
WHERE ? IS NULL OR p.predicted_at >= ?
ORDER BY p.predicted_at, p.request_id
"""


def _check_tables(conn: sqlite3.Connection, path: Path) -> None:
    expected = "; ".join(f"{t}({', '.join(sorted(c))})" for t, c in _REQUIRED.items())
    for table, columns in _REQUIRED.items():
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        missing = sorted(columns - have)
        if missing:
            what = f"it has no table {table}" if not have else f"its table {table} lacks {', '.join(missing)}"
            raise ValueError(f"{path} is not a prediction log: {what}; expected the tables {expected}")


def read_log(path: Path, since: float | None = None) -> pd.DataFrame:
    """The predictions in the log at ``path``, each with its latest feedback, as a DataFrame.

    One row per prediction, oldest first: ``request_id``, ``predicted_at`` (UTC timestamp),
    ``flight_key``, ``model_version``, ``variant``, ``probability``, one column per logged feature
    (missing values as NaN, or None in text columns; a feature named like another column gets a
    ``feature_`` prefix), then ``departure_delay_minutes``, ``late`` (nullable boolean) and
    ``feedback_at`` (UTC timestamp), all missing for a prediction without feedback. ``since``
    (unix seconds) keeps predictions made at or after it.

    The database is opened read-only: in WAL mode the reader and the service's writer do not block
    each other (SQLite may create the ``-wal``/``-shm`` side files if no writer holds them open). A
    missing file gives an empty frame (the service may never have run); a file that is not a
    prediction log raises ``ValueError``.
    """
    import pandas as pd

    path = Path(path)
    base = [*PREDICTION_COLUMNS, *FEEDBACK_COLUMNS]
    if not path.exists():
        return _typed(pd.DataFrame({c: [] for c in base}), [])
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: cannot open it read-only as a SQLite database ({exc})") from exc
    try:
        try:
            _check_tables(conn, path)
            rows = conn.execute(_READ, (since, since)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"{path} is not a readable prediction log: expected a SQLite database with "
                f"tables predictions and feedback ({exc})"
            ) from exc
    finally:
        conn.close()
    frame = pd.DataFrame.from_records(
        rows, columns=[*PREDICTION_COLUMNS, "features", "departure_delay_minutes", "late", "feedback_at"]
    )
    records = []
    for request_id, text in zip(frame["request_id"], frame.pop("features")):
        try:
            record = json.loads(text)
        except (TypeError, ValueError):
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: the features of prediction {request_id} are not a JSON object: {text!r:.200}")
        records.append(record)
    features = pd.DataFrame(records, index=frame.index) if records else pd.DataFrame(index=frame.index)
    features = features.rename(columns={c: f"feature_{c}" for c in features.columns if c in base})
    names = [str(c) for c in features.columns]
    frame = pd.concat([frame[list(PREDICTION_COLUMNS)], features, frame[list(FEEDBACK_COLUMNS)]], axis=1)
    return _typed(frame, names)


def _typed(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    import pandas as pd

    frame["request_id"] = frame["request_id"].astype(object)
    for column in ("flight_key", "model_version", "variant"):
        frame[column] = frame[column].astype(object)
    frame["probability"] = frame["probability"].astype("float64")
    frame["departure_delay_minutes"] = frame["departure_delay_minutes"].astype("float64")
    frame["late"] = frame["late"].astype("Int64").astype("boolean")
    for column in ("predicted_at", "feedback_at"):
        # Unix seconds as a double are good to the microsecond: no spurious nanoseconds.
        frame[column] = pd.to_datetime(frame[column].astype("float64"), unit="s", utc=True).dt.round("us")
    return frame[[*PREDICTION_COLUMNS, *features, *FEEDBACK_COLUMNS]].reset_index(drop=True)
