"""The shadow challenger in the prediction log: its two columns (added to an older log in place,
written, read back, spilled and replayed) and the outcomes the challenger's sequential test reads,
paired (shadow) and per variant (split). The tests taking ``log_database`` run over SQLite and
PostgreSQL."""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing

import orjson
import pandas as pd
import pytest

from flight_delay.log_reading import PAIRED_COLUMNS, SPLIT_COLUMNS, paired_outcomes, read_log, split_outcomes
from flight_delay.log_spill import replay_spills, spill_files
from flight_delay.prediction_log import open_for_writing
from serving.log_writer import PredictionLogWriter
from tests.support.postgres import LogDatabase

T0 = 1_700_000_000.0
CHAMPION, CHALLENGER = "flight_delay:aaa", "flight_delay:bbb"
FEATURES = {"dep_hour": 5.0, "carrier": "UA"}

# A log as the service wrote it before the shadow's columns: prediction_time, one outcome each.
BEFORE_SHADOW = """
CREATE TABLE predictions (
    request_id TEXT PRIMARY KEY, predicted_at REAL NOT NULL, flight_key TEXT NOT NULL,
    model_version TEXT NOT NULL, variant TEXT NOT NULL, probability REAL NOT NULL, features TEXT NOT NULL,
    prediction_time REAL
);
CREATE TABLE feedback (
    request_id TEXT NOT NULL, received_at REAL NOT NULL, flight_key TEXT NOT NULL,
    departure_delay_minutes REAL NOT NULL, late INTEGER NOT NULL
);
CREATE UNIQUE INDEX feedback_by_request ON feedback (request_id);
"""


def _old_log(path) -> None:
    with closing(sqlite3.connect(path)) as db, db:
        db.executescript(BEFORE_SHADOW)
        db.execute(
            "INSERT INTO predictions VALUES ('old', ?, 'k0', ?, 'champion', 0.4, '{\"x\": 1.0}', ?)",
            (T0, CHAMPION, T0 - 60),
        )
        db.execute("INSERT INTO feedback VALUES ('old', ?, 'k0', 30.0, 1)", (T0 + 5,))


def _columns(path) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[1] for row in db.execute("PRAGMA table_info(predictions)")]


def test_an_old_log_reads_without_shadow_figures_and_gains_the_columns_when_a_writer_opens_it(tmp_path):
    path = tmp_path / "predictions.db"
    _old_log(path)
    before = read_log(path)  # read-only: not migrated, the shadow read as missing
    assert "shadow_probability" not in _columns(path)
    assert before["shadow_model_version"].isna().all() and before["shadow_probability"].isna().all()
    assert paired_outcomes(path, CHAMPION, CHALLENGER).empty

    log = PredictionLogWriter(path, retention_days=0)
    log.predicted(
        "new", "k1", CHAMPION, "champion", 0.6, FEATURES, T0, shadow_model_version=CHALLENGER, shadow_probability=0.7
    )
    log.close()

    assert _columns(path)[-2:] == ["shadow_model_version", "shadow_probability"]
    after = read_log(path)
    pd.testing.assert_frame_equal(after.iloc[:1][list(before.columns)], before)  # the old row as it was
    new = after.iloc[1]
    assert new["shadow_model_version"] == CHALLENGER and new["shadow_probability"] == 0.7
    assert str(after["shadow_probability"].dtype) == "float64"
    open_for_writing(path).close()  # a migrated log opens again


def test_feedback_finds_the_shadow_probability_of_its_prediction(log_database):
    log = log_database.writer(flush_seconds=60)  # still queued: flushed first
    try:
        log.predicted(
            "r1", "k1", CHAMPION, "champion", 0.2, FEATURES, shadow_model_version=CHALLENGER, shadow_probability=0.9
        )
        log.predicted("r2", "k2", CHAMPION, "champion", 0.3, FEATURES)
        with_shadow = log.record_feedback("r1", departure_delay_minutes=40.0, late=True, wait_seconds=0.5)
        without = log.record_feedback("r2", departure_delay_minutes=0.0, late=False, wait_seconds=0.5)
    finally:
        log.close()
    assert (with_shadow.shadow_model_version, with_shadow.shadow_probability) == (CHALLENGER, 0.9)
    assert (without.shadow_model_version, without.shadow_probability) == (None, None)


@pytest.mark.parametrize("shadow", [(CHALLENGER, None), (None, 0.5), (CHALLENGER, math.nan)])
def test_a_shadow_figure_needs_a_version_and_a_finite_probability(tmp_path, shadow):
    log = PredictionLogWriter(tmp_path / "predictions.db")
    try:
        with pytest.raises(ValueError, match="shadow of prediction r1"):
            log.predicted(
                "r1",
                "k1",
                CHAMPION,
                "champion",
                0.2,
                FEATURES,
                shadow_model_version=shadow[0],
                shadow_probability=shadow[1],
            )
    finally:
        log.close()


