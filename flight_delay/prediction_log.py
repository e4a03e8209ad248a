"""The prediction log as data: its tables and their migration, the writes every writer shares
(rows, feedback recorded once, retention). Its reader is :mod:`flight_delay.log_reading`, spill
files are in :mod:`flight_delay.log_spill`.

The service writes every prediction and every feedback record to a SQLite database
(``serving.log_writer``); the pipeline reads it, read-only, with
:func:`flight_delay.log_reading.read_log`. Both take the
tables from here. With ``FLIGHT_DELAY_DATABASE_URL`` set, the same tables live in PostgreSQL,
shared by every replica of the service: every function here takes a SQLite path or a PostgreSQL
URL (or a connection to either) and runs the same statements on both
(:mod:`flight_delay.log_database`).
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flight_delay import log_database as db
from flight_delay.log_database import Location

if TYPE_CHECKING:
    from flight_delay.log_database import Connection

log = logging.getLogger(__name__)

# ``prediction_time`` (the request's data time, unix seconds; missing in rows logged before it
# existed or without one) and the shadow challenger's figure (``shadow_model_version``,
# ``shadow_probability``: missing without a shadow, or when it failed) came after the first logs
# were written: ``open_for_writing`` adds them. PostgreSQL's REAL is single precision: there the
# floats are DOUBLE PRECISION, and feedback gets the insertion order SQLite keeps as ``rowid``
# under that name, so that the queries ordering by it are the same on both.
_TABLES = """
CREATE TABLE IF NOT EXISTS predictions (
    request_id TEXT PRIMARY KEY,
    predicted_at {real} NOT NULL,
    flight_key TEXT NOT NULL,
    model_version TEXT NOT NULL,
    variant TEXT NOT NULL,
    probability {real} NOT NULL,
    features TEXT NOT NULL,
    prediction_time {real},
    shadow_model_version TEXT,
    shadow_probability {real}
);
CREATE TABLE IF NOT EXISTS feedback (
    {order}request_id TEXT NOT NULL,
    received_at {real} NOT NULL,
    flight_key TEXT NOT NULL,
    departure_delay_minutes {real} NOT NULL,
    late INTEGER NOT NULL
);
"""
_SQLITE_TABLES = _TABLES.format(real="REAL", order="")
_POSTGRES_TABLES = _TABLES.format(real="DOUBLE PRECISION", order="rowid BIGINT GENERATED ALWAYS AS IDENTITY,\n    ")
# Any fixed number: workers creating the tables at once take turns (CREATE ... IF NOT EXISTS
# alone races in PostgreSQL's catalog).
_SCHEMA_LOCK = 7_286_431
# A prediction's data day: its data time (``prediction_time``, else ``predicted_at``) in whole UTC
# days since 1970, as an index expression. Readers of a range of data time narrow it by this
# expression first (a day more on either side: PostgreSQL's CAST rounds where SQLite's
# truncates), then test the exact times.
#
# The index is on the day, not the time, for the writer's sake. Prediction times arrive in any
# order (a replay, a backfill, the benchmark's month of flights): an index on the exact time takes
# each row at a random place, and every commit rewrites one index page per row it holds, about
# 8 KB of WAL per row once the log is large. Within a day the index keeps the insertion order
# (the rowid), so a commit appends to the few days it holds: ``python -m bench.log_writer``
# measures the bytes written per row.
DATA_DAY_MARGIN = 1  # days read beyond a range's own on either side


def data_day(table: str = "") -> str:
    """The data-day expression, its columns qualified by ``table`` (an alias) when given; a
    query uses the index only with the expression as the index has it."""
    prefix = f"{table}." if table else ""
    return f"CAST(COALESCE({prefix}prediction_time, {prefix}predicted_at) / 86400 AS INTEGER)"


def data_day_bounds(start: float, end: float) -> tuple[float, float]:
    """The least and greatest data day to read for data times in ``[start, end)`` (unix seconds;
    an infinite bound stays infinite)."""
    first = math.floor(start / 86_400) - DATA_DAY_MARGIN if math.isfinite(start) else start
    last = math.floor(end / 86_400) + DATA_DAY_MARGIN if math.isfinite(end) else end
    return first, last


_INDEXES = {
    "predictions_by_flight": "ON predictions (flight_key, predicted_at)",  # the latest for a flight
    "predictions_by_predicted_at": "ON predictions (predicted_at)",  # retention, ``since``
    "predictions_by_data_day": f"ON predictions (({data_day()}))",  # a range of data time
    "feedback_by_request": "ON feedback (request_id)",  # UNIQUE: one outcome per prediction
}
_UNIQUE = {"feedback_by_request"}
# Indexes of earlier logs that the current tables no longer have: dropped when a log is migrated.
_OBSOLETE_INDEXES = ("predictions_by_data_time",)  # on (prediction_time, predicted_at): see data_day
# Logs written before feedback was unique may hold several outcomes per prediction; the one kept
# is the one `read_log` reported until then: the latest (last written on a tie).
_KEEP_LATEST_FEEDBACK = """
DELETE FROM feedback WHERE rowid IN (
    SELECT rowid FROM (
        SELECT rowid, ROW_NUMBER() OVER (PARTITION BY request_id ORDER BY received_at DESC, rowid DESC) AS n
        FROM feedback
    ) WHERE n > 1
)
"""

BUSY_TIMEOUT_SECONDS = 30.0


@contextmanager
def write_transaction(conn: Connection) -> Iterator[Connection]:
    """``BEGIN IMMEDIATE`` (the write lock taken at once, so two writers never both read and then
    both write), ``COMMIT`` on success, ``ROLLBACK`` on any error: no transaction is left open
    holding the lock against the other workers."""
    conn.execute(db.begin(conn))
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if db.in_transaction(conn):
            conn.execute("ROLLBACK")
        raise


def _indexes(conn: Connection) -> set[str]:
    if db.is_postgres(conn):  # the catalog: reading it locks no table
        return {row[0] for row in conn.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}


def _missing_indexes(conn: Connection) -> list[str]:
    have = _indexes(conn)
    return [name for name in _INDEXES if name not in have]


def _obsolete_indexes(conn: Connection) -> list[str]:
    have = _indexes(conn)
    return [name for name in _OBSOLETE_INDEXES if name in have]


# Columns added to ``predictions`` since the first logs, in order, with their types.
_ADDED_COLUMNS = {"prediction_time": "REAL", "shadow_model_version": "TEXT", "shadow_probability": "REAL"}


def _missing_columns(conn: sqlite3.Connection) -> list[str]:
    have = db.columns(conn, "predictions")
    return [name for name in _ADDED_COLUMNS if name not in have]


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring a log written by an earlier version to the current tables, in place and in one
    transaction: the added columns (``prediction_time``, the shadow's), the indexes created (and
    those it no longer uses dropped), one outcome per prediction."""
    if not _missing_columns(conn) and not _missing_indexes(conn) and not _obsolete_indexes(conn):
        return
    with write_transaction(conn):  # checked again under the lock: another worker may have done it
        for name in _missing_columns(conn):
            conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {_ADDED_COLUMNS[name]}")
        for name in _obsolete_indexes(conn):
            conn.execute(f"DROP INDEX {name}")
        missing = _missing_indexes(conn)
        if "feedback_by_request" in missing:
            removed = conn.execute(_KEEP_LATEST_FEEDBACK).rowcount
            if removed:
                log.warning(
                    "%s: %d feedback rows were second outcomes of a prediction; kept the latest of each "
                    "(one outcome per prediction from now on)",
                    path,
                    removed,
                )
        for name in missing:
            unique = "UNIQUE " if name in _UNIQUE else ""
            conn.execute(f"CREATE {unique}INDEX {name} {_INDEXES[name]}")


