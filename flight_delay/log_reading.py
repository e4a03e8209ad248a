"""Reading the prediction log (:mod:`flight_delay.prediction_log` holds its tables and writes):
the pipeline's read-only reader, :func:`read_log`, one row per prediction with its feedback and
one column per logged feature, and the outcomes the challenger's sequential test pairs. Each takes
a SQLite path or a PostgreSQL URL (:mod:`flight_delay.log_database`).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flight_delay import log_database as db
from flight_delay.flights import LOCAL_TZ
from flight_delay.log_database import Location
from flight_delay.prediction_log import data_day, data_day_bounds

if TYPE_CHECKING:
    import pandas as pd

    from flight_delay.log_database import Connection

log = logging.getLogger(__name__)


# --- Reading ------------------------------------------------------------------------------------

# What ``read_log`` returns besides one column per logged feature, in this order: the prediction,
# then the feedback on it (all missing when none came).
PREDICTION_COLUMNS = (
    "request_id",
    "predicted_at",
    "prediction_time",
    "flight_key",
    "model_version",
    "variant",
    "probability",
    "shadow_model_version",
    "shadow_probability",
)
FEEDBACK_COLUMNS = ("departure_delay_minutes", "late", "feedback_at")
_REQUIRED = {
    "predictions": {"request_id", "predicted_at", "flight_key", "model_version", "variant", "probability", "features"},
    "feedback": {"request_id", "received_at", "departure_delay_minutes", "late"},
}


def read_query(
    since: float | None = None,
    start: float | None = None,
    end: float | None = None,
    *,
    with_prediction_time: bool = True,
    with_shadow: bool = True,
) -> tuple[str, list[float]]:
    """The SQL (and its parameters) of :func:`read_log`. A log not yet migrated has no
    ``prediction_time`` (``with_prediction_time=False``): its data time is ``predicted_at``; nor
    the shadow's columns (``with_shadow=False``): read as missing.

    The data-time range is one range of the ``predictions_by_data_day`` index (the data days it
    covers, :func:`~flight_delay.prediction_log.data_day`), its rows then tested on their exact
    data time, and the feedback one index lookup per prediction: a day is read without scanning
    the table.
    """
    where, params = [], []
    if since is not None:
        where.append("p.predicted_at >= ?")
        params.append(since)
    if start is not None or end is not None:
        lo = -math.inf if start is None else start
        hi = math.inf if end is None else end
        fallback = "p.predicted_at >= ? AND p.predicted_at < ?"
        if with_prediction_time:
            first, last = data_day_bounds(lo, hi)  # the index's range, then the exact times
            if math.isfinite(first):
                where.append(f"{data_day('p')} >= ?")
                params.append(first)
            if math.isfinite(last):
                where.append(f"{data_day('p')} <= ?")
                params.append(last)
            where.append(
                f"((p.prediction_time >= ? AND p.prediction_time < ?) OR (p.prediction_time IS NULL AND {fallback}))"
            )
            params += [lo, hi, lo, hi]
        else:
            where.append(fallback)
            params += [lo, hi]
    data_time = "p.prediction_time" if with_prediction_time else "NULL"
    shadow = "p.shadow_model_version, p.shadow_probability" if with_shadow else "NULL, NULL"
    # Logs from before one outcome per prediction may hold several: the latest is the one read.
    sql = f"""
SELECT p.request_id, p.predicted_at, {data_time}, p.flight_key, p.model_version, p.variant, p.probability,
       {shadow}, p.features, f.departure_delay_minutes, f.late, f.received_at
