"""The closed loop's sensors: drift asks for a retraining, a shadow challenger's live record
promotes or retires it, and a promoted champion that does worse live than the one it replaced is
rolled back. Each reads through resources, calls a policy of :mod:`flight_delay.loop`, keeps its
progress in its cursor (JSON) and requests runs with deterministic run keys.

Default status: the drift sensor starts STOPPED (a retraining takes the machine's cores for
minutes); the challenger and rollback sensors start RUNNING (they act only once a shadow
challenger exists). ``FLIGHT_DELAY_LOOP_SENSORS=on`` starts all three RUNNING, ``off`` all three
STOPPED; the UI switches each one either way.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import dagster as dg

from flight_delay.forward import read_reference
from flight_delay.loop import (
    HOLD_OUT_TEST,
    LOOP_CONFIG_ENV,
    ChallengerPolicy,
    DriftPolicy,
    LoopConfig,
    RetrainingWindow,
    RollbackPolicy,
    Trigger,
    assess_drift,
    challenger_decision,
    latest_window,
    local_day,
    opening_state,
    rollback_decision,
)
from flight_delay.model import MODEL_NAME
from flight_delay.monitoring import CounterWindow, drift_rows
from flight_delay.outcomes import latest_data_time, paired_outcomes
from flight_delay.registry import RegistryState
from flight_delay.sequential import SequentialState
from pipeline import jobs
from pipeline.assets.training import LOOP_TAG_PREFIX
from pipeline.resources import MetricsSource, ModelRegistryResource, PredictionLogResource

SWITCH = "FLIGHT_DELAY_LOOP_SENSORS"
TOP_TAGGED = 5  # drifted features whose figures go into run tags (all of them go into the metadata)


def default_status(running_unless_switched: bool) -> dg.DefaultSensorStatus:
    switch = os.environ.get(SWITCH, "").strip().lower()
    if switch not in ("", "on", "off"):
        raise ValueError(f"{SWITCH} must be 'on', 'off' or unset; got {switch!r}")
    running = switch == "on" or (switch == "" and running_unless_switched)
    return dg.DefaultSensorStatus.RUNNING if running else dg.DefaultSensorStatus.STOPPED


# -- drift → retraining ----------------------------------------------------------------------
@dataclass
class DriftCursor:
    """``last_trigger``: data time of the last requested retraining (the cooldown counts from it);
    ``model``: the champion the kept counts belong to; ``days``: its feature-bin counts by the
    local data day they were read in, ``{day: {feature: {bin: count}}}``, the days of the latest
    window only (:func:`flight_delay.loop.latest_window`; a source whose reads are disjoint is
    added up day by day, a sliding source is judged read by read and keeps nothing)."""

    last_trigger: str | None = None
    model: str | None = None
    days: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    run_key: str | None = None  # the last retraining requested
    failures: int = 0  # how many requested retrainings in a row failed (each doubles the cooldown)
    failed_run: str | None = None  # the run id of the last failure counted

    @classmethod
    def from_json(cls, text: str | None) -> DriftCursor:
        if not text:
            return cls()
        fields = json.loads(text)
        # A cursor written before the window slid by day kept undated counts: they are let go,
        # and the window fills again from the next reads.
        fields.pop("pending", None)
        return cls(**fields)

    def counts_by_day(self) -> dict[str, dict[tuple[str, str], float]]:
        return {
            day: {(f, b): float(n) for f, bins in features.items() for b, n in bins.items()}
            for day, features in self.days.items()
        }

    @staticmethod
    def keep(days: dict[str, dict[tuple[str, str], float]]) -> dict[str, dict[str, dict[str, float]]]:
        """``days`` in the cursor's form (counts are whole numbers, written without a fraction)."""
        kept: dict[str, dict[str, dict[str, float]]] = {}
        for day, counts in sorted(days.items()):
            for (f, b), n in sorted(counts.items()):
                kept.setdefault(day, {}).setdefault(f, {})[b] = int(n) if float(n).is_integer() else n
        return kept

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    def follow_run(self, instance: dg.DagsterInstance) -> str | None:
        """Count the outcome of the last requested retraining, once; a description of the failure
        when it failed (else None)."""
        if self.run_key is None:
            return None
        runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: self.run_key}), limit=1)
        if not runs:
            return None
        run = runs[0]
        if run.status == dg.DagsterRunStatus.SUCCESS:
            self.failures, self.failed_run = 0, None
            return None
        if run.status != dg.DagsterRunStatus.FAILURE:
            return None
        if self.failed_run != run.run_id:
            self.failures, self.failed_run = self.failures + 1, run.run_id
        return f"the last retraining (run {run.run_id}, {self.run_key}) failed: {_failure(instance, run.run_id)}"