def _open_postgres(url: str) -> Any:
    """A connection to the log in PostgreSQL, its tables and indexes created if need be.

    Only what is missing is created, and what is there is found in the catalog. ``CREATE INDEX IF
    NOT EXISTS`` locks its table against writes before it finds the index there, so a replica
    that ran it while another replica was logging waited for that writer's transaction, holding
    the locks of the statements before it, and the two deadlocked when that writer went on to the
    other table."""
    conn = db.connect_postgres(url)
    try:
        with write_transaction(conn):
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            if not (db.columns(conn, "predictions") and db.columns(conn, "feedback")):
                for statement in _POSTGRES_TABLES.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            for name in _obsolete_indexes(conn):
                conn.execute(f"DROP INDEX {name}")
            for name in _missing_indexes(conn):
                unique = "UNIQUE " if name in _UNIQUE else ""
                conn.execute(f"CREATE {unique}INDEX {name} {_INDEXES[name]}")
    except BaseException:
        conn.close()
        raise
    return conn


# A multi-row INSERT (and the savepoint around it) keeps a statement journal: the original of every
# page it changes, in a temporary file by default, which about doubled the bytes written per logged
# row. In memory, with a page cache large enough for a flush's index pages (16 MB, against SQLite's
# 2 MB, which spilled dirty pages to the WAL mid-transaction), ``python -m bench.log_writer``
# measured 3.0 KB written per row of about 1 KB, against 4.8 KB with the defaults.
WRITER_PRAGMAS = ("temp_store = MEMORY", "cache_size = -16384")


