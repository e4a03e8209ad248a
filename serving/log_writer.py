"""Durable prediction and feedback log, written off the request path.

One writer per worker. Requests append records to an in-memory queue; one writer thread, the only
user of the write connection and the only one to take from the queue, commits them to the SQLite
prediction log (:mod:`flight_delay.prediction_log`) every ``flush_seconds``. Workers of one
service share the database; with a PostgreSQL URL (``FLIGHT_DELAY_DATABASE_URL``) every replica
of the service shares it, and feedback sent to one finds a prediction made by another.

When the log cannot be written (database busy, disk full, read-only, I/O error) the writer rolls
back, keeps the rows, counts and logs the error and retries with backoff (0.05 s doubling to 5 s).
The queue is bounded: once ``max_backlog`` rows wait, :meth:`PredictionLogWriter.predicted`
raises :class:`LogUnavailable` (the service answers 503) instead of acknowledging a prediction
it may not be able to keep. An acknowledged prediction is therefore always on disk or in the
queue. A graceful :meth:`~PredictionLogWriter.close` keeps retrying until ``close_timeout``, then
writes what is left to a spill file beside the database (:mod:`flight_delay.log_spill`), which
the next writer replays at start. A crash (SIGKILL, power loss) can lose what was queued: at most
the last ``flush_seconds`` of a healthy log, the whole backlog of a failing one.

The writer also applies the retention: every ``retention_every_seconds`` it deletes predictions
older than ``retention_days`` (and their feedback), a small batch per transaction.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from flight_delay import log_database as db
from flight_delay.log_spill import replay_spills, spill
from flight_delay.prediction_log import FeedbackConflict as FeedbackConflict  # re-exported for the service
from flight_delay.prediction_log import (
    LogRows,
    RecordedFeedback,
    RefusedRow,
    find_prediction,
    open_for_writing,
    prune,
    record_outcome,
    write_rows,
    write_transaction,
)
from serving.settings import log_max_backlog, log_retention_days
from serving.telemetry import LOG_BACKLOG, LOG_DROPPED, LOG_REPLAYED, LOG_SPILLED, LOG_WRITE_ERRORS

if TYPE_CHECKING:
    from flight_delay.log_database import Connection

log = logging.getLogger(__name__)

RETRY_FIRST_SECONDS = 0.05
RETRY_MAX_SECONDS = 5.0
PRUNE_BATCH = 2_000  # predictions deleted per retention transaction: the write lock held briefly
POLL_SECONDS = 0.02  # how often feedback looks again for a prediction another worker may commit
DAY_SECONDS = 86_400.0


# What :meth:`PredictionLogWriter.predicted_many` takes per prediction: request id, flight key,
# model version, variant, probability, features, prediction time (unix seconds or None), shadow
# model version and shadow probability (both None without a shadow figure).
PredictionRecord = tuple[str, str, str, str, float, dict[str, Any], float | None, str | None, float | None]


class LogUnavailable(RuntimeError):
    """The prediction log cannot take the record now (the service answers 503): it is failing and
    its backlog is full, its writer has stopped, or it is closed. The message says which."""


@dataclass(frozen=True)
class LogStatus:
    """The writer's health, for readiness and for people."""

    writer_alive: bool
    accepting: bool  # a prediction made now would be acknowledged
    backlog: int  # rows acknowledged, not yet committed
    max_backlog: int
    last_error: str | None  # the latest failed write, if any ("SQLITE_FULL: database or disk is full")
    write_errors: int
    spilled: int
    replayed: int
    dropped: int
    pruned: int

    @property
    def ready(self) -> bool:
        return self.writer_alive and self.accepting


