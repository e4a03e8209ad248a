"""``python -m flight_delay.import_state``: a local data folder's prediction log and champion
history, written by the real writer and registry, copied into a real PostgreSQL and read back
through the project's own readers; idempotent; a conflicting history refused with nothing written."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import psycopg
import pytest

from flight_delay import import_state
from flight_delay.champion_history import HistoryConflict
from flight_delay.log_reading import read_log
from flight_delay.paths import DataLayout
from flight_delay.registry import ModelRegistry
from serving.log_writer import PredictionLogWriter

FEATURES = {"dep_hour": 5.0, "carrier": "UA", "distance": None}


def _write(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "weights.txt").write_text("w")


def _local_state(data_dir: Path, predictions: int = 23) -> DataLayout:
    """A data folder as the local profile leaves it: a log by the service's writer (with shadow
    figures, prediction times and feedback) and two models' histories by the registry."""
    layout = DataLayout(data_dir)
    clock = iter(float(1_700_000_000 + i) for i in range(10_000))
    log = PredictionLogWriter(layout.prediction_log, flush_seconds=0.01, clock=lambda: next(clock))
    try:
        for i in range(predictions):
            shadow = ("flight_delay:bbb", 0.5) if i % 3 == 0 else (None, None)
            at = None if i % 4 == 0 else 1_699_990_000.0 + i
            log.predicted(f"r{i}", f"k{i}", "flight_delay:aaa", "champion", i / 100, FEATURES, at, *shadow)
        log.flush()
        for i in range(0, predictions, 2):
            log.record_feedback(f"r{i}", departure_delay_minutes=float(i), late=i > 10, wait_seconds=1.0)
    finally:
        log.close()
    registry = ModelRegistry(layout.bentoml_home)
    a, b, c = (registry.register("flight_delay", _write, {}, {}) for _ in range(3))
    registry.promote("flight_delay", a, "first", expected_champion=None, details={"run_id": "x"})
    registry.challenge("flight_delay", b, "shadow", 0.25, "try it", expected_champion=a)
    registry.promote("flight_delay", b, "better", expected_champion=a)
    registry.reject("flight_delay", c, "worse")
    other = registry.register("other_model", _write, {}, {})
    registry.promote("other_model", other, "only one", expected_champion=None)
    return layout


