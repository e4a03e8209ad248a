"""The prediction log writer under faults: concurrent flushes, a database that is full, locked or
read-only, a shutdown that cannot write, retention, and feedback recorded once per prediction.

Every fault is real: SQLite itself refuses the writes (``PRAGMA max_page_count`` answers
SQLITE_FULL, ``PRAGMA query_only`` SQLITE_READONLY, another connection's ``BEGIN EXCLUSIVE``
SQLITE_BUSY), on real files, with the writer's real thread and, for the feedback race, two real
processes. The tests taking ``log_database`` run over SQLite and over a real PostgreSQL.
"""

from __future__ import annotations

import math
import multiprocessing
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from serving import log_writer
from serving.log_writer import PredictionLogWriter
from tests.support.postgres import LogDatabase

FEATURES = {"dep_hour": 5.0, "temp": 39.0, "carrier": "UA", "wind_gust": math.nan}
DAY = 86_400.0
T0 = 1_700_000_000.0


def predict(log: PredictionLogWriter, request_id: str, probability: float = 0.25, **kwargs: Any) -> None:
    log.predicted(
        request_id, f"2013-03-10:UA{request_id}:EWR", "flight_delay:aaa", "champion", probability, FEATURES, **kwargs
    )


def logged(where: Path | LogDatabase, table: str = "predictions") -> list[str]:
    database = where if isinstance(where, LogDatabase) else LogDatabase(where)
    return [r[0] for r in database.execute(f"SELECT request_id FROM {table} ORDER BY request_id")]


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.01)


