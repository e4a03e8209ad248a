"""Several replicas of the service sharing one database (``FLIGHT_DELAY_DATABASE_URL``): each is a
real process with a data folder of its own, as on another machine; only PostgreSQL is shared."""

from __future__ import annotations

import multiprocessing
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from flight_delay import champion_history, registry
from flight_delay.log_reading import read_log
from flight_delay.prediction_log import FeedbackConflict, RecordedFeedback
from flight_delay.registry import ConflictError, ModelRegistry
from serving.log_writer import LogUnavailable, PredictionLogWriter
from tests.support.processes import race

FEATURES = {"dep_hour": 5.0, "carrier": "UA"}
REQUESTS = [f"r{i}" for i in range(5)]
READ_SECONDS = 0.3  # how long a racer takes between reading the history and writing its decision


def _predicting_replica(data_dir: str, url: str, results: Any) -> None:
    log = PredictionLogWriter(Path(data_dir) / "predictions.db", flush_seconds=0.05, database_url=url)
    try:
        for i, request_id in enumerate(REQUESTS):
            log.predicted(request_id, f"k{i}", "flight_delay:aaa", "champion", 0.1 * (i + 1), FEATURES)
        log.flush()
        results.put(("predicted", len(REQUESTS)))
    except Exception as exc:  # reported to the test, which fails on it
        results.put(("error", repr(exc)))
    finally:
        log.close()


def _feedback_replica(data_dir: str, url: str, results: Any) -> None:
    log = PredictionLogWriter(Path(data_dir) / "predictions.db", database_url=url)
    try:
        for request_id in REQUESTS:
            found = log.record_feedback(request_id, departure_delay_minutes=20.0, late=True, wait_seconds=30.0)
            results.put(("recorded", found.request_id, found.probability, found.first))
        try:
            log.record_feedback(REQUESTS[0], departure_delay_minutes=0.0, late=False, wait_seconds=1.0)
            results.put(("second outcome accepted", REQUESTS[0]))
        except FeedbackConflict:
            results.put(("conflict", REQUESTS[0]))
    except Exception as exc:
        results.put(("error", repr(exc)))
    finally:
        log.close()


def test_feedback_sent_to_one_replica_finds_the_predictions_another_replica_made(tmp_path, postgres_url):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    feedback = ctx.Process(target=_feedback_replica, args=(str(tmp_path / "b"), postgres_url, results))
    feedback.start()  # first: it waits for predictions it has never seen
    predicting = ctx.Process(target=_predicting_replica, args=(str(tmp_path / "a"), postgres_url, results))
    predicting.start()
    answers = [results.get(timeout=120) for _ in range(len(REQUESTS) + 2)]
    for p in (feedback, predicting):
        p.join(timeout=60)
        assert p.exitcode == 0
    assert [a for a in answers if a[0] == "error"] == []
    recorded = sorted(a[1:] for a in answers if a[0] == "recorded")
    assert recorded == [(r, pytest.approx(0.1 * (i + 1)), True) for i, r in enumerate(REQUESTS)]
    assert ("conflict", REQUESTS[0]) in answers  # the one outcome a prediction has is shared too

    frame = read_log(postgres_url)
    assert list(frame["request_id"]) == REQUESTS and frame["late"].tolist() == [True] * len(REQUESTS)
    # Neither replica wrote to a file of its own.
    assert not list(tmp_path.glob("*/predictions.db"))


_FOLD = registry.fold


def _slow_fold(events: Any) -> Any:
    time.sleep(READ_SECONDS)  # both racers have read the history before either writes
    return _FOLD(events)


def _promoting_replica(home: str, url: str | None, tag: str, barrier: Any, results: Any) -> None:
    try:
        champion_history.fold = registry.fold = _slow_fold  # in the database's decisions and the file's
        registry_object = ModelRegistry(home, url)
        barrier.wait()
        results.put(("promoted", registry_object.promote("m", tag, "race", expected_champion=None).tag))
    except ConflictError as exc:
        results.put(("conflict", str(exc)))
    except Exception as exc:
        results.put(("error", repr(exc)))


@pytest.fixture(params=["files", "postgres"])
def shared_history(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def _write(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "weights.txt").write_text("w")


def test_two_processes_promoting_against_the_same_champion_one_wins_and_one_event_is_kept(tmp_path, shared_history):
    home = tmp_path / "a" / "bentoml"
    first = ModelRegistry(home, shared_history)
    tags = [first.register("m", _write, {}, {}) for _ in range(2)]
    homes = [home, home]
    if shared_history:  # replicas on two machines: the same models, each in a store of its own
        shutil.copytree(home, tmp_path / "b" / "bentoml")
        homes[1] = tmp_path / "b" / "bentoml"
    answers = race(_promoting_replica, [(str(h), shared_history, tag) for h, tag in zip(homes, tags)])
    kinds = sorted(a[0] for a in answers)
    assert kinds == ["conflict", "promoted"], answers
    (winner,) = [a[1] for a in answers if a[0] == "promoted"]
    (conflict,) = [a[1] for a in answers if a[0] == "conflict"]
    assert f"expected champion none, actual {winner}" in conflict
    for h in homes:
        history = ModelRegistry(h, shared_history).history("m")
        assert [(e.action, e.tag) for e in history] == [("promote", winner)]


def test_a_decision_recorded_by_another_replica_changes_the_stamp(tmp_path, shared_history):
    mine = ModelRegistry(tmp_path / "bentoml", shared_history)
    (tag,) = [mine.register("m", _write, {}, {})]
    before = mine.stamp("m")
    assert mine.stamp("m") == before  # nothing changed: the same stamp
    ModelRegistry(tmp_path / "bentoml", shared_history).promote("m", tag, "first", expected_champion=None)
    assert mine.stamp("m") != before


def test_the_log_writer_and_the_registry_reconnect_after_the_database_restarts(tmp_path, postgres_server):
    url = postgres_server.create_database()
    history = ModelRegistry(tmp_path / "bentoml", url)
    (tag,) = [history.register("m", _write, {}, {})]
    log = PredictionLogWriter(tmp_path / "predictions.db", flush_seconds=0.01, database_url=url)
    try:
        log.predicted("before", "k1", "flight_delay:aaa", "champion", 0.2, FEATURES)
        log.flush()
        stamp = history.stamp("m")
        postgres_server.restart()  # every connection above is cut

        log.predicted("after", "k2", "flight_delay:aaa", "champion", 0.3, FEATURES)
        log.flush(timeout=30)  # the writer reconnects and commits
        answers = []
        for _ in range(2):  # the request connection was cut: at most one call fails, saying so
            try:
                answers.append(log.record_feedback("before", departure_delay_minutes=5.0, late=False, wait_seconds=1))
            except LogUnavailable as exc:
                answers.append(exc)
        assert any(isinstance(a, RecordedFeedback) and a.request_id == "before" for a in answers), answers
        assert log.status().writer_alive and log.status().backlog == 0

        with pytest.raises(psycopg.OperationalError):  # the registry's connection was cut too ...
            history.stamp("m")
        assert history.stamp("m") == stamp  # ... and is opened again by the next call
        history.promote("m", tag, "after the restart", expected_champion=None)
        assert history.stamp("m") != stamp
    finally:
        log.close()
    assert list(read_log(url)["request_id"]) == ["before", "after"]
