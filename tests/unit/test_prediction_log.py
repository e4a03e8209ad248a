"""The prediction log read back as a dataset: ``read_log`` and the ``prediction_log`` asset."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from flight_delay.prediction_log import open_for_writing, read_log
from pipeline.definitions import build_definitions
from serving.log_writer import PredictionLogWriter

BASE = [
    "request_id",
    "predicted_at",
    "flight_key",
    "model_version",
    "variant",
    "probability",
    "departure_delay_minutes",
    "late",
    "feedback_at",
]
T0 = 1_700_000_000.0


@pytest.fixture()
def clock() -> list[float]:
    """The log's wall clock, set by the test: ``clock[0] = t``."""
    return [T0]


def _write(path: Path, clock: list[float]) -> None:
    log = PredictionLogWriter(path, clock=lambda: clock[0])
    log.predicted(
        "r1",
        "UA_1545_2013-01-01",
        "flight_delay:aaa",
        "champion",
        0.25,
        {"dep_hour": 5, "temp": 39.02, "carrier": "UA", "wind_gust": float("nan")},
    )
    clock[0] = T0 + 10
    log.predicted(
        "r2",
        "AA_1141_2013-01-01",
        "flight_delay:bbb",
        "challenger",
        0.75,
        {"dep_hour": 6, "temp": None, "carrier": None, "wind_gust": 12.5},
    )
    clock[0] = T0 + 20
    log.predicted(
        "r3",
        "B6_725_2013-01-01",
        "flight_delay:aaa",
        "champion",
        0.5,
        {"dep_hour": 7, "temp": 40.0, "carrier": "B6", "wind_gust": None},
    )
    clock[0] = T0 + 30
    log.feedback("r1", "UA_1545_2013-01-01", 2.0, False)
    clock[0] = T0 + 40
    log.feedback("r1", "UA_1545_2013-01-01", 45.0, True)  # a correction: the latest one counts
    log.feedback("r3", "B6_725_2013-01-01", -4.0, False)
    log.close()


def test_predictions_come_back_with_their_latest_feedback(tmp_path, clock):
    path = tmp_path / "predictions.db"
    _write(path, clock)
    frame = read_log(path)

    assert list(frame.columns) == [*BASE[:6], "dep_hour", "temp", "carrier", "wind_gust", *BASE[6:]]
    assert list(frame["request_id"]) == ["r1", "r2", "r3"]  # one row each, oldest first
    assert str(frame["predicted_at"].dtype) == "datetime64[ns, UTC]"
    assert list(frame["predicted_at"]) == [pd.Timestamp(T0 + s, unit="s", tz="UTC") for s in (0, 10, 20)]
    assert list(frame["model_version"]) == ["flight_delay:aaa", "flight_delay:bbb", "flight_delay:aaa"]
    assert list(frame["variant"]) == ["champion", "challenger", "champion"]
    assert list(frame["probability"]) == [0.25, 0.75, 0.5]
    assert list(frame["flight_key"]) == ["UA_1545_2013-01-01", "AA_1141_2013-01-01", "B6_725_2013-01-01"]

    # Features: numbers as floats with NaN for a missing value, text with None.
    assert list(frame["dep_hour"]) == [5, 6, 7]
    assert frame["temp"].iloc[0] == 39.02 and math.isnan(frame["temp"].iloc[1])
    assert list(frame["carrier"]) == ["UA", None, "B6"]
    assert math.isnan(frame["wind_gust"].iloc[0]) and frame["wind_gust"].iloc[1] == 12.5
    assert math.isnan(frame["wind_gust"].iloc[2])

    # Feedback: the latest record per request, nothing for r2.
    assert str(frame["late"].dtype) == "boolean"
    assert frame["late"].isna().tolist() == [False, True, False]
    assert frame["late"].iloc[0] and not frame["late"].iloc[2]
    assert frame["departure_delay_minutes"].iloc[0] == 45.0 and frame["departure_delay_minutes"].iloc[2] == -4.0
    assert math.isnan(frame["departure_delay_minutes"].iloc[1])
    assert frame["feedback_at"].iloc[0] == pd.Timestamp(T0 + 40, unit="s", tz="UTC")
    assert pd.isna(frame["feedback_at"].iloc[1])


