"""Durable prediction and feedback log, written off the request path.

Requests append records to an in-memory queue; one writer thread per worker commits them to a
SQLite database (WAL, ``synchronous=FULL``) every ``flush_seconds``. A graceful shutdown drains
the queue before returning, so every acknowledged prediction is on disk. A crash (SIGKILL, power
loss) can lose at most the records of the last ``flush_seconds`` (0.1 s by default). Workers of
one service share the database; the pipeline reads it with ``pandas.read_sql``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

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


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.executescript(_SCHEMA)
    return conn


def _to_json(features: dict[str, Any]) -> str:
    """Feature values as JSON, missing (NaN) as null."""
    return json.dumps({k: (None if isinstance(v, float) and v != v else v) for k, v in features.items()},
                      separators=(",", ":"))


class PredictionLog:
    """Queue + writer thread; ``close()`` drains."""

    def __init__(self, path: Path, flush_seconds: float = 0.1) -> None:
        self.path = path
        self.flush_seconds = flush_seconds
        self._predictions: deque[tuple[Any, ...]] = deque()
        self._feedback: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self._conn = connect(path)
        self._reader = connect(path)
        self._lock = threading.Lock()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def predicted(self, request_id: str, flight_key: str, model_version: str, variant: str,
                  probability: float, features: dict[str, Any]) -> None:
        # Serialized by the writer thread, off the request path.
        self._predictions.append((request_id, time.time(), flight_key, model_version, variant,
                                  probability, features))

    def feedback(self, request_id: str, flight_key: str, delay: float, late: bool) -> None:
        self._feedback.append((request_id, time.time(), flight_key, delay, int(late)))

    def _drain(self) -> None:
        preds = [(*r[:6], _to_json(r[6])) for r in (self._predictions.popleft() for _ in range(len(self._predictions)))]
        fb = [self._feedback.popleft() for _ in range(len(self._feedback))]
        if not preds and not fb:
            return
        with self._lock:
            self._conn.execute("BEGIN")
            if preds:
                self._conn.executemany("INSERT OR REPLACE INTO predictions VALUES (?,?,?,?,?,?,?)", preds)
            if fb:
                self._conn.executemany("INSERT INTO feedback VALUES (?,?,?,?,?)", fb)
            self._conn.execute("COMMIT")
        self.written += len(preds)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._drain()
        self._drain()

    def flush(self) -> None:
        """Commit whatever is queued now (tests; feedback for a just-made prediction)."""
        self._drain()

    def lookup(self, request_id: str | None = None, flight_key: str | None = None) -> dict[str, Any] | None:
        """The logged prediction by request id, or the latest one for a flight key."""
        if request_id is not None:
            row = self._reader.execute(
                "SELECT request_id, flight_key, model_version, variant, probability FROM predictions "
                "WHERE request_id = ?", (request_id,)).fetchone()
        else:
            row = self._reader.execute(
                "SELECT request_id, flight_key, model_version, variant, probability FROM predictions "
                "WHERE flight_key = ? ORDER BY predicted_at DESC LIMIT 1", (flight_key,)).fetchone()
        if row is None:
            return None
        return dict(zip(("request_id", "flight_key", "model_version", "variant", "probability"), row))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()
        self._conn.close()
        self._reader.close()
