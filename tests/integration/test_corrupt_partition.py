"""A corrupt day fails its blocking check; nothing downstream is built from it, in that run or
any later one, and the raw rows are kept as they came; a retraining asked over it fails, and the
drift sensor does not ask for the same failing run again and again."""

import json
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from flight_delay.forward import read_reference
from flight_delay.loop import LOOP_CONFIG_ENV
from flight_delay.model import MODEL_NAME
from pipeline.resources import PredictionLogResource
from pipeline.sensors import loop_sensors
from tests.support.graph import DAILY, REFERENCE, TRAINING, Graph
from tests.support.loop_log import FixedMetrics, write_log
from tests.support.source import write_source

BAD_DAY = "2013-01-03"


@pytest.fixture()
def corrupt_source(tmp_path, real_flights, real_weather):
    flights = real_flights.copy()
    day = flights.index[(flights["month"] == 1) & (flights["day"] == 3)]
    flights.loc[day[0], "distance"] = -50.0  # impossible value
    flights.loc[day[1], "dest"] = "XXX"  # unknown airport
    flights = pd.concat([flights, flights.loc[[day[2]]]], ignore_index=True)  # duplicate flight
    return write_source(tmp_path / "source", flights, real_weather)


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def test_corrupt_day_is_blocked(tmp_path, corrupt_source):
    instance = dg.DagsterInstance.ephemeral()
    graph = Graph(tmp_path / "data", corrupt_source, instance)
    assert graph.run(REFERENCE).success

    # Good days first: they build.
    good = graph.run(["raw_flights", "departures"], ("2013-01-01", "2013-01-02"))
    assert good.success

    result = graph.run(["raw_flights", "departures", "aircraft_last_departure"], (BAD_DAY, BAD_DAY))
    assert not result.success
    check = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ][0]
    assert check.asset_key == dg.AssetKey("raw_flights") and not check.passed
    failures = check.metadata["failures_by_check"].value
    for expected in ("greater_than(0)", "unknown airport code in dest", "multiple_fields_uniqueness"):
        assert expected in failures
    # Raw rows are kept for inspection; nothing was built from them.
    assert BAD_DAY in _materialized(instance, "raw_flights")
    assert BAD_DAY not in _materialized(instance, "departures")
    assert not (graph.data_dir / "lake" / "departures" / f"{BAD_DAY}.parquet").exists()

    # A later run that asks only for the downstream asset is refused too.
    later = graph.run(["departures"], (BAD_DAY, BAD_DAY))
    assert not later.success
    failure = [e for e in later.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "failed validation" in failure.event_specific_data.error.message
    assert BAD_DAY not in _materialized(instance, "departures")
    assert _materialized(instance, "departures") == {"2013-01-01", "2013-01-02"}


def test_a_retraining_over_a_corrupt_day_fails_and_the_drift_sensor_says_why_instead_of_asking_again(
    tmp_path, corrupt_source, monkeypatch
):
    """The drift sensor asks the real retrain_job for a window holding the corrupt day; the run
    fails on the missing day (the UI shows the step failure), and at the next cooldown the sensor
    names that failure and waits twice as long instead of asking for the same failing run again."""
    instance = dg.DagsterInstance.ephemeral()
    graph = Graph(tmp_path / "data", corrupt_source, instance)
    assert graph.run(REFERENCE).success
    assert graph.run(DAILY, ("2013-01-01", "2013-01-02")).success
    assert not graph.run(DAILY, (BAD_DAY, BAD_DAY)).success
    # The days after it: their departures build, their windowed features (which reach back over
    # the corrupt day) are refused until it is repaired.
    graph.run(DAILY, ("2013-01-04", "2013-01-06"))
    assert {"2013-01-04", "2013-01-06"} <= _materialized(instance, "departures")
    first_model = graph.run(TRAINING, run_config=graph.training_config("2013-01-01", "2013-01-02", "2013-01-02", 1))
    assert first_model.success
    registry = graph.resource("model_registry").registry()
    champion = registry.champion(MODEL_NAME)
    edges = read_reference(registry.model_dir(champion)).binnings["temp"].edges
    drifted = [[champion, "temp", "0", 1000.0]] + [[champion, "temp", str(i), 0.0] for i in range(1, len(edges) + 1)]

    # Training on January 3-5, evaluated on the 6th: the data time of the log is January 7.
    monkeypatch.setenv(LOOP_CONFIG_ENV, str(_loop_config(tmp_path)))
    (sensor,) = [s for s in loop_sensors() if s.name == "drift_retraining_sensor"]
    log_path = tmp_path / "predictions.db"
    resources = {
        "drift_metrics_source": FixedMetrics(bins=drifted),
        "model_registry": graph.resource("model_registry"),
        "prediction_log_db": PredictionLogResource(path=str(log_path)),
    }

    def tick(cursor: str | None, at: datetime, first: int) -> dg.SensorResult:
        write_log(log_path, champion, None, [0.3], None, [None], prediction_time=at.timestamp(), first=first)
        return sensor(dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance))

    asked = tick(None, datetime(2013, 1, 7, 12, tzinfo=UTC), 0)
    (request,) = asked.run_requests
    assert request.run_config["ops"]["training_set"]["config"]["train_start"] == "2013-01-03"
    job = graph.defs.resolve_job_def("retrain_job")
    run = job.execute_in_process(
        run_config=request.run_config,
        instance=instance,
        tags={**request.tags, "dagster/run_key": request.run_key},
        raise_on_error=False,
    )
    assert not run.success
    failure = next(e for e in run.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "training_set"
    assert "table departures lacks 1 of the 4 days asked for (first: 2013-01-03)" in (
        failure.event_specific_data.error.to_string()  # what the UI shows for the step
    )

    # A cooldown later: the drift is still there, the same window would fail the same way.
    waiting = tick(asked.cursor, datetime(2013, 1, 9, 12, tzinfo=UTC), 1)
    assert not waiting.run_requests
    message = waiting.skip_reason.skip_message
    assert "failed" in message and "2013-01-03" in message and "cooldown now 4 days" in message, message


def _loop_config(tmp_path) -> Path:
    path = tmp_path / "loop.yaml"
    path.write_text(
        json.dumps(
            {
                "drift": {"min_count": 500, "cooldown_days": 2, "exclude": ["month", "days_to_holiday", "weekday"]},
                "window": {"train_days": 3, "evaluation_days": 1},
            }
        )
    )
    return path