def another_connection_can_write(path: Path) -> None:
    """A second connection takes the write lock within a second: the writer left no transaction
    open (its own attempts hold the lock for milliseconds)."""
    with closing(sqlite3.connect(path, timeout=1.0, isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")


def test_flush_from_request_threads_while_the_writer_runs_loses_and_repeats_nothing(tmp_path):
    path = tmp_path / "predictions.db"
    log = PredictionLogWriter(path, flush_seconds=0.001)
    errors: list[str] = []
    threads, rounds, burst = 6, 30, 300

    def requests(t: int) -> None:
        try:
            for r in range(rounds):
                for i in range(burst):
                    predict(log, f"t{t}-{r:02d}-{i:04d}")
                log.flush()
        except Exception as exc:  # reported to the test, which fails on it
            errors.append(repr(exc))

    workers = [threading.Thread(target=requests, args=(t,)) for t in range(threads)]
    switching = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads switch as often as the interpreter lets them
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(switching)
    try:
        assert errors == []
        log.flush()
        ids = logged(path)
        assert len(ids) == len(set(ids)) == threads * rounds * burst
        assert log.status().writer_alive
    finally:
        log.close()


@pytest.mark.parametrize("probability", [math.nan, math.inf, -math.inf])
def test_a_probability_that_is_not_a_number_is_refused_and_never_queued(tmp_path, probability):
    path = tmp_path / "predictions.db"
    log = PredictionLogWriter(path)
    try:
        with pytest.raises(ValueError, match=r"probability of prediction bad: expected a finite number, got"):
            predict(log, "bad", probability)
        predict(log, "good")
        log.flush()
        assert logged(path) == ["good"]
        assert log.status().backlog == 0 and log.status().writer_alive
        another_connection_can_write(path)
    finally:
        log.close()


def test_a_row_the_database_can_never_take_is_dropped_and_counted_and_the_others_are_written(log_database):
    path = log_database
    log = log_database.writer(flush_seconds=60)
    try:
        predict(log, "good-1")
        log.predicted("no-key", None, "flight_delay:aaa", "champion", 0.5, FEATURES)  # type: ignore[arg-type]
        log.predicted("bad-model", "k", {"not": "text"}, "champion", 0.5, FEATURES)  # type: ignore[arg-type]
        log.predicted("bad-features", "k", "flight_delay:aaa", "champion", 0.5, {"x": object()})
        predict(log, "good-2")
        log.flush()
        assert logged(path) == ["good-1", "good-2"]
        status = log.status()
        assert status.dropped == 3 and status.backlog == 0 and status.writer_alive
        if log_database.url is None:
            another_connection_can_write(log_database.path)
    finally:
        log.close()


def test_predictions_survive_a_postgres_that_refuses_writes_and_a_shutdown_spills_them(postgres_url, tmp_path):
    """PostgreSQL refuses every write while the fault is on (a read-only transaction, SQLSTATE
    25006): the writer keeps the rows, retries, commits them once it clears, and at a shutdown
    spills what it could not write to the local disk, for the next writer to replay."""
    refusing = [False]

    def hook(conn: Any) -> None:
        conn.execute(f"SET default_transaction_read_only = {'on' if refusing[0] else 'off'}")

    database = LogDatabase(tmp_path / "predictions.db", postgres_url)
    log = database.writer(flush_seconds=0.01, close_timeout=0.3, before_write=hook)
    predict(log, "before")
    log.flush()
    refusing[0] = True
    for i in range(20):
        predict(log, f"during-{i:02d}")
    wait_for(lambda: log.status().write_errors >= 2, "two failed writes")
    assert "25006" in (log.status().last_error or "") and log.status().backlog == 20
    refusing[0] = False
    log.flush()
    assert logged(database) == ["before", *[f"during-{i:02d}" for i in range(20)]]

    refusing[0] = True
    for request_id in ("spilled-1", "spilled-2"):
        predict(log, request_id)
    log.close()
    (spill,) = tmp_path.glob("predictions.db.spill-*.jsonl")
    assert log.status().spilled == 2 and "spilled-1" not in logged(database)
    restarted = database.writer(flush_seconds=0.01)
    try:
        wait_for(lambda: restarted.status().replayed == 2, "the spill file replayed into PostgreSQL")
        assert not spill.exists() and {"spilled-1", "spilled-2"} <= set(logged(database))
    finally:
        restarted.close()


class Fault:
    """A write fault SQLite itself answers, switched on and off by the test. ``hook`` runs on the
    writer's thread with its connection before every write (``before_write``)."""

    name = ""
    error = ""  # the SQLite error name the writer sees

    def __init__(self, path: Path) -> None:
        self.path = path
        self.active = False

    def hook(self, conn: sqlite3.Connection) -> None:
        pass

    def on(self) -> None:
        self.active = True

    def off(self) -> None:
        self.active = False


class FullDatabase(Fault):
    name, error = "full", "SQLITE_FULL"

    def hook(self, conn: sqlite3.Connection) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages if self.active else 4294967294}")


class ReadOnlyDatabase(Fault):
    name, error = "read-only", "SQLITE_READONLY"

    def hook(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA query_only = {int(self.active)}")


class LockedDatabase(Fault):
    """Another connection holds ``BEGIN EXCLUSIVE`` for the length of the fault."""

    name, error = "locked", "SQLITE_BUSY"

    def on(self) -> None:
        self.locker = sqlite3.connect(self.path, timeout=5, isolation_level=None)
        self.locker.execute("BEGIN EXCLUSIVE")
        super().on()

    def off(self) -> None:
        self.locker.execute("ROLLBACK")
        self.locker.close()
        super().off()


@pytest.mark.parametrize("fault_type", [FullDatabase, LockedDatabase, ReadOnlyDatabase], ids=lambda f: f.name)
def test_acknowledged_predictions_survive_a_write_fault(tmp_path, monkeypatch, fault_type: type[Fault]):
    """During the fault predictions are acknowledged until the backlog bound and refused beyond it;
    once it clears every acknowledged one is in the database."""
    from prometheus_client import REGISTRY

    path = tmp_path / "predictions.db"
    fault = fault_type(path)
    bound = 400
    monkeypatch.setenv("FLIGHT_DELAY_LOG_MAX_BACKLOG", str(bound))
    log = PredictionLogWriter(path, flush_seconds=0.01, busy_timeout=0.05, before_write=fault.hook)
    errors_metric = ("flight_delay_log_write_errors_total", {"error": fault.error})
    errors_before = REGISTRY.get_sample_value(*errors_metric) or 0.0
    try:
        predict(log, "before")
        log.flush()
        fault.on()
        acknowledged = ["before"]
        for i in range(50):
            predict(log, f"during-{i:05d}")
            acknowledged.append(f"during-{i:05d}")
        time.sleep(0.3)  # several failed attempts
        if fault_type is not LockedDatabase:
            another_connection_can_write(path)
        refused = None
        for i in range(50, 5 * bound):
            try:
                predict(log, f"during-{i:05d}")
            except log_writer.LogUnavailable as exc:
                refused = exc
                break
            acknowledged.append(f"during-{i:05d}")
        assert refused is not None, f"{len(acknowledged)} predictions acknowledged with the log failing"
        status = log.status()
        assert status.backlog == bound and not status.accepting and status.writer_alive
        assert status.write_errors > 0 and fault.error in (status.last_error or "")
        assert f"{bound} rows" in str(refused) and fault.error in str(refused)

        fault.off()
        log.flush(timeout=10)
        another_connection_can_write(path)
        assert sorted(acknowledged) == logged(path)
        assert log.status().backlog == 0 and log.status().accepting
        predict(log, "after")  # accepted again
        log.flush()
        assert "after" in logged(path)
        assert (REGISTRY.get_sample_value(*errors_metric) or 0.0) > errors_before
    finally:
        if fault.active:
            fault.off()
        log.close()


def test_a_shutdown_that_cannot_write_spills_and_the_next_writer_replays(tmp_path):
    path = tmp_path / "predictions.db"
    fault = ReadOnlyDatabase(path)
    log = PredictionLogWriter(path, flush_seconds=0.01, close_timeout=0.5, before_write=fault.hook)
    predict(log, "committed")
    log.flush()
    fault.on()
    queued = [f"spilled-{i:03d}" for i in range(20)]
    for request_id in queued:
        predict(log, request_id)
    log.feedback("committed", "2013-03-10:UAcommitted:EWR", 20.0, True)
    log.close()

    (spill,) = path.parent.glob("predictions.db.spill-*.jsonl")
    assert len(spill.read_text().splitlines()) == 21
    assert log.status().spilled == 21 and log.status().dropped == 0
    assert logged(path) == ["committed"]

    restarted = PredictionLogWriter(path, flush_seconds=0.01)
    try:
        wait_for(lambda: restarted.status().replayed == 21, "the spill file replayed")
        assert not spill.exists()
        assert logged(path) == sorted(["committed", *queued])
        assert logged(path, "feedback") == ["committed"]
    finally:
        restarted.close()


@pytest.mark.parametrize("retention_days", [30, 0])
def test_retention_deletes_old_predictions_and_their_feedback_only(log_database, retention_days):
    path = log_database
    now = [T0 - 40 * DAY]
    log = log_database.writer(
        flush_seconds=0.01, clock=lambda: now[0], retention_days=retention_days, retention_every_seconds=0.05
    )
    try:
        predict(log, "old")
        log.feedback("old", "2013-03-10:UAold:EWR", 20.0, True)
        now[0] = T0 - 29 * DAY
        predict(log, "recent")
        log.feedback("recent", "2013-03-10:UArecent:EWR", 3.0, False)
        log.flush()
        now[0] = T0
        predict(log, "new")
        log.flush()
        if retention_days:
            wait_for(lambda: "old" not in logged(path), "the 40-day-old prediction deleted")
            assert logged(path) == ["new", "recent"] and logged(path, "feedback") == ["recent"]
        else:
            time.sleep(0.3)  # six retention periods
            assert logged(path) == ["new", "old", "recent"] and logged(path, "feedback") == ["old", "recent"]
    finally:
        log.close()


def test_the_queued_feedback_keeps_one_outcome_per_prediction(log_database):
    log = log_database.writer()
    predict(log, "r1")
    log.feedback("r1", "2013-03-10:UAr1:EWR", 20.0, True)
    log.feedback("r1", "2013-03-10:UAr1:EWR", 3.0, False)
    log.close()
    assert log_database.execute("SELECT departure_delay_minutes FROM feedback") == [(20.0,)]


def test_feedback_is_recorded_once_and_a_different_outcome_is_a_conflict(log_database):
    path = log_database
    log = log_database.writer(flush_seconds=60)  # the prediction is still queued
    try:
        predict(log, "r1", 0.8, prediction_time=T0)
        first = log.record_feedback(request_id="r1", departure_delay_minutes=20.0, late=True, wait_seconds=0.5)
        assert first.first and first.request_id == "r1" and first.probability == 0.8
        assert first.model_version == "flight_delay:aaa" and first.variant == "champion"
        again = log.record_feedback(
            flight_key="2013-03-10:UAr1:EWR", departure_delay_minutes=20.0, late=True, wait_seconds=0.5
        )
        assert not again.first and again.request_id == "r1"
        with pytest.raises(
            log_writer.FeedbackConflict, match=r"r1 .*20\.0 minutes \(late\).* 3\.0 minutes \(on time\)"
        ):
            log.record_feedback(request_id="r1", departure_delay_minutes=3.0, late=False, wait_seconds=0.5)
        assert logged(path, "feedback") == ["r1"]
    finally:
        log.close()


def test_feedback_for_an_unknown_prediction_waits_then_names_the_key(log_database):
    log = log_database.writer()
    try:
        started = time.monotonic()
        with pytest.raises(LookupError, match="no logged prediction for flight_key 2013-03-10:ZZ1:EWR"):
            log.record_feedback(
                flight_key="2013-03-10:ZZ1:EWR", departure_delay_minutes=1.0, late=False, wait_seconds=0.3
            )
        assert time.monotonic() - started >= 0.3
    finally:
        log.close()


def test_feedback_finds_a_prediction_another_worker_commits_while_it_waits(log_database):
    mine = log_database.writer()
    other = log_database.writer(flush_seconds=0.2)  # another worker's log, a flush later
    try:
        predict(other, "theirs")
        found = mine.record_feedback(request_id="theirs", departure_delay_minutes=30.0, late=True, wait_seconds=2.0)
        assert found.first and found.request_id == "theirs"
    finally:
        other.close()
        mine.close()


def _race(database: LogDatabase, request_ids: list[str], delay: float, barrier: Any, results: Any) -> None:
    log = database.writer()
    try:
        for request_id in request_ids:
            barrier.wait()
            try:
                found = log.record_feedback(
                    request_id=request_id, departure_delay_minutes=delay, late=delay >= 15, wait_seconds=1.0
                )
                results.put((request_id, delay, "first" if found.first else "duplicate"))
            except log_writer.FeedbackConflict:
                results.put((request_id, delay, "conflict"))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", delay, repr(exc)))
    finally:
        log.close()


@pytest.mark.parametrize("outcomes", [(20.0, 20.0), (20.0, 3.0)], ids=["same", "different"])
def test_two_workers_racing_to_record_feedback_one_wins(log_database, outcomes):
    log = log_database.writer()
    request_ids = [f"r{i:02d}" for i in range(15)]
    for request_id in request_ids:
        predict(log, request_id)
    log.close()

    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(log_database, request_ids, d, barrier, results)) for d in outcomes]
    for p in procs:
        p.start()
    answers = [results.get(timeout=60) for _ in range(2 * len(request_ids))]
    for p in procs:
        p.join(timeout=60)
    assert [a for a in answers if a[0] == "error"] == []
    recorded = dict(log_database.execute("SELECT request_id, departure_delay_minutes FROM feedback"))
    for request_id in request_ids:
        kinds = sorted(kind for r, _, kind in answers if r == request_id)
        winner = next(d for r, d, kind in answers if r == request_id and kind == "first")
        assert kinds == (["duplicate", "first"] if outcomes[0] == outcomes[1] else ["conflict", "first"]), request_id
        assert recorded[request_id] == winner
