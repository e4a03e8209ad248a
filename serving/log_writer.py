"""Durable prediction and feedback log, written off the request path.

Requests append records to an in-memory queue; one writer thread per worker commits them to the
SQLite prediction log (:mod:`flight_delay.prediction_log`) every ``flush_seconds``. A graceful
shutdown drains the queue before returning, so every acknowledged prediction is on disk. A crash
(SIGKILL, power loss) can lose at most the records of the last ``flush_seconds``. Workers of one
service share the database.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from flight_delay.prediction_log import open_for_writing


def _to_json(features: dict[str, Any]) -> str:
    """Feature values as JSON, missing (NaN) as null (orjson writes NaN as null, and an order of
    magnitude faster than the standard library)."""
    return orjson.dumps(features).decode()


class PredictionLogWriter:
    """Queue + writer thread; ``close()`` drains."""

    def __init__(
        self,
        path: Path,
        flush_seconds: float = 0.1,
        *,
        busy_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
        before_write: Callable[[Any], None] | None = None,
    ) -> None:
        self.path = path
        self.flush_seconds = flush_seconds
        # Test seams: the wall clock of the records, and a hook run with the write connection
        # before each write (tests set SQLite's own limits through it).
        self.clock = clock
        self.before_write = before_write
        self._predictions: deque[tuple[Any, ...]] = deque()
        self._feedback: deque[tuple[Any, ...]] = deque()
        self._stop = threading.Event()
        self._conn = open_for_writing(path, busy_timeout)
        self._reader = open_for_writing(path, busy_timeout)
        self._lock = threading.Lock()
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def predicted(
        self,
        request_id: str,
        flight_key: str,
        model_version: str,
        variant: str,
        probability: float,
        features: dict[str, Any],
    ) -> None:
        # Serialized by the writer thread, off the request path.
        self._predictions.append((request_id, self.clock(), flight_key, model_version, variant, probability, features))

    def feedback(self, request_id: str, flight_key: str, delay: float, late: bool) -> None:
        self._feedback.append((request_id, self.clock(), flight_key, delay, int(late)))

    def _drain(self) -> None:
        preds = [(*r[:6], _to_json(r[6])) for r in (self._predictions.popleft() for _ in range(len(self._predictions)))]
        fb = [self._feedback.popleft() for _ in range(len(self._feedback))]
        if not preds and not fb:
            return
        with self._lock:
            if self.before_write is not None:
                self.before_write(self._conn)
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
                "WHERE request_id = ?",
                (request_id,),
            ).fetchone()
        else:
            row = self._reader.execute(
                "SELECT request_id, flight_key, model_version, variant, probability FROM predictions "
                "WHERE flight_key = ? ORDER BY predicted_at DESC LIMIT 1",
                (flight_key,),
            ).fetchone()
        if row is None:
            return None
        return dict(zip(("request_id", "flight_key", "model_version", "variant", "probability"), row))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._drain()
        self._conn.close()
        self._reader.close()
