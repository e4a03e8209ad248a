"""The one seam between the two databases the shared state can live in: a local SQLite file (the
default) or PostgreSQL (``FLIGHT_DELAY_DATABASE_URL``), shared by every replica.

Callers hold a DB-API connection of either kind and write their SQL once, with ``?`` marks;
:func:`sql` gives PostgreSQL its ``%s`` marks. Everything else that differs (opening, a table's
columns, whether a transaction is open, which errors mean "the database, not the row") is here.
``psycopg`` is imported only when a URL is used.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

from flight_delay import paths

URL_SCHEMES = ("postgresql://", "postgres://")

# A prediction log or a champion history: a SQLite file, or a PostgreSQL URL.
Location = Path | str

if TYPE_CHECKING:
    import psycopg

    # A connection to either: autocommit, transactions explicit.
    Connection: TypeAlias = sqlite3.Connection | psycopg.Connection[Any]


def is_url(where: object) -> bool:
    return isinstance(where, str) and where.startswith(URL_SCHEMES)


def location(where: str | Path) -> Location:
    """A URL stays a URL; anything else is a path."""
    return where if is_url(where) else Path(where)


def redact(where: Location) -> str:
    """``where`` for messages and logs: a URL with its password replaced."""
    return paths.redact(where) if is_url(where) else str(where)


def is_postgres(where: Any) -> bool:
    """``where`` (a connection or a location) is PostgreSQL."""
    if isinstance(where, sqlite3.Connection | Path):
        return False
    return is_url(where) if isinstance(where, str) else True


@functools.lru_cache(maxsize=64)
def _marks(text: str) -> str:
    return text.replace("?", "%s")


def sql(conn: Any, text: str) -> str:
    """``text`` (``?`` marks) as ``conn`` takes it. The statements of this project hold no ``?``
    or ``%`` of their own."""
    return text if isinstance(conn, sqlite3.Connection) else _marks(text)


def connect_postgres(url: str, *, read_only: bool = False) -> Any:
    """An autocommit connection (transactions are explicit, as on SQLite)."""
    import psycopg

    options = "-c default_transaction_read_only=on" if read_only else None
    return psycopg.connect(url, autocommit=True, options=options, connect_timeout=10)


class SharedConnection:
    """One PostgreSQL connection shared by the threads of a process: opened on first use, again
    in a forked child (which must not talk over its parent's socket) and after the server went
    away. ``schema`` (its statements run under the advisory lock ``schema_lock``: ``CREATE TABLE IF
    NOT EXISTS`` alone races in PostgreSQL's catalog) is created when the object is made."""

    def __init__(self, url: str, schema: str | None = None, schema_lock: int = 0) -> None:
        self.url = url  # holds a password: never logged
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pid = os.getpid()
        if schema:
            with self() as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (schema_lock,))
                conn.execute(schema)

    @contextmanager
    def __call__(self) -> Iterator[Any]:
        import psycopg

        with self._lock:
            if self._pid != os.getpid():
                self._conn, self._pid = None, os.getpid()
            if self._conn is None or self._conn.closed:
                self._conn = connect_postgres(self.url)
            try:
                yield self._conn
            except psycopg.OperationalError:
                self._conn.close()
                self._conn = None
                raise


def begin(conn: Any) -> str:
    """The statement that starts a write transaction: SQLite takes its write lock at once; a
    PostgreSQL transaction locks the rows it writes."""
    return "BEGIN" if is_postgres(conn) else "BEGIN IMMEDIATE"


def in_transaction(conn: Any) -> bool:
    if isinstance(conn, sqlite3.Connection):
        return conn.in_transaction
    from psycopg.pq import TransactionStatus

    return conn.info.transaction_status != TransactionStatus.IDLE


def columns(conn: Any, table: str) -> set[str]:
    """The columns of ``table``; empty when there is no such table."""
    if isinstance(conn, sqlite3.Connection):
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
        (table,),
    )
    return {row[0] for row in rows}


def row_errors(conn: Any) -> tuple[type[Exception], ...]:
    """Errors that depend on a row, not on the database: a constraint, a value it cannot store."""
    if isinstance(conn, sqlite3.Connection):
        return (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)
    import psycopg

    return (psycopg.errors.IntegrityError, psycopg.errors.DataError, psycopg.ProgrammingError)


def unavailable_errors(where: Any) -> tuple[type[Exception], ...]:
    """Errors of the database itself (unreachable, busy, full, read-only): retried, or answered
    503. ``where``: a connection or a location. PostgreSQL's read-only transaction (a standby
    after a failover, SQLSTATE 25006) is an InternalError there."""
    if not is_postgres(where):
        return (sqlite3.OperationalError,)
    import psycopg

    return (psycopg.OperationalError, psycopg.InternalError)


def database_errors(where: Any) -> tuple[type[Exception], ...]:
    """Any error of the database or its driver."""
    if not is_postgres(where):
        return (sqlite3.DatabaseError,)
    import psycopg

    return (psycopg.Error,)


def error_name(exc: BaseException) -> str:
    """SQLite's error name, PostgreSQL's SQLSTATE class, else the exception's type."""
    return getattr(exc, "sqlite_errorname", None) or getattr(exc, "sqlstate", None) or type(exc).__name__
