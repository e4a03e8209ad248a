"""The loop's policies on known inputs: drift triggers (threshold, minimum count, minimum features,
cooldown in data time, deterministic run keys), the training window they ask for, and the
challenger and rollback decisions of the sequential test on paired outcomes."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flight_delay.loop import (
    HOLD_OUT_TEST,
    SENSOR_INTERVALS,
    ChallengerPolicy,
    DriftPolicy,
    LoopConfig,
    RetrainingWindow,
    RollbackPolicy,
    assess_drift,
    challenger_decision,
    drift_trigger,
    hold_out_test,
    latest_window,
    opening_state,
    rollback_decision,
)
from flight_delay.monitoring import DriftRow
from flight_delay.sequential import decide

MODEL = "flight_delay:new"
AT = datetime(2013, 5, 10, 15, 0, tzinfo=UTC)  # data time: 11:00 in New York


def _row(feature: str, psi: float, n: int = 600, model: str = MODEL, p_value: float = 0.5) -> DriftRow:
    return DriftRow(model, feature, n, psi, psi / 2, 10 * psi, 9, p_value)


# -- drift ------------------------------------------------------------------------------------
def test_a_feature_beyond_the_threshold_with_enough_values_triggers_with_its_figures():
    trigger = drift_trigger([_row("temp", 0.25), _row("dep_hour", 0.05)], DriftPolicy(), AT, None)
    assert trigger is not None
    assert trigger.model_version == MODEL and trigger.features == ("temp",)
    assert trigger.figures["temp"] == {"n": 600, "psi": 0.25, "js": 0.125, "chi2": 2.5, "p_value": 0.5}
    assert trigger.data_time == AT


def test_a_feature_below_the_threshold_does_not_trigger():
    trigger, reason = assess_drift([_row("temp", 0.19), _row("dep_hour", 0.0)], DriftPolicy(), AT, None)
    assert trigger is None
    assert "0 of 2 features" in reason and "temp 0.1900" in reason
    assert drift_trigger([_row("temp", 0.2)], DriftPolicy(threshold=0.2), AT, None) is None  # must exceed it


def test_features_with_fewer_values_than_the_minimum_are_not_judged():
    policy = DriftPolicy(min_count=500)
    trigger, reason = assess_drift([_row("temp", 0.9, n=499)], policy, AT, None)
    assert trigger is None and "500 live values" in reason and "most: 499" in reason
    assert drift_trigger([_row("temp", 0.9, n=500)], policy, AT, None) is not None


def test_the_cooldown_counts_in_data_time():
    policy = DriftPolicy(cooldown=timedelta(days=7))
    rows = [_row("temp", 0.5)]
    trigger, reason = assess_drift(rows, policy, AT, AT - timedelta(days=6, hours=23))
    assert trigger is None and "cooling down" in reason
    assert drift_trigger(rows, policy, AT, AT - timedelta(days=7)) is not None
    # A data time before the last trigger (a log read out of order) is inside the cooldown too.
    assert drift_trigger(rows, policy, AT, AT + timedelta(days=1)) is None


def test_min_features_and_the_feature_list_restrict_what_triggers():
    rows = [_row("temp", 0.5), _row("wind_speed", 0.3), _row("dep_hour", 0.1)]
    assert drift_trigger(rows, DriftPolicy(min_features=3), AT, None) is None
    both = drift_trigger(rows, DriftPolicy(min_features=2), AT, None)
    assert both is not None and both.features == ("temp", "wind_speed")  # the largest first
    assert drift_trigger(rows, DriftPolicy(features=("dep_hour",)), AT, None) is None
    only = drift_trigger(rows, DriftPolicy(features=("wind_speed", "dep_hour")), AT, None)
    assert only is not None and only.features == ("wind_speed",)


def test_excluded_features_are_never_judged():
    rows = [_row("month", 3.0), _row("temp", 0.3)]
    trigger = drift_trigger(rows, DriftPolicy(exclude=("month",)), AT, None)
    assert trigger is not None and trigger.features == ("temp",)
    assert drift_trigger([_row("month", 3.0)], DriftPolicy(exclude=("month",)), AT, None) is None


def test_the_loop_configuration_file_sets_each_policy_and_keeps_the_stated_defaults(tmp_path):
    path = tmp_path / "loop.yaml"
    path.write_text(
        "drift: {threshold: 0.3, cooldown_days: 21, exclude: [month, days_to_holiday]}\n"
        "window: {train_days: 60}\n"
        "rollback: {margin: 0.05}\n"
        "intervals: {drift_retraining_sensor: 10}\n"
    )
    config = LoopConfig.load(str(path))
    assert config.drift == DriftPolicy(threshold=0.3, cooldown=timedelta(days=21), exclude=("month", "days_to_holiday"))
    assert config.window == RetrainingWindow(train_days=60)
    assert config.rollback == RollbackPolicy(margin=0.05) and config.challenger == ChallengerPolicy()
    assert config.intervals == {**SENSOR_INTERVALS, "drift_retraining_sensor": 10}
    assert LoopConfig.load(None) == LoopConfig()


@pytest.mark.parametrize(
    "values, message",
    [
        ({"drfit": {}}, "unknown parts ['drfit']"),
        ({"drift": {"treshold": 0.3}}, "drift: DriftPolicy.__init__() got an unexpected keyword argument 'treshold'"),
        ({"drift": {"statistic": "ks"}}, "statistic must be one of"),
        ({"intervals": {"drift_sensor": 5}}, "unknown sensor 'drift_sensor'"),
        ({"intervals": {"rollback_sensor": 0}}, "at least 1 s"),
    ],
)
def test_a_wrong_loop_configuration_says_what_is_wrong(values, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LoopConfig.from_mapping(values)


def test_p_value_drift_is_a_small_p_value_and_nan_never_triggers():
    rows = [_row("temp", 0.0, p_value=0.001), _row("wind_speed", 0.0, p_value=0.2)]
    trigger = drift_trigger(rows, DriftPolicy(statistic="p_value", threshold=0.01), AT, None)
    assert trigger is not None and trigger.features == ("temp",)
    assert drift_trigger([_row("temp", math.nan)], DriftPolicy(), AT, None) is None


def test_only_the_named_model_is_judged():
    rows = [_row("temp", 0.5, model="flight_delay:old"), _row("temp", 0.01)]
    assert drift_trigger(rows, DriftPolicy(), AT, None, model_version=MODEL) is None
    assert drift_trigger(rows, DriftPolicy(), AT, None, model_version="flight_delay:old") is not None
    with pytest.raises(ValueError, match="several models"):
        drift_trigger(rows, DriftPolicy(), AT, None)


def test_run_keys_depend_on_model_data_day_and_features_only():
    rows = [_row("temp", 0.5), _row("wind_speed", 0.3)]
    key = drift_trigger(rows, DriftPolicy(), AT, None).run_key
    assert (
        drift_trigger(rows[::-1], DriftPolicy(), AT + timedelta(hours=12), None).run_key == key
    )  # 23:00, same local day
    assert drift_trigger(rows, DriftPolicy(), AT + timedelta(hours=14), None).run_key != key  # 01:00 next day
    assert drift_trigger(rows[:1], DriftPolicy(), AT, None).run_key != key
    assert drift_trigger(rows, DriftPolicy(), AT, None, model_version=MODEL).run_key == key
    assert key.startswith(f"drift:{MODEL}:2013-05-10:")


def test_policy_refuses_unknown_statistics():
    with pytest.raises(ValueError, match="statistic must be one of"):
        DriftPolicy(statistic="kl")


def test_the_training_window_ends_the_day_before_the_local_data_day():
    assert RetrainingWindow(train_days=90, evaluation_days=14).dates(AT) == {
        "train_start": "2013-01-26",
        "train_end": "2013-04-25",
        "evaluation_start": "2013-04-26",
        "evaluation_end": "2013-05-09",
    }
    late_evening = datetime(2013, 5, 10, 2, 0, tzinfo=UTC)  # 22:00 on May 9 in New York
    assert RetrainingWindow().dates(late_evening)["evaluation_end"] == "2013-05-08"
    early = RetrainingWindow(train_days=90, evaluation_days=14).dates(datetime(2013, 2, 10, 15, tzinfo=UTC))
    assert early["train_start"] == "2013-01-01" and early["train_end"] == "2013-01-26"
    with pytest.raises(ValueError, match="no training day"):
        RetrainingWindow(evaluation_days=14).dates(datetime(2013, 1, 10, 15, tzinfo=UTC))


# -- challenger and rollback ---------------------------------------------------------------------
def _outcomes(champion_p, challenger_p, late) -> pd.DataFrame:
    n = len(late)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(n)],
            "late": np.asarray(late, dtype="int64"),
            "champion_p": np.broadcast_to(champion_p, n).astype("float64"),
            "challenger_p": np.broadcast_to(challenger_p, n).astype("float64"),
        }
    )


def _late(n: int, seed: int = 3) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < 0.3).astype("int64")


def _sharp(late: np.ndarray, right: float = 0.8) -> np.ndarray:
    """A model that leans the right way on every flight."""
    return np.where(late == 1, right, 1 - right)


def test_a_clearly_better_challenger_is_promoted_once_enough_flights_are_labelled():
    late = _late(400)
    early, _ = challenger_decision(None, _outcomes(0.3, _sharp(late), late)[:150])
    assert challenger_decision(early, _outcomes(0.3, 0.3, late)[:0])[1].action == "continue"  # 150 < 200
    state, decision = challenger_decision(None, _outcomes(0.3, _sharp(late), late))
    assert decision.action == "promote" and decision.n == 400 and decision.evidence_better >= 20
    assert "challenger better" in decision.reason


def test_a_clearly_worse_challenger_is_retired():
    late = _late(400)
    _, decision = challenger_decision(None, _outcomes(_sharp(late), 0.3, late))
    assert decision.action == "retire" and decision.evidence_not_better >= 20 and decision.n < 20_000


def test_batches_give_the_same_decision_as_one_batch():
    late = _late(500)
    frame = _outcomes(0.3, _sharp(late, 0.6), late)
    whole, d1 = challenger_decision(None, frame, ChallengerPolicy(min_samples=10))
    state = None
    for part in np.array_split(np.arange(500), 7):
        state, d2 = challenger_decision(state, frame.iloc[part], ChallengerPolicy(min_samples=10))
    assert state.streams[0].n == whole.streams[0].n == 500
    assert (d1.action, d1.n) == (d2.action, d2.n)
    assert (d2.mean_difference, d2.lower, d2.upper) == pytest.approx((d1.mean_difference, d1.lower, d1.upper))
    assert (d2.evidence_better, d2.evidence_not_better) == pytest.approx((d1.evidence_better, d1.evidence_not_better))


def test_a_much_worse_new_champion_is_rolled_back_at_the_minimum_sample_and_not_before():
    late = _late(300)
    # champion_p: the new champion (a coin toss); challenger_p: the previous one in shadow.
    frame = _outcomes(0.5, _sharp(late, 0.9), late)
    policy = RollbackPolicy(margin=0.02, min_samples=300)
    _, before = rollback_decision(None, frame[:299], policy)
    assert before.action == "continue" and "waiting for 300" in before.reason
    _, decision = rollback_decision(None, frame, policy)
    assert decision.action == "rollback" and decision.evidence_worse >= 20 and decision.mean_excess > 0.3


def test_a_better_new_champion_is_kept():
    late = _late(600)
    _, decision = rollback_decision(None, _outcomes(_sharp(late, 0.9), 0.5, late))
    assert decision.action == "keep" and decision.evidence_not_worse >= 20 and "shown not worse" in decision.reason


def test_a_new_champion_worse_by_less_than_the_margin_is_never_rolled_back():
    late = np.ones(10_000, dtype="int64")
    new_p = 0.6
    previous_p = new_p * math.exp(0.01)  # the new champion's log loss is higher by exactly 0.01 per flight
    state, decision = None, None
    for part in np.array_split(np.arange(10_000), 40):  # checked after every batch
        state, decision = rollback_decision(state, _outcomes(new_p, previous_p, late)[part.min() : part.max() + 1])
        assert decision.action != "rollback", decision.reason
    assert decision.action == "keep" and decision.mean_excess == pytest.approx(0.01)
    # Worse by more than the margin: the same test rolls it back.
    _, worse = rollback_decision(None, _outcomes(new_p, new_p * math.exp(0.05), late))
    assert worse.action == "rollback"


def test_the_drift_window_is_the_newest_days_back_to_the_minimum():
    days = {
        "2013-05-08": {("temp", "0"): 400.0},
        "2013-05-10": {("temp", "0"): 100.0, ("temp", "1"): 100.0},
        "2013-05-09": {("temp", "1"): 250.0, ("wind_speed", "0"): 250.0},
    }
    counts, spanned = latest_window(days, 450)
    assert spanned == ["2013-05-09", "2013-05-10"]  # 200 + 250 temp values: the 8th is not needed
    assert counts == {("temp", "0"): 100.0, ("temp", "1"): 350.0, ("wind_speed", "0"): 250.0}
    counts, spanned = latest_window(days, 451)
    assert spanned == ["2013-05-08", "2013-05-09", "2013-05-10"] and counts[("temp", "0")] == 500.0
    assert latest_window(days, 10_000)[1] == sorted(days)  # none holds the minimum yet: all are kept
    assert latest_window({}, 1) == ({}, [])


def test_the_challenger_test_opens_on_the_hold_out_only_if_the_champion_never_learned_from_it():
    late = np.array([1, 0, 0, 1, 0] * 40)
    sharp = np.where(late == 1, 0.8, 0.2)
    state, why = hold_out_test([0.3] * 200, sharp, late, "2013-01-01/2013-03-07", "2013-03-08")
    assert state is not None and state.bets is not None and state.bets.n == 200, why
    assert decide(state, ChallengerPolicy().test_config()).action == "promote"
    for window in ("2013-01-01/2013-03-08", "2013-01-01/2013-03-20", None, ""):
        refused, why = hold_out_test([0.3] * 200, sharp, late, window, "2013-03-08")
        assert refused is None and ("trained until" in why or "no training window" in why)


def test_a_recorded_opening_is_used_only_by_a_test_at_its_alpha_and_margin():
    late = np.array([1, 0, 0, 1, 0] * 40)
    state, _ = hold_out_test([0.3] * 200, np.where(late == 1, 0.8, 0.2), late, "2013-01-01/2013-03-07", "2013-03-08")
    details = {HOLD_OUT_TEST: state.to_json()}
    assert opening_state(details, ChallengerPolicy())[0] == state
    for other in (ChallengerPolicy(alpha=0.01), ChallengerPolicy(margin=0.01)):
        refused, why = opening_state(details, other)
        assert refused is None and "the challenger sensor tests at" in why
    assert opening_state({}, ChallengerPolicy())[0] is None
    assert "not a test state" in opening_state({HOLD_OUT_TEST: '{"method": "old"}'}, ChallengerPolicy())[1]