def _rows(url: str, query: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchall()


def test_the_log_and_the_histories_are_copied_and_read_back_the_same(tmp_path, postgres_url, capsys):
    layout = _local_state(tmp_path / "data")
    assert import_state.main(["--from", str(layout.root), "--database-url", postgres_url, "--batch-size", "5"]) == 0

    local, copied = read_log(layout.prediction_log), read_log(postgres_url)
    assert len(local) == 23 and local["late"].notna().sum() == 12 and local["shadow_model_version"].notna().any()
    pd.testing.assert_frame_equal(copied, local)
    registry = ModelRegistry(layout.bentoml_home)
    database = ModelRegistry(tmp_path / "elsewhere", postgres_url)
    for name in ("flight_delay", "other_model"):
        assert database.history(name) == registry.history(name)
        assert database.state(name) == registry.state(name)
    out = capsys.readouterr().out
    assert "predictions: 23 rows copied of 23 read" in out and "feedback: 12 rows copied of 12 read" in out
    assert "champion_events flight_delay: 4 events copied" in out and "champion_events other_model: 1 events" in out
    assert f"copied {layout.root} into" in out


def test_a_second_run_copies_nothing_and_duplicates_nothing(tmp_path, postgres_url):
    layout = _local_state(tmp_path / "data")
    first = import_state.import_state(layout.root, postgres_url, batch_size=4)
    assert first.copied == {"predictions": 23, "feedback": 12}
    assert first.events == {"flight_delay": 4, "other_model": 1}

    again = import_state.import_state(layout.root, postgres_url, batch_size=7)
    assert again.read == {"predictions": 23, "feedback": 12}
    assert again.copied == {"predictions": 0, "feedback": 0}
    assert again.events == {"flight_delay": 0, "other_model": 0}
    assert _rows(postgres_url, "SELECT count(*), count(DISTINCT request_id) FROM predictions") == [(23, 23)]
    assert _rows(postgres_url, "SELECT count(*), count(DISTINCT request_id) FROM feedback") == [(12, 12)]
    assert _rows(postgres_url, "SELECT model_name, count(*) FROM champion_events GROUP BY 1 ORDER BY 1") == [
        ("flight_delay", 4),
        ("other_model", 1),
    ]
    pd.testing.assert_frame_equal(read_log(postgres_url), read_log(layout.prediction_log))


def test_an_interrupted_copy_is_finished_by_running_again(tmp_path, postgres_url):
    layout = _local_state(tmp_path / "data")
    # Half the predictions reached the database before the copy stopped (as if a batch had failed).
    partial = tmp_path / "partial" / "predictions.db"
    log = PredictionLogWriter(partial, flush_seconds=0.01, clock=lambda: 1_700_000_000.0)
    try:
        for row in read_log(layout.prediction_log).head(10).itertuples():
            log.predicted(row.request_id, row.flight_key, row.model_version, row.variant, row.probability, {})
        log.flush()
    finally:
        log.close()
    import_state.copy_log(partial, postgres_url)

    copied = import_state.import_state(layout.root, postgres_url)
    assert copied.copied == {"predictions": 13, "feedback": 12}  # the ten there already are kept as they were
    assert _rows(postgres_url, "SELECT count(*) FROM predictions") == [(23,)]


def test_a_different_history_in_the_database_is_refused_and_nothing_is_written(tmp_path, postgres_url, capsys):
    layout = _local_state(tmp_path / "data")
    # The database already has its own history of flight_delay: another model promoted there.
    theirs = ModelRegistry(tmp_path / "theirs", postgres_url)
    tag = theirs.register("flight_delay", _write, {}, {})
    theirs.promote("flight_delay", tag, "theirs", expected_champion=None)

    code = import_state.main(["--from", str(layout.root), "--database-url", postgres_url])
    assert code == 1
    err = capsys.readouterr().err
    assert "model flight_delay: the database holds a different champion history" in err
    assert "nothing was copied" in err
    assert [e.tag for e in theirs.history("flight_delay")] == [tag]
    assert theirs.history("other_model") == [], "not even the models without a conflict"
    assert read_log(postgres_url).empty, "nor the log"
    with pytest.raises(HistoryConflict, match="model flight_delay"):
        import_state.import_state(layout.root, postgres_url)


def test_the_history_is_refused_even_when_the_conflict_appears_during_the_copy(tmp_path, postgres_url):
    layout = _local_state(tmp_path / "data")
    from flight_delay.champion_history import DatabaseHistory

    events = import_state.read_histories(layout.bentoml_home)
    database = DatabaseHistory(postgres_url)
    database.import_events({"other_model": events["flight_delay"][:1]})  # written by someone else meanwhile
    with pytest.raises(HistoryConflict, match="model other_model"):
        database.import_events(events)
    assert database.events("flight_delay") == [], "one transaction: the other model is not written either"


def test_a_folder_without_a_log_or_history_copies_nothing_and_says_so(tmp_path, postgres_url, capsys):
    (tmp_path / "empty").mkdir()
    assert import_state.main(["--from", str(tmp_path / "empty"), "--database-url", postgres_url]) == 0
    out = capsys.readouterr().out
    assert "predictions: 0 rows copied of 0 read" in out and "no champion history to copy" in out


def test_the_database_url_is_required_and_must_be_postgresql(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FLIGHT_DELAY_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit):
        import_state.main(["--from", str(tmp_path)])
    assert "FLIGHT_DELAY_DATABASE_URL" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        import_state.main(["--from", str(tmp_path), "--database-url", "mysql://x@y/z"])