def open_for_writing(path: Location, timeout: float = BUSY_TIMEOUT_SECONDS) -> Connection:
    """A connection to the log at ``path`` (created with its tables if need be, an older log
    migrated in place) for a writer: WAL, so readers never block it, and ``synchronous=FULL``, so
    a commit is on disk. Autocommit: transactions are explicit (:func:`write_transaction`).

    Several workers open the same log when a service starts. Switching a new database to WAL
    needs it to itself, and SQLite answers "database is locked" at once, without waiting for the
    busy timeout, when another connection is creating the tables at that moment: the switch and
    the schema are retried until ``timeout``.

    ``path`` may be a PostgreSQL URL: an autocommit connection to the same tables.
    """
    if db.is_url(path):
        return _open_postgres(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=timeout, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            for pragma in WRITER_PRAGMAS:
                conn.execute(f"PRAGMA {pragma}")
            conn.executescript(_SQLITE_TABLES)
            _migrate(conn, path)
            return conn
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
        except BaseException:
            conn.close()
            raise


# --- Writes -------------------------------------------------------------------------------------

PREDICTION_FIELDS = (
    "request_id",
    "predicted_at",
    "flight_key",
    "model_version",
    "variant",
    "probability",
    "features",
    "prediction_time",
    "shadow_model_version",
    "shadow_probability",
)
FEEDBACK_FIELDS = ("request_id", "received_at", "flight_key", "departure_delay_minutes", "late")


# Rows per INSERT statement when a batch is written. ``executemany`` steps SQLite once per row and
# lets go of Python's GIL around each step; in a service whose event loop keeps the GIL busy, the
# writer thread then waits up to a switch interval to get it back after every row, and writes a
# few thousand rows a second at most. One statement for many rows is one step.
ROWS_PER_STATEMENT = 500


@functools.lru_cache(maxsize=8)
def _insert(table: str, fields: tuple[str, ...], rows: int = 1) -> str:
    """An INSERT of ``rows`` rows at once. A request id is written once: a replayed spill or a
    second outcome changes nothing."""
    marks = "(" + ",".join("?" * len(fields)) + ")"
    values = ",".join([marks] * rows)
    return f"INSERT INTO {table} ({', '.join(fields)}) VALUES {values} ON CONFLICT (request_id) DO NOTHING"


INSERT_PREDICTION = _insert("predictions", PREDICTION_FIELDS)
INSERT_FEEDBACK = _insert("feedback", FEEDBACK_FIELDS)


def _insert_many(conn: Connection, table: str, fields: tuple[str, ...], rows: list[tuple[Any, ...]]) -> int:
    """The rows inserted (those whose request id was there already are not)."""
    if db.is_postgres(conn):
        return _copy_many(conn, table, fields, rows)
    inserted = 0
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        statement = _insert(table, fields, len(chunk))
        inserted += conn.execute(statement, list(itertools.chain.from_iterable(chunk))).rowcount
    return inserted


# psycopg adapts every parameter of a multi-row INSERT in Python: COPY, adapted in C, writes a
# batch two to three times faster. COPY has no ON CONFLICT: the rows go to a session-local staging
# table first, then into the log in one INSERT ... SELECT, in the order they were queued.
_POSTGRES_TYPES = dict(re.findall(r"^\s+(\w+) (TEXT|DOUBLE PRECISION|INTEGER)", _POSTGRES_TABLES, re.MULTILINE))


@functools.lru_cache(maxsize=4)
def _staging(table: str, fields: tuple[str, ...]) -> tuple[str, str, str]:
    """The statements that create the staging table of ``table``, fill it and move its rows."""
    names = ", ".join(fields)
    columns = ", ".join(f"{name} {_POSTGRES_TYPES[name]}" for name in fields)
    create = (
        f"CREATE TEMP TABLE IF NOT EXISTS incoming_{table} (queued BIGINT GENERATED ALWAYS AS IDENTITY, {columns}) "
        "ON COMMIT DELETE ROWS"
    )
    move = (
        f"INSERT INTO {table} ({names}) SELECT {names} FROM incoming_{table} ORDER BY queued "
        "ON CONFLICT (request_id) DO NOTHING"
    )
    return create, f"COPY incoming_{table} ({names}) FROM STDIN", move


def _copy_many(conn: Any, table: str, fields: tuple[str, ...], rows: list[tuple[Any, ...]]) -> int:
    create, copy, move = _staging(table, fields)
    conn.execute(create)
    with conn.cursor() as cursor:
        with cursor.copy(copy) as stream:
            for row in rows:
                stream.write_row(row)
        inserted = cursor.execute(move).rowcount
        cursor.execute(f"DELETE FROM incoming_{table}")  # a transaction may write several batches
    return inserted


@dataclass
class LogRows:
    """Rows for the two tables, as the database takes them: ``predictions`` in the order of
    ``PREDICTION_FIELDS`` (the features as JSON text), ``feedback`` in that of
    ``FEEDBACK_FIELDS``."""

    predictions: list[tuple[Any, ...]] = field(default_factory=list)
    feedback: list[tuple[Any, ...]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions) + len(self.feedback)


@dataclass(frozen=True)
class RefusedRow:
    """A row the database will never take, whatever its state (a NOT NULL value missing, a value
    it cannot store): the caller's bug, reported rather than retried forever."""

    table: str
    row: tuple[Any, ...]
    error: str


def write_rows(conn: Connection, rows: LogRows) -> list[RefusedRow]:
    """Insert ``rows`` in the caller's open transaction; rows whose request id is already there
    are skipped. A row the database refuses for its content is left out and returned, so that it
    cannot hold back the others; errors of the database itself (``OperationalError``: busy, full,
    read-only, I/O, unreachable) propagate, and the caller rolls back and retries."""
    return insert_rows(conn, rows)[1]


def insert_rows(conn: Connection, rows: LogRows) -> tuple[int, list[RefusedRow]]:
    """:func:`write_rows`, and how many rows it inserted."""
    refused: list[RefusedRow] = []
    inserted = 0
    for table, fields, batch in (
        ("predictions", PREDICTION_FIELDS, rows.predictions),
        ("feedback", FEEDBACK_FIELDS, rows.feedback),
    ):
        if not batch:
            continue
        conn.execute("SAVEPOINT batch")
        try:
            inserted += _insert_many(conn, table, fields, batch)
        except db.row_errors(conn):
            conn.execute("ROLLBACK TO batch")
            inserted += _insert_one_by_one(conn, table, fields, batch, refused)
        conn.execute("RELEASE batch")
    return inserted, refused


def _insert_one_by_one(
    conn: Connection,
    table: str,
    fields: tuple[str, ...],
    batch: list[tuple[Any, ...]],
    refused: list[RefusedRow],
) -> int:
    """The rows of a batch the database refused, each on its own: a failed statement aborts a
    PostgreSQL transaction, so each row has its own savepoint to roll back to."""
    statement = db.sql(conn, _insert(table, fields))
    inserted = 0
    for row in batch:
        conn.execute("SAVEPOINT one")
        try:
            inserted += conn.execute(statement, row).rowcount
        except db.row_errors(conn) as exc:
            conn.execute("ROLLBACK TO one")
            refused.append(RefusedRow(table, row, str(exc)))
        conn.execute("RELEASE one")
    return inserted


def prune(conn: Connection, before: float, limit: int) -> int:
    """Delete the ``limit`` oldest predictions made before ``before`` (unix seconds) and their
    feedback, in one short transaction; the number of predictions deleted (``limit`` when more
    may remain)."""
    oldest = "SELECT request_id FROM predictions WHERE predicted_at < ? ORDER BY predicted_at LIMIT ?"
    with write_transaction(conn):
        conn.execute(db.sql(conn, f"DELETE FROM feedback WHERE request_id IN ({oldest})"), (before, limit))
        deleted = conn.execute(db.sql(conn, f"DELETE FROM predictions WHERE request_id IN ({oldest})"), (before, limit))
        return deleted.rowcount


# --- Feedback -----------------------------------------------------------------------------------


class FeedbackConflict(ValueError):
    """An outcome for a prediction that already has a different one (the service answers 409)."""


@dataclass(frozen=True)
class RecordedFeedback:
    """A prediction and the outcome it has; ``first``: this call recorded it (else the same
    outcome was there already, and nothing was written)."""

    request_id: str
    flight_key: str
    model_version: str
    variant: str
    probability: float
    prediction_time: float | None
    departure_delay_minutes: float
    late: bool
    first: bool
    shadow_model_version: str | None = None  # the shadow challenger scored beside it, if any
    shadow_probability: float | None = None


_PREDICTION_KEYS = (
    "request_id",
    "flight_key",
    "model_version",
    "variant",
    "probability",
    "prediction_time",
    "shadow_model_version",
    "shadow_probability",
)
_PREDICTION = f"SELECT {', '.join(_PREDICTION_KEYS)} FROM predictions"


def find_prediction(
    conn: Connection, request_id: str | None = None, flight_key: str | None = None
) -> dict[str, Any] | None:
    """The logged prediction with ``request_id``, else the latest one for ``flight_key``."""
    if request_id is not None:
        row = conn.execute(db.sql(conn, f"{_PREDICTION} WHERE request_id = ?"), (request_id,)).fetchone()
    else:
        row = conn.execute(
            db.sql(conn, f"{_PREDICTION} WHERE flight_key = ? ORDER BY predicted_at DESC LIMIT 1"), (flight_key,)
        ).fetchone()
    return None if row is None else dict(zip(_PREDICTION_KEYS, row))


def _outcome(delay: float, late: bool) -> str:
    return f"{delay:.1f} minutes ({'late' if late else 'on time'})"


def record_outcome(
    conn: Connection, request_id: str, departure_delay_minutes: float, late: bool, received_at: float
) -> RecordedFeedback:
    """Record the outcome of prediction ``request_id`` unless it has one, in one write transaction.

    The UNIQUE index on ``feedback.request_id`` decides between concurrent callers, in any process
    or replica: the first insert wins and the others find its row (PostgreSQL makes a second
    insert wait for the first transaction, then skips it). The same outcome again is a duplicate
    (``first=False``); a different one raises :class:`FeedbackConflict` naming both; a prediction
    that is not (or no longer) logged raises ``LookupError``.
    """
    with write_transaction(conn):
        found = find_prediction(conn, request_id)
        if found is None:
            raise LookupError(f"no logged prediction for request_id {request_id}")
        row = (request_id, received_at, found["flight_key"], departure_delay_minutes, int(late))
        first = conn.execute(db.sql(conn, INSERT_FEEDBACK), row).rowcount == 1
        if not first:
            delay, was_late, at = conn.execute(
                db.sql(conn, "SELECT departure_delay_minutes, late, received_at FROM feedback WHERE request_id = ?"),
                (request_id,),
            ).fetchone()
            if (delay, bool(was_late)) != (departure_delay_minutes, late):
                raise FeedbackConflict(
                    f"prediction {request_id} already has the outcome {_outcome(delay, bool(was_late))}, "
                    f"recorded at {datetime.fromtimestamp(at, UTC).isoformat()}; refused "
                    f"{_outcome(departure_delay_minutes, late)}: a prediction has one outcome"
                )
    return RecordedFeedback(**found, departure_delay_minutes=departure_delay_minutes, late=late, first=first)