def _to_json(features: dict[str, Any]) -> str:
    """Feature values as JSON, missing (NaN) as null (orjson writes NaN as null, and an order of
    magnitude faster than the standard library); numpy values as numbers."""
    return orjson.dumps(features, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _which(request_id: str | None, flight_key: str | None) -> str:
    """The prediction a lookup asks for, in messages."""
    return f"request_id {request_id}" if request_id is not None else f"flight_key {flight_key}"


def _describe(exc: BaseException) -> str:
    return f"{db.error_name(exc)}: {exc}"


class _Backoff:
    """Seconds to wait before the next attempt: none while writes succeed, then doubling."""

    def __init__(self) -> None:
        self.delay = 0.0

    def failed(self) -> float:
        self.delay = min(self.delay * 2, RETRY_MAX_SECONDS) if self.delay else RETRY_FIRST_SECONDS
        return self.delay

    def succeeded(self) -> None:
        self.delay = 0.0


class PredictionLogWriter:
    """Bounded queue + one writer thread; see the module docstring for the failure policy.

    ``max_backlog`` and ``retention_days`` default to ``FLIGHT_DELAY_LOG_MAX_BACKLOG`` (50,000
    rows) and ``FLIGHT_DELAY_LOG_RETENTION_DAYS`` (30; 0 keeps everything). ``clock`` is the wall
    clock of the records; ``before_write`` runs on the writer thread with its connection before
    every write (tests set SQLite's own limits through it).

    ``path`` is the SQLite log; with ``database_url`` (PostgreSQL) the rows go there instead and
    ``path`` only names the spill files, which stay on the local disk.
    """

    def __init__(
        self,
        path: Path,
        flush_seconds: float = 0.1,
        *,
        max_backlog: int | None = None,
        retention_days: float | None = None,
        retention_every_seconds: float = 300.0,
        busy_timeout: float = 5.0,
        close_timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
        before_write: Callable[[Connection], None] | None = None,
        database_url: str | None = None,
    ) -> None:
        self.path = Path(path)
        if database_url is not None and not db.is_url(database_url):
            scheme = database_url.split("://")[0]
            raise ValueError(
                f"database_url: expected postgresql://user:password@host:port/database, got {scheme}://..."
            )
        self.database: db.Location = database_url or self.path
        self.path.parent.mkdir(parents=True, exist_ok=True)  # for spill files, whichever the database
        self.flush_seconds = flush_seconds
        self.max_backlog = log_max_backlog() if max_backlog is None else max_backlog
        self.retention_days = log_retention_days() if retention_days is None else retention_days
        self.retention_every_seconds = retention_every_seconds
        self.busy_timeout = busy_timeout
        self.close_timeout = close_timeout
        self.clock = clock
        self.before_write = before_write
        # Guards the queue and everything the request threads and the writer both read.
        self._state = threading.Condition()
        self._queue: list[tuple[str, tuple[Any, ...]]] = []
        self._accepted = 0  # records ever queued
        self._done = 0  # of those, the first ``_done`` are committed (or spilled, or dropped)
        self._committed = 0  # ... and the first ``_committed`` are in the database
        self._closing = False
        self._alive = True
        self._last_error: str | None = None
        self._counts: Counter[str] = Counter()
        # The writer thread's own: the rows taken from the queue and not yet committed.
        self._pending = LogRows()
        self._pending_upto = 0
        self._spills_waiting = True
        self._next_prune = 0.0
        # Opening migrates an older log and fails the start if the log cannot be opened at all.
        self._conn: Connection | None = self._open(startup=True)
        self._requests: Connection | None = self._open(startup=True)  # lookups and feedback
        self._requests_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # --- Request side ---------------------------------------------------------------------------

    def predicted(
        self,
        request_id: str,
        flight_key: str,
        model_version: str,
        variant: str,
        probability: float,
        features: dict[str, Any],
        prediction_time: float | None = None,
        shadow_model_version: str | None = None,
        shadow_probability: float | None = None,
    ) -> None:
        """Queue a prediction (``prediction_time``: the request's data time, unix seconds; the
        shadow challenger's version and probability for the same flight, when one was scored).
        Raises ``ValueError`` for a probability or time that is not a finite number, and
        :class:`LogUnavailable` when the log cannot take it: the prediction must not be served."""
        self.predicted_many(
            [
                (
                    request_id,
                    flight_key,
                    model_version,
                    variant,
                    probability,
                    features,
                    prediction_time,
                    shadow_model_version,
                    shadow_probability,
                )
            ]
        )

    def predicted_many(self, predictions: list[PredictionRecord]) -> None:
        """Queue a call's predictions at once, each as :meth:`predicted` takes it, in its order:
        all of them or, when one is invalid or the log cannot take them, none."""
        now = self.clock()
        rows = []
        for request_id, key, version, variant, probability, features, at, shadow_version, shadow_p in predictions:
            if not math.isfinite(probability):
                raise ValueError(
                    f"probability of prediction {request_id}: expected a finite number, got {probability!r}"
                )
            if (shadow_version is None) != (shadow_p is None) or not (shadow_p is None or math.isfinite(shadow_p)):
                raise ValueError(
                    f"shadow of prediction {request_id}: expected a model version and a finite probability, or "
                    f"neither; got {shadow_version!r}, {shadow_p!r}"
                )
            if at is not None and not math.isfinite(at):
                raise ValueError(f"prediction_time of prediction {request_id}: expected unix seconds, got {at!r}")
            # Serialized by the writer thread, off the request path.
            rows.append(
                (
                    "predictions",
                    (
                        request_id,
                        now,
                        key,
                        version,
                        variant,
                        float(probability),
                        features,
                        at,
                        shadow_version,
                        None if shadow_p is None else float(shadow_p),
                    ),
                )
            )
        self._accept(rows)

    def feedback(self, request_id: str, flight_key: str, delay: float, late: bool) -> None:
        """Queue an outcome for a logged prediction; it is kept only if the prediction has none
        (the first outcome stands). :meth:`record_feedback` says which, synchronously."""
        if not math.isfinite(delay):
            raise ValueError(f"departure delay of {request_id}: expected a finite number of minutes, got {delay!r}")
        self._accept([("feedback", (request_id, self.clock(), flight_key, float(delay), int(late)))])

    def _accept(self, records: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Queue ``(table, row)`` records, all or none."""
        with self._state:
            refusal = self._refusal()
            if refusal is not None:
                raise LogUnavailable(refusal)
            self._queue.extend(records)
            self._accepted += len(records)

    def crowded(self) -> bool:
        """Half the bound or more waits to be written: the writer is behind (a hint, no lock)."""
        return 2 * (self._accepted - self._done) >= self.max_backlog

    def _refusal(self) -> str | None:
        """Why a record would be refused now (the caller holds ``_state``), or None."""
        if self._closing:
            return "the prediction log is closed (the service is shutting down)"
        if not self._alive:
            return f"the prediction log's writer has stopped (last error: {self._last_error})"
        backlog = self._accepted - self._done
        if backlog >= self.max_backlog:
            return (
                f"the prediction log is not being written: {backlog} rows wait, the bound is {self.max_backlog} "
                f"rows (FLIGHT_DELAY_LOG_MAX_BACKLOG); last error: {self._last_error}"
            )
        return None

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued before the call is committed: the writer thread is woken
        and does it. Raises :class:`LogUnavailable` saying why if that takes longer than
        ``timeout`` seconds or the writer has stopped."""
        with self._state:
            target = self._accepted
            if self._committed >= target:
                return
            self._wake.set()
            self._state.wait_for(lambda: self._committed >= target or not self._alive, timeout)
            if self._committed >= target:
                return
            why = "the writer has stopped" if not self._alive else f"not within {timeout} s"
            raise LogUnavailable(
                f"the prediction log did not commit the {target - self._done} rows queued before this flush: "
                f"{why}; last error: {self._last_error}"
            )

    def lookup(self, request_id: str | None = None, flight_key: str | None = None) -> dict[str, Any] | None:
        """The logged prediction by request id, or the latest one for a flight key. Raises
        :class:`LogUnavailable` when the log cannot be read."""
        doing = f"cannot look up the prediction of {_which(request_id, flight_key)}"
        with self._requests_lock, self._request_connection(doing) as conn:
            return find_prediction(conn, request_id, flight_key)

    @contextmanager
    def _request_connection(self, doing: str) -> Iterator[Connection]:
        """The request threads' connection (the caller holds ``_requests_lock``), opened again
        after the database failed: a PostgreSQL server restarts, a SQLite file does not go away."""
        try:
            if self._requests is None:
                self._requests = self._open()
            yield self._requests
        except db.unavailable_errors(self.database) as exc:
            if self._requests is not None and db.is_postgres(self._requests):
                self._requests.close()
                self._requests = None
            raise LogUnavailable(f"{doing}: {_describe(exc)}") from exc

    def record_feedback(
        self,
        request_id: str | None = None,
        flight_key: str | None = None,
        *,
        departure_delay_minutes: float,
        late: bool,
        wait_seconds: float,
    ) -> RecordedFeedback:
        """Record the outcome of a prediction, once (synchronous: call it from a worker thread).

        Finds the prediction by ``request_id``, or the latest for ``flight_key`` (this worker's
        queue flushed first); if it is not there yet, polls for ``wait_seconds`` for another
        worker's commit. Then one write transaction inserts the outcome unless the prediction
        has one. Returns the prediction with ``first=True`` when this call recorded it,
        ``first=False`` when the same outcome was there already. Raises
        :class:`FeedbackConflict` when a different outcome is there, ``LookupError`` naming the
        key when no prediction is found, :class:`LogUnavailable` when the log cannot be written.
        """
        if (request_id is None) == (flight_key is None):
            raise ValueError(
                f"expected a request_id or a flight_key, exactly one; got request_id={request_id!r}, "
                f"flight_key={flight_key!r}"
            )
        if not math.isfinite(departure_delay_minutes):
            raise ValueError(f"expected a finite departure delay in minutes, got {departure_delay_minutes!r}")
        deadline = time.monotonic() + wait_seconds
        # A flight's latest prediction may still be in this worker's queue: flush before looking.
        found = None if flight_key is not None else self.lookup(request_id)
        if found is None:
            self.flush(timeout=max(wait_seconds, 1.0))
            found = self.lookup(request_id, flight_key)
        while found is None and time.monotonic() < deadline:
            time.sleep(max(0.0, min(POLL_SECONDS, deadline - time.monotonic())))
            found = self.lookup(request_id, flight_key)
        if found is None:
            raise LookupError(f"no logged prediction for {_which(request_id, flight_key)}")
        doing = f"cannot record the outcome of prediction {found['request_id']}"
        with self._requests_lock, self._request_connection(doing) as conn:
            return record_outcome(conn, found["request_id"], float(departure_delay_minutes), bool(late), self.clock())

    def status(self) -> LogStatus:
        with self._state:
            return LogStatus(
                writer_alive=self._alive and self._thread.is_alive(),
                accepting=self._refusal() is None,
                backlog=self._accepted - self._done,
                max_backlog=self.max_backlog,
                last_error=self._last_error,
                write_errors=self._counts["write_errors"],
                spilled=self._counts["spilled"],
                replayed=self._counts["replayed"],
                dropped=self._counts["dropped"],
                pruned=self._counts["pruned"],
            )

    def close(self) -> None:
        """Stop accepting, commit what is queued (retrying until ``close_timeout``), spill what
        still cannot be written, and close."""
        with self._state:
            self._closing = True
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.close_timeout + self.busy_timeout + 30)
        if self._thread.is_alive():
            log.error("prediction log: the writer thread is still running after close; its queue may be lost")
        with self._requests_lock:
            if self._requests is not None:
                self._requests.close()

    # --- Writer thread --------------------------------------------------------------------------

    def _open(self, startup: bool = False) -> Connection:
        # At start, workers opening a new log at once wait for each other (open_for_writing); a
        # reconnect while the log is failing waits no longer than a write would.
        conn = open_for_writing(self.database) if startup else open_for_writing(self.database, self.busy_timeout)
        if not db.is_postgres(conn):
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        return conn

    def _run(self) -> None:
        backoff = _Backoff()
        try:
            while not self._stop.is_set():
                if backoff.delay:
                    self._stop.wait(backoff.delay)  # only a close cuts a backoff short
                else:
                    self._wake.wait(self.flush_seconds)
                    self._wake.clear()
                if self._step():
                    backoff.succeeded()
                else:
                    backoff.failed()
            self._finish(backoff)
        except BaseException as exc:
            log.critical("prediction log: the writer thread stopped on %s", _describe(exc), exc_info=True)
            raise
        finally:
            with self._state:
                self._alive = False  # refuses records from now on: nothing is queued after the spill
            self._take()
            self._spill()
            if self._conn is not None:
                self._conn.close()
            LOG_BACKLOG.set(0)

    def _step(self) -> bool:
        """One round: replay spill files (until done), commit the queue, apply the retention.
        True when every write succeeded."""
        self._take()
        ok = True
        if self._spills_waiting:
            ok = self._attempt("replay", self._replay)
        ok = self._attempt("write", self._write) and ok
        if ok and self.retention_days > 0 and time.monotonic() >= self._next_prune:
            ok = self._attempt("retention", self._prune)
        with self._state:
            LOG_BACKLOG.set(self._accepted - self._done)
        return ok

    def _finish(self, backoff: _Backoff) -> None:
        """Closing: keep trying to commit until ``close_timeout``; what is left is spilled."""
        deadline = time.monotonic() + self.close_timeout
        while True:
            self._take()
            if self._attempt("write", self._write):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            time.sleep(min(backoff.failed(), remaining))

    def _take(self) -> None:
        """Move the queue into the pending rows, features encoded."""
        with self._state:
            taken, self._queue = self._queue, []
            upto = self._accepted
        for table, row in taken:
            if table == "feedback":
                self._pending.feedback.append(row)
                continue
            try:
                features = _to_json(row[6])
            except (TypeError, orjson.JSONEncodeError) as exc:
                self._drop(1, f"prediction {row[0]}: features not encodable as JSON ({exc})")
                continue
            self._pending.predictions.append((*row[:6], features, *row[7:]))
        self._pending_upto = upto

    def _settle(self, committed: bool) -> None:
        """The pending rows are dealt with (``committed``, or else spilled or lost): every record
        queued until the last take is done."""
        self._pending = LogRows()
        with self._state:
            self._done = self._pending_upto
            if committed:
                self._committed = self._pending_upto
            self._state.notify_all()

    def _attempt(self, what: str, write: Callable[[Connection], None]) -> bool:
        try:
            if self._conn is None:
                self._conn = self._open()
            if self.before_write is not None:
                self.before_write(self._conn)
            write(self._conn)
            return True
        except Exception as exc:  # counted, logged and retried: a dead writer is what must not happen
            self._failed(what, exc)
            return False

    def _failed(self, what: str, exc: Exception) -> None:
        described = _describe(exc)
        with self._state:
            self._counts["write_errors"] += 1
            self._last_error = described
            backlog = self._accepted - self._done
        LOG_WRITE_ERRORS.labels(db.error_name(exc)).inc()
        log.warning("prediction log: %s failed (%s); %d rows kept, retrying", what, described, backlog)
        conn = self._conn
        if conn is not None and db.in_transaction(conn):  # write_transaction rolls back; its ROLLBACK may fail
            try:
                conn.execute("ROLLBACK")
            except db.database_errors(conn) as rollback:
                log.error("prediction log: ROLLBACK failed (%s); reconnecting", _describe(rollback))
                conn.close()  # closing ends the transaction and releases the lock
                self._conn = None

    def _write(self, conn: Connection) -> None:
        if self._pending:
            with write_transaction(conn):
                refused = write_rows(conn, self._pending)
            self._report_refused(refused)
        self._settle(committed=True)

    def _replay(self, conn: Connection) -> None:
        replayed = replay_spills(conn, self.path)
        self._spills_waiting = False
        for file, why in replayed.invalid:
            log.error("prediction log: spill file not replayed, kept as %s: %s", file, why)
        self._report_refused(replayed.refused)
        if replayed.files:
            log.warning("prediction log: replayed %d rows from %d spill files", replayed.rows, len(replayed.files))
        with self._state:
            self._counts["replayed"] += replayed.rows
        LOG_REPLAYED.inc(replayed.rows)

    def _prune(self, conn: Connection) -> None:
        # The next batch at once while the last one was full; else in retention_every_seconds.
        self._next_prune = time.monotonic() + self.retention_every_seconds
        deleted = prune(conn, self.clock() - self.retention_days * DAY_SECONDS, PRUNE_BATCH)
        if deleted == PRUNE_BATCH:
            self._next_prune = time.monotonic()
        with self._state:
            self._counts["pruned"] += deleted

    def _spill(self) -> None:
        """At the end of the writer thread: whatever is still pending goes to a spill file."""
        if not self._pending:
            self._settle(committed=True)
            return
        n = len(self._pending)
        try:
            file = spill(self.path, self._pending, self.clock())
        except OSError as exc:
            self._drop(n, f"neither written to the log nor spilled ({exc})")
        else:
            log.warning("prediction log: %d rows not written at shutdown; spilled to %s for the next start", n, file)
            with self._state:
                self._counts["spilled"] += n
            LOG_SPILLED.inc(n)
        self._settle(committed=False)

    def _report_refused(self, refused: list[RefusedRow]) -> None:
        for row in refused:
            self._drop(1, f"{row.table} row of {row.row[0]} refused by the database ({row.error})")

    def _drop(self, n: int, why: str) -> None:
        log.error("prediction log: %d acknowledged rows lost: %s", n, why)
        with self._state:
            self._counts["dropped"] += n
        LOG_DROPPED.inc(n)