RUN_KEY_TAG = "dagster/run_key"
MAX_BACKOFF_DOUBLINGS = 4  # a failing retraining is asked again after at most 16 cooldowns


def _failure(instance: dg.DagsterInstance, run_id: str) -> str:
    """The first step failure's message of a run (what the UI shows on the run's page)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=1).records
    for record in records:
        event = record.event_log_entry.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        while error is not None and error.cause is not None:  # Dagster's wrapper, then the step's own error
            error = error.cause
        if error is not None:
            return f"step {event.step_key}: {error.message.strip()[:300]}"
    return "see the run in the UI"


def trigger_tags(trigger: Trigger) -> dict[str, str]:
    """Run tags of a drift-requested retraining: what drifted, on which model, at what data time."""
    tags = {
        f"{LOOP_TAG_PREFIX}trigger": "drift",
        f"{LOOP_TAG_PREFIX}model_version": trigger.model_version,
        f"{LOOP_TAG_PREFIX}data_time": trigger.data_time.isoformat(),
        f"{LOOP_TAG_PREFIX}drift_rule": f"{trigger.statistic}>{trigger.threshold}"
        if trigger.statistic != "p_value"
        else f"p_value<{trigger.threshold}",
        f"{LOOP_TAG_PREFIX}drifted_features": str(len(trigger.features)),
    }
    for feature in trigger.features[:TOP_TAGGED]:
        f = trigger.figures[feature]
        tags[f"{LOOP_TAG_PREFIX}drift.{feature}"] = f"{trigger.statistic}={f[trigger.statistic]:.4f} n={f['n']}"
    return tags


def build_drift_retraining_sensor(
    policy: DriftPolicy = DriftPolicy(),
    window: RetrainingWindow = RetrainingWindow(),
    minimum_interval_seconds: int = 300,
) -> dg.SensorDefinition:
    """The drift sensor with its policy (thresholds, minimum count, cooldown) and training window."""

    @dg.sensor(
        name="drift_retraining_sensor",
        job=jobs.retrain_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(running_unless_switched=False),
        description=f"Retrain when the champion's features drift: {policy.statistic} beyond {policy.threshold} on "
        f"{policy.min_features}+ features, judged on the latest data days holding {policy.min_count}+ live values, "
        "at most once per "
        f"{policy.cooldown} of data time; trains on the {window.train_days} days before a "
        f"{window.evaluation_days}-day evaluation ending the day before the data time.",
    )
    def drift_retraining_sensor(
        context: dg.SensorEvaluationContext,
        drift_metrics_source: MetricsSource,
        model_registry: ModelRegistryResource,
        prediction_log_db: PredictionLogResource,
    ) -> dg.SensorResult:
        cursor = DriftCursor.from_json(context.cursor)
        registry = model_registry.registry()
        champion = registry.champion(MODEL_NAME)
        if champion is None:
            return dg.SensorResult(skip_reason="no champion yet: nothing to drift from", cursor=cursor.to_json())
        data_time = latest_data_time(prediction_log_db.location)
        if data_time is None:
            return dg.SensorResult(skip_reason="the prediction log is empty: no data time", cursor=cursor.to_json())
        read = drift_metrics_source.window()
        now = {(feature, b): float(n) for (model, feature, b), n in read.feature_bins.items() if model == champion}
        kept: dict[str, dict[tuple[str, str], float]] = {}
        if drift_metrics_source.disjoint_windows():
            # Reads add up by data day; drift is judged on the latest days that hold the minimum.
            days = cursor.counts_by_day() if cursor.model == champion else {}
            today = days.setdefault(local_day(data_time).isoformat(), {})
            for key, n in now.items():
                today[key] = today.get(key, 0.0) + n
            counts, spanned = latest_window(days, policy.min_count)
            kept = {day: days[day] for day in spanned}
        else:
            counts = now  # a sliding window of its own
        bins = {(champion, f, b): n for (f, b), n in counts.items()}
        rows = drift_rows(CounterWindow(feature_bins=bins), {champion: read_reference(registry.model_dir(champion))})
        last = datetime.fromisoformat(cursor.last_trigger) if cursor.last_trigger else None
        failed = cursor.follow_run(context.instance)
        # A retraining that failed (a corrupt day in its window, say) is not asked again at every
        # cooldown: each failure in a row doubles the wait, and the skip reason says why.
        judged_by = policy
        if cursor.failures:
            judged_by = replace(policy, cooldown=policy.cooldown * 2 ** min(cursor.failures, MAX_BACKOFF_DOUBLINGS))
        trigger, reason = assess_drift(rows, judged_by, data_time, last, champion)
        if failed:
            reason = f"{reason}; {failed} (cooldown now {judged_by.cooldown})"
        after = replace(cursor, model=champion, days=DriftCursor.keep(kept))
        if trigger is None:
            return dg.SensorResult(skip_reason=reason, cursor=after.to_json())
        after = replace(after, last_trigger=data_time.isoformat(), run_key=trigger.run_key)
        context.log.info(f"retraining requested: {reason}")
        request = dg.RunRequest(
            run_key=trigger.run_key,
            run_config={"ops": {"training_set": {"config": window.dates(data_time)}}},
            tags=trigger_tags(trigger),
        )
        return dg.SensorResult(run_requests=[request], cursor=after.to_json())

    return drift_retraining_sensor


# -- challenger and rollback guard -------------------------------------------------------------
@dataclass
class TestCursor:
    """The sequential test of one (champion, challenger) pair: its state, the feedback watermark
    (``since``, unix seconds: outcomes received after it are new) and the decision requested."""

    champion: str
    challenger: str
    state: str | None = None
    since: float | None = None
    requested: str | None = None
    opened: int = 0  # of the test's flights, how many came from the offline gate's hold-out

    @classmethod
    def for_pair(cls, text: str | None, champion: str, challenger: str) -> TestCursor:
        """The cursor if it is about this pair, else a fresh one (a new pair starts a new test)."""
        cursor = cls(**json.loads(text)) if text else None
        if cursor is None or (cursor.champion, cursor.challenger) != (champion, challenger):
            return cls(champion, challenger)
        return cursor

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def is_rollback_guard(state: RegistryState) -> bool:
    """A shadow challenger that was champion before: the replaced champion, scored beside the new
    one after a promotion (``model_decisions`` starts it)."""
    c = state.challenger
    return c is not None and c.mode == "shadow" and c.tag in state.previous_champions


def _decision_request(
    run_key: str, action: str, model_version: str, champion: str, reason: str, figures: dict[str, Any]
) -> dg.RunRequest:
    config = {
        "action": action,
        "model_version": model_version,
        "expected_champion": champion,
        "reason": reason,
        "figures": json.dumps(figures, sort_keys=True),
    }
    return dg.RunRequest(
        run_key=run_key,
        run_config={"ops": {"model_decisions": {"config": config}}},
        tags={f"{LOOP_TAG_PREFIX}decision": action, f"{LOOP_TAG_PREFIX}model_version": model_version},
    )


def _read_pair(
    context: dg.SensorEvaluationContext, registry_state: RegistryState, log: PredictionLogResource
) -> tuple[TestCursor, Any]:
    champion, challenger = registry_state.champion, registry_state.challenger.tag
    cursor = TestCursor.for_pair(context.cursor, champion, challenger)
    outcomes = paired_outcomes(log.location, champion, challenger, since=cursor.since)
    if len(outcomes):
        cursor.since = float(outcomes["received_at"].max().timestamp())
    return cursor, outcomes


def _test_state(
    context: dg.SensorEvaluationContext, cursor: TestCursor, opening: Callable[[], SequentialState | None]
) -> SequentialState | None:
    """The pair's test so far; for a new pair, and for a cursor an older version of the test
    wrote (with a warning: its evidence cannot be carried over), the test ``opening()`` gives
    (None: a fresh test on the outcomes from here on), its hold-out flights counted in the cursor."""
    if cursor.state:
        try:
            return SequentialState.from_json(cursor.state)
        except (ValueError, TypeError, KeyError) as exc:
            context.log.warning(f"restarting the test of {cursor.challenger} against {cursor.champion}: {exc}")
    started = opening()
    cursor.opened = started.bets.n if started is not None and started.bets is not None else 0
    return started


def _judge(
    context: dg.SensorEvaluationContext,
    state: RegistryState,
    log: PredictionLogResource,
    kind: str,
    decide: Callable[[SequentialState | None, Any, Any], tuple[SequentialState, Any]],
    policy: ChallengerPolicy | RollbackPolicy,
    opening: Callable[[], SequentialState | None] = lambda: None,
) -> dg.SensorResult:
    """The champion/challenger pair's test after the outcomes that came since the cursor, a new
    test opened on what ``opening()`` gives (the offline gate's hold-out; asked only when a test
    starts); a decision run (once per pair and action) when the test decides. ``kind`` names the
    run key."""
    cursor, outcomes = _read_pair(context, state, log)
    if cursor.requested:
        return dg.SensorResult(skip_reason=f"{cursor.requested} already requested", cursor=cursor.to_json())
    test, decision = decide(_test_state(context, cursor, opening), outcomes, policy)
    cursor.state = test.to_json()
    if decision.action == "continue":
        return dg.SensorResult(skip_reason=decision.reason, cursor=cursor.to_json())
    cursor.requested = decision.action
    difference = "mean_difference" if hasattr(decision, "mean_difference") else "mean_excess"
    figures = {
        "n": decision.n,
        difference: getattr(decision, difference),
        "lower": decision.lower,
        "upper": decision.upper,
        **{k: v for k, v in vars(decision).items() if k.startswith("evidence_")},
        "margin": policy.margin,
        "alpha": policy.alpha,
        "hold_out_flights": cursor.opened,
    }
    request = _decision_request(
        f"{kind}:{cursor.champion}:{cursor.challenger}:{decision.action}",
        decision.action,
        cursor.challenger,
        cursor.champion,
        decision.reason,
        figures,
    )
    return dg.SensorResult(run_requests=[request], cursor=cursor.to_json())


def _opening(
    context: dg.SensorEvaluationContext, state: RegistryState, registry: Any, policy: ChallengerPolicy
) -> SequentialState | None:
    """The test state the challenge event recorded on the offline gate's hold-out, if any and if
    it is a test of ``policy``; None otherwise (said in the log when there was one to refuse)."""
    assert state.challenger is not None
    events = [
        e
        for e in registry.history(MODEL_NAME)
        if e.action == "challenge" and e.tag == state.challenger.tag and e.previous == state.champion
    ]
    if not events:
        return None
    opening, why = opening_state(events[-1].details, policy)
    if opening is None and HOLD_OUT_TEST in events[-1].details:
        context.log.warning(f"the test of {state.challenger.tag} starts on live traffic alone: {why}")
    return opening


def build_challenger_sensor(
    policy: ChallengerPolicy = ChallengerPolicy(), minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    """The challenger sensor with its sequential test's margin, minimum and maximum samples, alpha."""

    @dg.sensor(
        name="challenger_sensor",
        job=jobs.decision_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(running_unless_switched=True),
        description=f"Promote the shadow challenger once its log loss is shown lower than the champion's by more "
        f"than {policy.margin} (always-valid test at alpha {policy.alpha}, {policy.min_samples}+ labelled flights), "
        f"retire it once shown not or after {policy.max_samples}.",
    )
    def challenger_sensor(
        context: dg.SensorEvaluationContext,
        model_registry: ModelRegistryResource,
        prediction_log_db: PredictionLogResource,
    ) -> dg.SensorResult:
        state = model_registry.registry().state(MODEL_NAME)
        if state.challenger is None or state.challenger.mode != "shadow":
            return dg.SensorResult(skip_reason="no shadow challenger", cursor=context.cursor)
        if is_rollback_guard(state):
            return dg.SensorResult(
                skip_reason=f"the challenger {state.challenger.tag} is the rollback guard: rollback_sensor judges it",
                cursor=context.cursor,
            )
        return _judge(
            context,
            state,
            prediction_log_db,
            "challenger",
            challenger_decision,
            policy,
            lambda: _opening(context, state, model_registry.registry(), policy),
        )

    return challenger_sensor


