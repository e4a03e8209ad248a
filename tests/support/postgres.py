"""A throwaway PostgreSQL 15 on loopback for the tests: one server per session, one fresh
database per test, and the fixtures that run a test over both backends of the shared state.

The server refuses to run as root, so as root it runs as the ``pgtest`` user (created if
missing), in a folder that user owns."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from bench.harness import free_port

if TYPE_CHECKING:
    from serving.log_writer import PredictionLogWriter

USER = "pgtest"


def server_bin() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: on PATH, or where Debian's ``postgresql`` package
    puts them (``/usr/lib/postgresql/<version>/bin``, not on PATH); None when not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", USER, "--", *args] if os.geteuid() == 0 else args


class PostgresServer:
    """``initdb`` + ``pg_ctl start`` in ``folder``; trust authentication, loopback only."""

    def __init__(self, folder: Path, bin_dir: Path) -> None:
        self.folder = folder
        self.bin_dir = bin_dir
        self.port = free_port()
        if os.geteuid() == 0:
            if subprocess.run(["id", USER], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "-M", USER], check=True)
            shutil.chown(folder, USER)
        self._run([str(bin_dir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres", "--no-sync"])
        self._run(
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-o",
                f"-p {self.port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
                "-l",
                str(folder / "log"),
                "-w",
                "start",
            ]
        )

    def _run(self, args: list[str]) -> None:
        done = subprocess.run(_as_server_user(args), capture_output=True, text=True)
        if done.returncode != 0:
            log = self.folder / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{Path(args[0]).name} {args[1]} failed ({done.returncode}): {done.stderr[-2000:]}\n{tail}"
            )

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def restart(self) -> None:
        """A fast restart: every connection is cut, the server answers again on the same port."""
        # The log file again: a server started without one holds this process's output pipes open.
        data, log = str(self.folder / "data"), str(self.folder / "log")
        self._run([str(self.bin_dir / "pg_ctl"), "-D", data, "-l", log, "-m", "fast", "-w", "restart"])

    def stop(self) -> None:
        subprocess.run(
            _as_server_user([str(self.bin_dir / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate", "stop"]),
            capture_output=True,
        )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bin_dir = server_bin()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL is not installed (no initdb/pg_ctl on PATH or in /usr/lib/postgresql/*/bin): "
            "apt-get install -y postgresql"
        )
    folder = Path(tempfile.mkdtemp(prefix="pg-"))
    folder.chmod(0o755)
    server = PostgresServer(folder, bin_dir)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's server."""
    return postgres_server.create_database()


@dataclass(frozen=True)
class LogDatabase:
    """A prediction log under test: the SQLite file at ``path``, or with ``url`` the PostgreSQL
    database (the writer's spill files then go beside ``path``)."""

    path: Path
    url: str | None = None

    @property
    def location(self) -> Path | str:
        """What the readers take."""
        return self.url or self.path

    def writer(self, **kwargs: Any) -> PredictionLogWriter:
        from serving.log_writer import PredictionLogWriter

        return PredictionLogWriter(self.path, database_url=self.url, **kwargs)

    def execute(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """``query`` (``?`` marks) committed on a connection of its own; the rows it returns."""
        if self.url is None:
            with closing(sqlite3.connect(self.path, timeout=5)) as conn, conn:
                return conn.execute(query, params).fetchall()
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            cursor = conn.execute(query.replace("?", "%s"), params)
            return cursor.fetchall() if cursor.description else []


BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def log_database(request: pytest.FixtureRequest, tmp_path: Path) -> LogDatabase:
    """The same test over a SQLite log and a PostgreSQL one."""
    path = tmp_path / "predictions.db"
    return LogDatabase(path, request.getfixturevalue("postgres_url") if request.param == "postgres" else None)


@pytest.fixture(params=BACKENDS)
def history_database(request: pytest.FixtureRequest) -> str | None:
    """The champion history in files (None) or in a PostgreSQL database (its URL)."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None
