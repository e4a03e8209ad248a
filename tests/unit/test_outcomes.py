"""The loop's readers of the prediction log: the data time, and the paired outcomes of champion
and shadow challenger, oldest feedback first, after a watermark."""

from __future__ import annotations

from datetime import UTC, datetime

from flight_delay.outcomes import latest_data_time, paired_outcomes
from flight_delay.prediction_log import open_for_writing
from tests.support.loop_log import write_log


def test_the_data_time_is_the_latest_prediction_time(tmp_path):
    path = tmp_path / "predictions.db"
    assert latest_data_time(path) is None
    open_for_writing(path).close()
    assert latest_data_time(path) is None
    write_log(path, "m:a", None, [0.2, 0.3, 0.4], None, [1, None, 0], prediction_time=1_368_000_000.0)
    assert latest_data_time(path) == datetime.fromtimestamp(1_368_000_120.0, tz=UTC)


def test_paired_outcomes_are_the_labelled_flights_both_models_scored(tmp_path):
    path = tmp_path / "predictions.db"
    write_log(path, "m:a", "m:b", [0.2, 0.3, 0.4, 0.5], [0.6, 0.7, 0.8, 0.9], [1, None, 0, 1])
    write_log(path, "m:a", "m:c", [0.1], [0.2], [1], first=4)  # another challenger
    write_log(path, "m:a", None, [0.1], None, [1], first=5)  # no shadow
    frame = paired_outcomes(path, "m:a", "m:b")
    assert frame["request_id"].tolist() == ["r000000", "r000002", "r000003"]
    assert frame["champion_p"].tolist() == [0.2, 0.4, 0.5]
    assert frame["challenger_p"].tolist() == [0.6, 0.8, 0.9]
    assert frame["late"].tolist() == [1, 0, 1]
    since = frame["received_at"].iloc[0].timestamp()
    assert paired_outcomes(path, "m:a", "m:b", since=since)["request_id"].tolist() == ["r000002", "r000003"]
    assert paired_outcomes(path, "m:b", "m:a").empty


def test_a_log_without_shadow_columns_has_no_paired_outcomes(tmp_path):
    path = tmp_path / "predictions.db"
    open_for_writing(path).close()
    assert paired_outcomes(path, "m:a", "m:b").empty
    assert paired_outcomes(tmp_path / "missing.db", "m:a", "m:b").empty
