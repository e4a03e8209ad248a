"""The loop's sensors, evaluated with build_sensor_context against a real local registry and
prediction log: what they request (run keys, run config, tags), what they skip and why, and
what their cursors carry from one tick to the next (cooldown in data time, counts pooled until
the minimum, the sequential test's state and feedback watermark)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from flight_delay.drift import REFERENCE_FILE, Binning, Reference
from flight_delay.loop import HOLD_OUT_FLIGHTS, HOLD_OUT_TEST, LOOP_CONFIG_ENV, ChallengerPolicy, hold_out_test
from flight_delay.model import MODEL_NAME
from flight_delay.registry import ModelRegistry
from pipeline.assets.decisions import model_decisions
from pipeline.resources import LocalModelRegistry, PredictionLogResource
from pipeline.sensors import (
    DriftCursor,
    build_challenger_sensor,
    build_drift_retraining_sensor,
    build_rollback_sensor,
    loop_sensors,
)
from tests.support.loop_log import FixedMetrics, write_log

AT = datetime(2013, 5, 10, 15, 0, tzinfo=UTC)  # data time of the log's first prediction
SHARES = {"0": 0.3, "1": 0.4, "2": 0.3, "missing": 0.0}
REFERENCE = Reference(
    {f: Binning(f, edges=(10.0, 20.0)) for f in ("temp", "wind_speed")}, dict.fromkeys(("temp", "wind_speed"), SHARES)
)


def _write_model(path: Path) -> None:
    path.mkdir(parents=True)
    (path / REFERENCE_FILE).write_text(REFERENCE.to_json())


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "bentoml"


@pytest.fixture()
def registry(home: Path) -> ModelRegistry:
    return ModelRegistry(home)


@pytest.fixture()
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "predictions.db"


def _models(registry: ModelRegistry, n: int) -> list[str]:
    return [registry.register(MODEL_NAME, _write_model, {}, {}) for _ in range(n)]


def _window(model: str, n: int, drifted: bool = True) -> list[list]:
    temp = {"0": 0.9, "1": 0.05, "2": 0.05} if drifted else {"0": 0.3, "1": 0.4, "2": 0.3}
    calm = {"0": 0.3, "1": 0.4, "2": 0.3}
    return [[model, "temp", b, n * s] for b, s in temp.items()] + [
        [model, "wind_speed", b, n * s] for b, s in calm.items()
    ]


def _resources(home: Path, log_path: Path, bins: list[list] | None = None, disjoint: bool = True) -> dict:
    return {
        "drift_metrics_source": FixedMetrics(bins=bins or [], disjoint=disjoint),
        "model_registry": LocalModelRegistry(bentoml_home=str(home)),
        "prediction_log_db": PredictionLogResource(path=str(log_path)),
    }


def _tick(sensor: dg.SensorDefinition, resources: dict, cursor: str | None = None) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, resources=resources, instance=dg.DagsterInstance.ephemeral())
    return sensor(context)


def _log_at(log_path: Path, champion: str, at: datetime, first: int = 0) -> None:
    write_log(log_path, champion, None, [0.3], None, [None], prediction_time=at.timestamp(), first=first)


# -- drift → retraining ----------------------------------------------------------------------
def test_drift_sensor_skips_without_a_champion_or_a_data_time(home, registry, log_path):
    sensor = build_drift_retraining_sensor()
    (a,) = _models(registry, 1)
    assert "no champion" in _tick(sensor, _resources(home, log_path)).skip_reason.skip_message
    registry.promote(MODEL_NAME, a, "first", None)
    assert "no data time" in _tick(sensor, _resources(home, log_path, _window(a, 1000))).skip_reason.skip_message


def test_drift_requests_a_retraining_window_ending_at_the_data_time_with_its_figures(home, registry, log_path):
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    result = _tick(sensor, _resources(home, log_path, _window(a, 1000)))
    (request,) = result.run_requests
    assert request.run_key.startswith(f"drift:{a}:2013-05-10:")
    assert request.run_config == {
        "ops": {
            "training_set": {
                "config": {
                    "train_start": "2013-01-01",  # a year back, not before the data begin
                    "train_end": "2013-04-25",
                    "evaluation_start": "2013-04-26",
                    "evaluation_end": "2013-05-09",
                }
            }
        }
    }
    assert request.tags["flight_delay/trigger"] == "drift" and request.tags["flight_delay/model_version"] == a
    assert (
        request.tags["flight_delay/drift.temp"].startswith("psi=")
        and "n=1000" in request.tags["flight_delay/drift.temp"]
    )
    assert "flight_delay/drift.wind_speed" not in request.tags  # no drift there
    assert json.loads(result.cursor)["last_trigger"] == AT.isoformat()
    # The same tick again without the cursor asks for the same run (Dagster dedupes on the key).
    assert _tick(sensor, _resources(home, log_path, _window(a, 1000))).run_requests[0].run_key == request.run_key


def test_drift_without_enough_values_is_pooled_over_ticks_until_the_minimum(home, registry, log_path):
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    first = _tick(sensor, _resources(home, log_path, _window(a, 300)))
    assert not first.run_requests and "500 live values" in first.skip_reason.skip_message
    second = _tick(sensor, _resources(home, log_path, _window(a, 300)), first.cursor)
    assert len(second.run_requests) == 1 and "n=600" in second.run_requests[0].tags["flight_delay/drift.temp"]
    # Sliding windows (Prometheus's) are not added up: each must hold the minimum on its own.
    first = _tick(sensor, _resources(home, log_path, _window(a, 300), disjoint=False))
    again = _tick(sensor, _resources(home, log_path, _window(a, 300), disjoint=False), first.cursor)
    assert not again.run_requests and "500 live values" in again.skip_reason.skip_message


def test_drift_is_judged_on_the_latest_days_that_hold_the_minimum(home, registry, log_path):
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    calm = _tick(sensor, _resources(home, log_path, _window(a, 1000, drifted=False)))
    assert not calm.run_requests and "0 of 2 features" in calm.skip_reason.skip_message
    assert set(DriftCursor.from_json(calm.cursor).days) == {"2013-05-10"}
    # The next day 400 drifted values are too few alone: the window reaches back over the calm day.
    _log_at(log_path, a, AT + timedelta(days=1), first=1)
    mixed = _tick(sensor, _resources(home, log_path, _window(a, 400)), calm.cursor)
    assert not mixed.run_requests and "0 of 2 features" in mixed.skip_reason.skip_message
    # 200 more drifted values that day: the latest day holds the minimum on its own, and the calm
    # day falls out of the window and out of the cursor.
    drifted = _tick(sensor, _resources(home, log_path, _window(a, 200)), mixed.cursor)
    (request,) = drifted.run_requests
    assert "n=600" in request.tags["flight_delay/drift.temp"]
    assert set(DriftCursor.from_json(drifted.cursor).days) == {"2013-05-11"}


def test_when_the_cooldown_ends_drift_is_judged_at_once_on_the_latest_values(home, registry, log_path):
    """Windows judged during the cooldown are not started over: the first tick after it judges the
    latest days, however few values that tick read."""
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    cursor = _tick(sensor, _resources(home, log_path, _window(a, 1000))).cursor
    for day in range(1, 7):  # a week of drifted days, 300 values each, while cooling down
        _log_at(log_path, a, AT + timedelta(days=day), first=day)
        cooling = _tick(sensor, _resources(home, log_path, _window(a, 300)), cursor)
        assert not cooling.run_requests and "cooling down" in cooling.skip_reason.skip_message
        cursor = cooling.cursor
    _log_at(log_path, a, AT + timedelta(days=7), first=7)
    (request,) = _tick(sensor, _resources(home, log_path, _window(a, 100)), cursor).run_requests
    assert ":2013-05-17:" in request.run_key and "n=700" in request.tags["flight_delay/drift.temp"]


def test_a_cursor_from_before_the_sliding_window_is_read_and_its_counts_let_go(home, registry, log_path):
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    old = json.dumps({"last_trigger": None, "model": a, "pending": [["temp", "0", 450.0]], "run_key": None})
    result = _tick(build_drift_retraining_sensor(), _resources(home, log_path, _window(a, 300)), old)
    assert not result.run_requests and "500 live values" in result.skip_reason.skip_message


def test_the_cooldown_counts_in_the_logs_data_time(home, registry, log_path):
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    first = _tick(sensor, _resources(home, log_path, _window(a, 1000)))
    assert first.run_requests
    _log_at(log_path, a, AT + timedelta(days=6), first=1)  # six days of data later, whatever the clock says
    cooling = _tick(sensor, _resources(home, log_path, _window(a, 1000)), first.cursor)
    assert not cooling.run_requests and "cooling down" in cooling.skip_reason.skip_message
    _log_at(log_path, a, AT + timedelta(days=7), first=2)
    later = _tick(sensor, _resources(home, log_path, _window(a, 1000)), cooling.cursor)
    (request,) = later.run_requests
    assert request.run_key != first.run_requests[0].run_key and ":2013-05-17:" in request.run_key
    assert request.run_config["ops"]["training_set"]["config"]["evaluation_end"] == "2013-05-16"


def test_a_failed_retraining_is_not_asked_again_at_every_cooldown_and_the_skip_says_why(home, registry, log_path):
    """A corrupt day in the training window fails the requested run; the sensor waits twice the
    cooldown before asking again (then four times, ...), names the failed run and its error, and
    a retraining that succeeds brings the cooldown back."""
    (a,) = _models(registry, 1)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    sensor = build_drift_retraining_sensor()
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor: str | None) -> dg.SensorResult:
        resources = _resources(home, log_path, _window(a, 1000))
        return sensor(dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance))

    def run(key: str, ok: bool) -> None:
        @dg.asset(name="training_set")
        def stand_in() -> None:
            if not ok:
                raise ValueError("training_set: offline table flights_daily/2013-05-03.parquet is corrupt")

        dg.materialize([stand_in], instance=instance, tags={"dagster/run_key": key}, raise_on_error=False)

    first = tick(None)
    run(first.run_requests[0].run_key, ok=False)
    _log_at(log_path, a, AT + timedelta(days=7), first=1)  # a cooldown later: no new request
    waiting = tick(first.cursor)
    assert not waiting.run_requests
    message = waiting.skip_reason.skip_message
    assert "the last retraining" in message and "failed" in message and "2013-05-03.parquet is corrupt" in message
    assert "cooldown now 14 days" in message
    _log_at(log_path, a, AT + timedelta(days=14), first=2)  # twice the cooldown: asked again
    second = tick(waiting.cursor)
    (request,) = second.run_requests
    run(request.run_key, ok=False)
    _log_at(log_path, a, AT + timedelta(days=14 + 27), first=3)  # the second failure: four cooldowns
    assert not tick(second.cursor).run_requests
    _log_at(log_path, a, AT + timedelta(days=14 + 28), first=4)
    third = tick(second.cursor)
    (request,) = third.run_requests
    run(request.run_key, ok=True)  # the data was repaired: the cooldown is back to one
    _log_at(log_path, a, AT + timedelta(days=14 + 28 + 7), first=5)
    assert tick(third.cursor).run_requests


def test_drift_of_another_model_does_not_count(home, registry, log_path):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    _log_at(log_path, a, AT)
    result = _tick(build_drift_retraining_sensor(), _resources(home, log_path, _window(b, 5000)))
    assert not result.run_requests and "no feature" in result.skip_reason.skip_message


# -- challenger --------------------------------------------------------------------------------
def _late(n: int, seed: int = 5) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < 0.3).astype("int64")


def _shadow_log(log_path: Path, champion: str, shadow: str, champion_p, shadow_p, late, first: int = 0) -> None:
    write_log(log_path, champion, shadow, list(champion_p), list(shadow_p), list(late), first=first)


def test_challenger_sensor_skips_without_a_shadow_challenger(home, registry, log_path):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    sensor = build_challenger_sensor()
    assert _tick(sensor, _resources(home, log_path)).skip_reason.skip_message == "no shadow challenger"
    registry.challenge(MODEL_NAME, b, "split", 0.5, "by hand", a)
    assert _tick(sensor, _resources(home, log_path)).skip_reason.skip_message == "no shadow challenger"


def test_a_better_shadow_challenger_is_promoted_once_the_test_says_so_counting_each_flight_once(
    home, registry, log_path
):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    late = _late(260)
    sharp = np.where(late == 1, 0.8, 0.2)
    _shadow_log(log_path, a, b, [0.3] * 150, sharp[:150], late[:150])
    sensor = build_challenger_sensor()
    resources = _resources(home, log_path)
    waiting = _tick(sensor, resources)
    assert not waiting.run_requests and "waiting for 200" in waiting.skip_reason.skip_message
    cursor = json.loads(waiting.cursor)
    assert (cursor["champion"], cursor["challenger"], cursor["requested"]) == (a, b, None)
    _shadow_log(log_path, a, b, [0.3] * 110, sharp[150:], late[150:], first=150)
    result = _tick(sensor, resources, waiting.cursor)
    (request,) = result.run_requests
    assert request.run_key == f"challenger:{a}:{b}:promote"
    config = request.run_config["ops"]["model_decisions"]["config"]
    assert (config["action"], config["model_version"], config["expected_champion"]) == ("promote", b, a)
    assert json.loads(config["figures"])["n"] == 260  # the first 150 flights counted once
    again = _tick(sensor, resources, result.cursor)
    assert not again.run_requests and "promote already requested" in again.skip_reason.skip_message
    # The requested run applies it: b serves, a is scored in shadow as the rollback guard.
    applied = dg.materialize(
        [model_decisions],
        resources={"model_registry": resources["model_registry"]},
        run_config=request.run_config,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert applied.success and registry.state(MODEL_NAME).champion == b
    guard = _tick(sensor, resources, result.cursor)
    assert "rollback guard" in guard.skip_reason.skip_message


def test_a_worse_shadow_challenger_is_retired(home, registry, log_path):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    late = _late(400)
    _shadow_log(log_path, a, b, np.where(late == 1, 0.8, 0.2), [0.3] * 400, late)
    (request,) = _tick(build_challenger_sensor(), _resources(home, log_path)).run_requests
    assert request.run_key == f"challenger:{a}:{b}:retire"
    assert request.run_config["ops"]["model_decisions"]["config"]["action"] == "retire"


def test_a_new_challenger_starts_a_new_test(home, registry, log_path):
    a, b, c = _models(registry, 3)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    late = _late(150)
    _shadow_log(log_path, a, b, [0.3] * 150, np.where(late == 1, 0.8, 0.2), late)
    sensor = build_challenger_sensor()
    first = _tick(sensor, _resources(home, log_path))
    registry.challenge(MODEL_NAME, c, "shadow", 1.0, "retrained again", a)
    _shadow_log(log_path, a, c, [0.3] * 60, np.where(late[:60] == 1, 0.8, 0.2), late[:60], first=150)
    second = _tick(sensor, _resources(home, log_path), first.cursor)
    assert "60 paired flights" in second.skip_reason.skip_message
    assert json.loads(second.cursor)["challenger"] == c


# -- rollback ----------------------------------------------------------------------------------
def _guarded(registry: ModelRegistry) -> tuple[str, str]:
    """a was champion, b promoted over it, a scored in shadow beside b."""
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    registry.promote(MODEL_NAME, b, "better live", a)
    registry.challenge(MODEL_NAME, a, "shadow", 1.0, "rollback guard", b)
    return a, b


def test_rollback_sensor_skips_without_a_guard(home, registry, log_path):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)  # a challenger, not a guard
    assert _tick(build_rollback_sensor(), _resources(home, log_path)).skip_reason.skip_message == (
        "no promotion under guard"
    )


def test_a_worse_new_champion_is_rolled_back_at_the_minimum_sample_and_the_run_restores_the_old_one(
    home, registry, log_path
):
    a, b = _guarded(registry)
    late = _late(300)
    # The new champion b answers a coin toss; the previous champion a, in shadow, leans right.
    _shadow_log(log_path, b, a, [0.5] * 299, np.where(late[:299] == 1, 0.9, 0.1), late[:299])
    sensor = build_rollback_sensor()
    resources = _resources(home, log_path)
    waiting = _tick(sensor, resources)
    assert not waiting.run_requests and "waiting for 300" in waiting.skip_reason.skip_message
    _shadow_log(log_path, b, a, [0.5], [0.9 if late[299] else 0.1], late[299:], first=299)
    (request,) = _tick(sensor, resources, waiting.cursor).run_requests
    assert request.run_key == f"rollback-guard:{b}:{a}:rollback"
    config = request.run_config["ops"]["model_decisions"]["config"]
    assert (config["action"], config["model_version"], config["expected_champion"]) == ("rollback", a, b)
    assert json.loads(config["figures"])["n"] == 300
    applied = dg.materialize(
        [model_decisions],
        resources={"model_registry": resources["model_registry"]},
        run_config=request.run_config,
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert applied.success
    state = registry.state(MODEL_NAME)
    assert state.champion == a and state.challenger is None and b in state.barred
    assert registry.history(MODEL_NAME)[-1].details["dagster_run_id"] == applied.run_id


def test_a_better_new_champion_is_kept(home, registry, log_path):
    a, b = _guarded(registry)
    late = _late(600)
    _shadow_log(log_path, b, a, np.where(late == 1, 0.9, 0.1), [0.5] * 600, late)
    (request,) = _tick(build_rollback_sensor(), _resources(home, log_path)).run_requests
    assert request.run_key == f"rollback-guard:{b}:{a}:keep"
    assert request.run_config["ops"]["model_decisions"]["config"]["action"] == "keep"


def test_the_loop_configuration_file_reaches_the_sensors(tmp_path, monkeypatch):
    path = tmp_path / "loop.yaml"
    path.write_text("drift: {threshold: 0.35, cooldown_days: 21}\nintervals: {drift_retraining_sensor: 7}\n")
    monkeypatch.setenv(LOOP_CONFIG_ENV, str(path))
    drift, challenger, rollback = loop_sensors()
    assert drift.minimum_interval_seconds == 7 and "psi beyond 0.35" in drift.description
    assert "21 days" in drift.description
    assert (challenger.minimum_interval_seconds, rollback.minimum_interval_seconds) == (60, 30)


def test_a_challenger_test_opens_on_the_hold_out_evidence_its_challenge_recorded(home, registry, log_path):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    late = _late(210)
    sharp = np.where(late == 1, 0.8, 0.2)
    opening, _ = hold_out_test([0.3] * 150, sharp[:150], late[:150], "2013-01-01/2013-03-07", "2013-03-08")
    assert opening is not None
    recorded = {HOLD_OUT_TEST: opening.to_json(), HOLD_OUT_FLIGHTS: 150}
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "passed the offline gate", a, details=recorded)
    _shadow_log(log_path, a, b, [0.3] * 60, sharp[150:], late[150:])
    (request,) = _tick(build_challenger_sensor(), _resources(home, log_path)).run_requests
    figures = json.loads(request.run_config["ops"]["model_decisions"]["config"]["figures"])
    assert request.run_key == f"challenger:{a}:{b}:promote"
    assert (figures["n"], figures["hold_out_flights"]) == (210, 150)  # 60 live flights alone wait for 200
    # An opening recorded for a test at another alpha is not this sensor's: it starts on live traffic.
    stricter = build_challenger_sensor(ChallengerPolicy(alpha=0.01))
    fresh = _tick(stricter, _resources(home, log_path))
    assert not fresh.run_requests and "60 paired flights" in fresh.skip_reason.skip_message