FROM predictions AS p
LEFT JOIN feedback AS f ON f.rowid = (
    SELECT rowid FROM feedback WHERE request_id = p.request_id ORDER BY received_at DESC, rowid DESC LIMIT 1
)
WHERE {" AND ".join(where) or "TRUE"}
ORDER BY p.predicted_at, p.request_id
"""
    return sql, params


def _check_tables(conn: Connection, path: Location) -> None:
    expected = "; ".join(f"{t}({', '.join(sorted(c))})" for t, c in _REQUIRED.items())
    for table, columns in _REQUIRED.items():
        have = db.columns(conn, table)
        missing = sorted(columns - have)
        if missing:
            what = f"it has no table {table}" if not have else f"its table {table} lacks {', '.join(missing)}"
            raise ValueError(f"{db.redact(path)} is not a prediction log: {what}; expected the tables {expected}")


def _open_read_only(path: Path) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        return sqlite3.connect(uri, uri=True, timeout=30)
    except sqlite3.Error as exc:
        raise ValueError(f"{path}: cannot open it read-only as a SQLite database ({exc})") from exc


@contextmanager
def reading(where: Location) -> Iterator[Connection | None]:
    """A read-only connection to the log at ``where``, its tables checked; None when there is no
    log yet (a missing file; a PostgreSQL database without the tables): the service may never
    have run. A SQLite file that is not a readable log raises ``ValueError``; PostgreSQL's errors
    (unreachable, ...) propagate as they are."""
    if db.is_url(where):
        conn = db.connect_postgres(str(where), read_only=True)
        try:
            if not db.columns(conn, "predictions") and not db.columns(conn, "feedback"):
                yield None
            else:
                _check_tables(conn, where)
                yield conn
        finally:
            conn.close()
        return
    path = Path(where)
    if not path.exists():
        yield None
        return
    conn = _open_read_only(path)
    try:
        try:
            _check_tables(conn, path)
            yield conn
        except sqlite3.DatabaseError as exc:
            raise ValueError(
                f"{path} is not a readable prediction log: expected a SQLite database with "
                f"tables predictions and feedback ({exc})"
            ) from exc
    finally:
        conn.close()


def read_log(
    path: Location, since: float | None = None, *, start: float | None = None, end: float | None = None
) -> pd.DataFrame:
    """The predictions in the log at ``path``, each with its feedback, as a DataFrame.

    One row per prediction, oldest first: ``request_id``, ``predicted_at`` (UTC timestamp),
    ``prediction_time`` (the request's data time, UTC timestamp; missing when not logged),
    ``flight_key``, ``model_version``, ``variant``, ``probability``, ``shadow_model_version`` and
    ``shadow_probability`` (the shadow challenger scored beside it; missing without one, or when
    it failed), one column per logged feature
    (missing values as NaN, or None in text columns; a feature named like another column gets a
    ``feature_`` prefix), then ``departure_delay_minutes``, ``late`` (nullable boolean) and
    ``feedback_at`` (UTC timestamp), all missing for a prediction without feedback.

    ``since`` (unix seconds) keeps predictions made at or after it. ``start`` and ``end`` (unix
    seconds, either may be left out) keep the predictions whose data time is in ``[start, end)``:
    their ``prediction_time``, or their ``predicted_at`` when they have none.

    The database is opened read-only: in WAL mode the reader and the service's writer do not block
    each other (SQLite may create the ``-wal``/``-shm`` side files if no writer holds them open). A
    missing file gives an empty frame (the service may never have run); a file that is not a
    prediction log raises ``ValueError``. ``path`` may be a PostgreSQL URL: the same frame from
    the log there (a database without the tables reads as an empty log).
    """
    import pandas as pd

    path = db.location(path)
    base = [*PREDICTION_COLUMNS, *FEEDBACK_COLUMNS]
    with reading(path) as conn:
        if conn is None:
            return _typed(pd.DataFrame({c: [] for c in base}), [])
        have = db.columns(conn, "predictions")
        sql, params = read_query(
            since,
            start,
            end,
            with_prediction_time="prediction_time" in have,
            with_shadow={"shadow_model_version", "shadow_probability"} <= have,
        )
        rows = conn.execute(db.sql(conn, sql), params).fetchall()
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
            raise ValueError(
                f"{db.redact(path)}: the features of prediction {request_id} are not a JSON object: {text!r:.200}"
            )
        records.append(record)
    features = pd.DataFrame(records, index=frame.index) if records else pd.DataFrame(index=frame.index)
    features = features.rename(columns={c: f"feature_{c}" for c in features.columns if c in base})
    names = [str(c) for c in features.columns]
    frame = pd.concat([frame[list(PREDICTION_COLUMNS)], features, frame[list(FEEDBACK_COLUMNS)]], axis=1)
    return _typed(frame, names)


def utc_from_unix(seconds: pd.Series) -> pd.Series:
    """Unix seconds (float, None for missing) as UTC timestamps to the microsecond. Through whole
    microseconds: pandas' float path with missing values rounds uninitialised memory under
    ``errstate(over="raise")`` and can fail at random ("overflow encountered in multiply")."""
    import pandas as pd

    micros = (seconds.astype("float64") * 1e6).round().astype("Int64")
    return pd.to_datetime(micros, unit="us", utc=True).astype("datetime64[ns, UTC]")


def _typed(frame: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    frame["request_id"] = frame["request_id"].astype(object)
    for column in ("flight_key", "model_version", "variant", "shadow_model_version"):
        frame[column] = frame[column].astype(object)
    frame["probability"] = frame["probability"].astype("float64")
    frame["shadow_probability"] = frame["shadow_probability"].astype("float64")
    frame["departure_delay_minutes"] = frame["departure_delay_minutes"].astype("float64")
    frame["late"] = frame["late"].astype("Int64").astype("boolean")
    for column in ("predicted_at", "prediction_time", "feedback_at"):
        # Unix seconds as a double are good to the microsecond: no spurious nanoseconds.
        frame[column] = utc_from_unix(frame[column])
    return frame[[*PREDICTION_COLUMNS, *features, *FEEDBACK_COLUMNS]].reset_index(drop=True)


def data_days(frame: pd.DataFrame) -> pd.Series:
    """The local day (``YYYY-MM-DD``, America/New_York) of each prediction of a :func:`read_log`
    frame by its data time: ``prediction_time``, else ``predicted_at``."""
    when = frame["prediction_time"].fillna(frame["predicted_at"])
    return when.dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d").astype(object)


# --- Outcomes for the challenger's sequential test ----------------------------------------------

PAIRED_COLUMNS = ("request_id", "prediction_time", "received_at", "late", "champion_p", "challenger_p")
_PROBABILITIES = {"champion_p", "challenger_p", "p"}
SPLIT_COLUMNS = ("request_id", "prediction_time", "received_at", "late", "variant", "model_version", "p")
_OUTCOMES = """
SELECT p.request_id, COALESCE({data_time}, p.predicted_at), f.received_at, f.late, {picked}
FROM feedback AS f JOIN predictions AS p ON p.request_id = f.request_id
WHERE {where}
ORDER BY f.received_at, f.rowid
"""


def _outcomes(
    path: Location, columns: tuple[str, ...], picked: str, where: str, params: list[Any], since: float | None
) -> pd.DataFrame:
    import pandas as pd

    rows: list[tuple[Any, ...]] = []
    with reading(db.location(path)) as conn:
        have = set() if conn is None else db.columns(conn, "predictions")
        if conn is None or ("shadow_probability" in picked and "shadow_probability" not in have):
            pass  # no log yet, or a log from before shadow scoring: it holds no pairs
        else:
            data_time = "p.prediction_time" if "prediction_time" in have else "NULL"
            if since is not None:
                where, params = f"{where} AND f.received_at > ?", [*params, since]
            sql = _OUTCOMES.format(data_time=data_time, picked=picked, where=where)
            rows = conn.execute(db.sql(conn, sql), params).fetchall()
    frame = pd.DataFrame.from_records(rows, columns=list(columns))
    frame["request_id"] = frame["request_id"].astype(object)
    for column in ("prediction_time", "received_at"):
        frame[column] = utc_from_unix(frame[column])
    frame["late"] = frame["late"].astype("int64").astype(bool)
    for column in columns[4:]:
        frame[column] = frame[column].astype("float64" if column in _PROBABILITIES else object)
    return frame


def paired_outcomes(path: Location, champion: str, challenger: str, since: float | None = None) -> pd.DataFrame:
    """The outcomes of flights both models scored: predictions of ``champion`` that carry the
    probability of ``challenger`` run in shadow beside it, and have feedback.

    One row per prediction, in the order the outcomes came: ``request_id``, ``prediction_time``
    (the data time: the request's prediction time, else when it was logged; UTC), ``received_at``
    (when the outcome came, UTC), ``late`` (bool), ``champion_p``, ``challenger_p``. ``since``
    (unix seconds) keeps outcomes received after it: a reader that keeps the latest
    ``received_at`` it saw reads each outcome once. A missing log, or one from before shadow
    scoring, gives an empty frame; a file that is not a prediction log raises ``ValueError``.
    """
    return _outcomes(
        path,
        PAIRED_COLUMNS,
        "p.probability, p.shadow_probability",
        "p.variant = 'champion' AND p.model_version = ? AND p.shadow_model_version = ? "
        "AND p.shadow_probability IS NOT NULL",
        [champion, challenger],
        since,
    )


def split_outcomes(path: Location, champion: str, challenger: str, since: float | None = None) -> pd.DataFrame:
    """The outcomes of a split: each prediction of ``champion`` (as the champion) or of
    ``challenger`` (as the challenger) that has feedback, one row each, in the order the outcomes
    came: ``request_id``, ``prediction_time``, ``received_at``, ``late``, ``variant``,
    ``model_version``, ``p`` (its probability). ``since`` and the rest as :func:`paired_outcomes`.
    """
    return _outcomes(
        path,
        SPLIT_COLUMNS,
        "p.variant, p.model_version, p.probability",
        "((p.variant = 'champion' AND p.model_version = ?) OR (p.variant = 'challenger' AND p.model_version = ?))",
        [champion, challenger],
        since,
    )