def test_since_keeps_later_predictions(tmp_path, clock):
    path = tmp_path / "predictions.db"
    _write(path, clock)
    assert list(read_log(path, since=T0 + 10)["request_id"]) == ["r2", "r3"]  # inclusive
    assert list(read_log(path, since=T0 + 10.5)["request_id"]) == ["r3"]
    late = read_log(path, since=T0 + 1000)
    assert late.empty and list(late.columns) == BASE


def test_reading_leaves_a_running_writer_alone(tmp_path):
    path = tmp_path / "predictions.db"
    log = PredictionLogWriter(path, flush_seconds=60)
    try:
        log.predicted("a", "k", "m:1", "champion", 0.1, {"x": 1.0})
        log.flush()
        assert list(read_log(path)["request_id"]) == ["a"]
        log.predicted("b", "k", "m:1", "champion", 0.2, {"x": 2.0})
        log.flush()  # the writer still commits after a read
        assert list(read_log(path)["x"]) == [1.0, 2.0]
    finally:
        log.close()


def test_a_missing_file_is_an_empty_log(tmp_path):
    frame = read_log(tmp_path / "nowhere" / "predictions.db")
    assert frame.empty and list(frame.columns) == BASE
    assert str(frame["predicted_at"].dtype) == "datetime64[ns, UTC]"
    assert not (tmp_path / "nowhere").exists()  # reading creates nothing


def test_an_empty_log_has_the_base_columns(tmp_path):
    path = tmp_path / "predictions.db"
    PredictionLogWriter(path).close()
    frame = read_log(path)
    assert frame.empty and list(frame.columns) == BASE


def test_a_file_that_is_not_sqlite_is_refused(tmp_path):
    path = tmp_path / "predictions.db"
    path.write_bytes(b"this is not a database\n" * 200)
    expected = r"predictions\.db.*expected a SQLite database with tables predictions and feedback"
    with pytest.raises(ValueError, match=expected):
        read_log(path)


def test_a_database_without_the_tables_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE predictions (request_id TEXT)")
    with pytest.raises(ValueError, match=r"other\.db is not a prediction log: its table predictions lacks .*features"):
        read_log(path)
    path = tmp_path / "empty.db"
    sqlite3.connect(path).close()
    with pytest.raises(ValueError, match=r"empty\.db is not a prediction log: it has no table predictions"):
        read_log(path)


def test_the_asset_stores_the_log_in_the_lake(tmp_path, clock):
    data_dir = tmp_path / "data"
    defs = build_definitions(data_dir=str(data_dir))
    assets = list(defs.assets or [])

    # Before the service ever ran: an empty dataset, not a failure.
    result = dg.materialize(assets, selection=["prediction_log"], resources=defs.resources)
    assert result.success
    stored = data_dir / "lake" / "prediction_log" / "prediction_log.parquet"
    assert pd.read_parquet(stored).empty

    _write(data_dir / "prediction_log" / "predictions.db", clock)  # where the service writes
    result = dg.materialize(assets, selection=["prediction_log"], resources=defs.resources)
    assert result.success
    frame = pd.read_parquet(stored)
    pd.testing.assert_frame_equal(frame, read_log(data_dir / "prediction_log" / "predictions.db"))
    assert frame["late"].isna().sum() == 1

    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["rows"] == 3 and metadata["rows_with_feedback"] == 2
    assert metadata["models"] == {"flight_delay:aaa": 2, "flight_delay:bbb": 1}
    assert metadata["variants"] == {"challenger": 1, "champion": 2}
    assert metadata["first_prediction"] == T0 and metadata["last_prediction"] == T0 + 20
    assert metadata["path"] == str((data_dir / "prediction_log" / "predictions.db").resolve())


def _open_at(path: str, barrier: Any, errors: Any) -> None:
    barrier.wait()
    try:
        open_for_writing(Path(path)).close()
    except Exception as exc:  # reported to the test, which fails on it
        errors.put(repr(exc))


def test_workers_opening_a_new_log_at_once_all_start(tmp_path):
    """A service's workers open the same fresh log together; none may fail with "database is
    locked" (a worker that fails there exits, and the service serves on fewer workers)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    for round_ in range(40):
        barrier = ctx.Barrier(4)
        path = str(tmp_path / f"round{round_}" / "predictions.db")
        procs = [ctx.Process(target=_open_at, args=(path, barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