def test_spilled_rows_replay_with_their_shadow_and_rows_spilled_before_it_without(log_database):
    path = log_database.path  # the spill files stay beside the log's file, also with the log in PostgreSQL
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = open_for_writing(log_database.location)
    new = ["r1", T0, "k1", CHAMPION, "champion", 0.2, "{}", T0, CHALLENGER, 0.9]
    old = ["r0", T0, "k0", CHAMPION, "champion", 0.4, "{}", T0]  # written by the version before
    spilled = path.with_name(f"{path.name}.spill-1-1.jsonl")
    spilled.write_bytes(b"".join(orjson.dumps({"table": "predictions", "row": r}) + b"\n" for r in (new, old)))
    done = replay_spills(conn, path)
    conn.close()
    assert done.rows == 2 and not done.invalid and not spill_files(path)
    frame = read_log(log_database.location).set_index("request_id")
    assert (frame.loc["r1", "shadow_model_version"], frame.loc["r1", "shadow_probability"]) == (CHALLENGER, 0.9)
    assert frame.loc["r0", "shadow_model_version"] is None and math.isnan(frame.loc["r0", "shadow_probability"])


def _traffic(database: LogDatabase, clock: list[float]) -> None:
    """Champion rows with and without a shadow figure, a split challenger's rows, another model's
    rows, and outcomes arriving in another order than the predictions."""
    log = database.writer(clock=lambda: clock[0], retention_days=0)
    shadow = {"shadow_model_version": CHALLENGER}
    log.predicted("a", "ka", CHAMPION, "champion", 0.2, FEATURES, T0 - 100, **shadow, shadow_probability=0.3)
    log.predicted("b", "kb", CHAMPION, "champion", 0.6, FEATURES, None, **shadow, shadow_probability=0.5)
    log.predicted("c", "kc", CHAMPION, "champion", 0.4, FEATURES, T0 - 90)  # the shadow failed here
    log.predicted("d", "kd", CHAMPION, "champion", 0.1, FEATURES, T0 - 80, **shadow, shadow_probability=0.2)
    log.predicted("e", "ke", CHALLENGER, "challenger", 0.7, FEATURES, T0 - 70)  # a split's challenger
    log.predicted("f", "kf", "flight_delay:zzz", "champion", 0.5, FEATURES, T0 - 60)  # another champion
    log.predicted(
        "g",
        "kg",
        CHAMPION,
        "champion",
        0.9,
        FEATURES,
        T0 - 50,
        shadow_model_version="flight_delay:yyy",
        shadow_probability=0.1,
    )  # another shadow
    for request_id, late in (("b", True), ("a", False), ("c", True), ("e", False), ("f", True), ("g", True)):
        clock[0] += 1
        log.feedback(request_id, f"k{request_id}", 30.0 if late else 0.0, late)  # "d" has no outcome yet
    log.close()


def test_paired_outcomes_are_the_champion_rows_with_the_challengers_shadow_figure_and_an_outcome(
    log_database, tmp_path
):
    path, clock = log_database.location, [T0]
    _traffic(log_database, clock)
    pairs = paired_outcomes(path, CHAMPION, CHALLENGER)
    assert tuple(pairs.columns) == PAIRED_COLUMNS
    assert list(pairs["request_id"]) == ["b", "a"]  # in the order the outcomes came
    assert list(pairs["late"]) == [True, False] and pairs["late"].dtype == bool
    assert list(pairs["champion_p"]) == [0.6, 0.2] and list(pairs["challenger_p"]) == [0.5, 0.3]
    assert list(pairs["received_at"]) == [pd.Timestamp(T0 + s, unit="s", tz="UTC") for s in (1, 2)]
    # The data time: the request's prediction time, else when the prediction was logged.
    assert list(pairs["prediction_time"]) == [
        pd.Timestamp(T0, unit="s", tz="UTC"),
        pd.Timestamp(T0 - 100, unit="s", tz="UTC"),
    ]
    assert list(paired_outcomes(path, CHAMPION, CHALLENGER, since=T0 + 1)["request_id"]) == ["a"]  # after it
    assert paired_outcomes(path, CHALLENGER, CHAMPION).empty
    assert paired_outcomes(tmp_path / "none.db", CHAMPION, CHALLENGER).empty


def test_split_outcomes_are_each_variants_rows_with_an_outcome(log_database):
    path, clock = log_database.location, [T0]
    _traffic(log_database, clock)
    split = split_outcomes(path, CHAMPION, CHALLENGER)
    assert tuple(split.columns) == SPLIT_COLUMNS
    assert list(split["request_id"]) == ["b", "a", "c", "e", "g"]
    assert list(split["variant"]) == ["champion"] * 3 + ["challenger", "champion"]
    assert list(split["model_version"]) == [CHAMPION] * 3 + [CHALLENGER, CHAMPION]
    assert list(split["p"]) == [0.6, 0.2, 0.4, 0.7, 0.9]
    assert list(split["late"]) == [True, False, True, False, True]
    assert list(split_outcomes(path, CHAMPION, CHALLENGER, since=T0 + 3)["request_id"]) == ["e", "g"]