def build_rollback_sensor(
    policy: RollbackPolicy = RollbackPolicy(), minimum_interval_seconds: int = 30
) -> dg.SensorDefinition:
    """The rollback sensor with its margin, minimum samples and alpha."""

    @dg.sensor(
        name="rollback_sensor",
        job=jobs.decision_job,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status(running_unless_switched=True),
        description=f"After a promotion, roll back once the new champion's log loss is shown higher than the "
        f"replaced champion's (scored in shadow) by more than {policy.margin} (always-valid test at alpha "
        f"{policy.alpha}, {policy.min_samples}+ labelled flights); keep it once shown not.",
    )
    def rollback_sensor(
        context: dg.SensorEvaluationContext,
        model_registry: ModelRegistryResource,
        prediction_log_db: PredictionLogResource,
    ) -> dg.SensorResult:
        state = model_registry.registry().state(MODEL_NAME)
        if not is_rollback_guard(state):
            return dg.SensorResult(skip_reason="no promotion under guard", cursor=context.cursor)
        return _judge(context, state, prediction_log_db, "rollback-guard", rollback_decision, policy)

    return rollback_sensor


def loop_sensors(config: LoopConfig | None = None) -> list[dg.SensorDefinition]:
    """The three sensors with ``config``, by default the file named by ``FLIGHT_DELAY_LOOP_CONFIG``
    (``flight_delay.loop.LoopConfig``), else the policies' stated defaults."""
    config = config or LoopConfig.load(os.environ.get(LOOP_CONFIG_ENV))
    every = config.intervals
    return [
        build_drift_retraining_sensor(config.drift, config.window, every["drift_retraining_sensor"]),
        build_challenger_sensor(config.challenger, every["challenger_sensor"]),
        build_rollback_sensor(config.rollback, every["rollback_sensor"]),
    ]
