"""The closed loop's decisions as plain policies: when drift asks for a retraining, when a
challenger's live record promotes or retires it, and when a promoted champion is rolled back.

No Dagster here: the sensors in ``pipeline/sensors.py`` read their inputs (drift rows, the
prediction log's data time, paired outcomes), call these functions and act on what they return.

- Drift (:func:`drift_trigger`): per feature, one statistic of the champion's live values against
  its reference (``psi``, ``js`` or ``chi2`` above ``threshold``; ``p_value`` below it), over the
  latest data days that hold ``min_count`` values (:func:`latest_window`), only features with at
  least ``min_count`` values; at least ``min_features`` of them must cross, and
  no trigger within ``cooldown`` of the last one, counted in DATA time (the prediction log's
  prediction times), so that a replay at any speed behaves like real time.
- Challenger (:func:`challenger_decision`): :mod:`flight_delay.sequential` on the paired per-flight
  log losses of champion and shadow challenger; promote, retire or continue.
- Rollback guard (:func:`rollback_decision`): after a promotion the previous champion is scored
  in shadow, and the same test runs with the roles reversed: the new champion plays the test's
  "champion" and the previous one its "challenger", so the test's "promote" (previous better by
  more than ``margin``) means "roll back", and its futility "retire" (previous shown not better by
  more than ``margin``) means "keep the new champion".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from flight_delay import sequential
from flight_delay.flights import LOCAL_TZ
from flight_delay.sequential import Decision, SequentialState, SequentialTestConfig

STATISTICS = ("psi", "js", "chi2", "p_value")  # p_value: drift when it falls BELOW the threshold


# -- drift -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class DriftPolicy:
    """When the champion's live feature values have drifted enough to retrain.

    ``statistic``: one of :data:`STATISTICS`; ``threshold``: a feature has drifted when its
    statistic exceeds it (``p_value``: falls below it); ``min_count``: a feature with fewer live
    values in the window is not judged; ``features``: the features judged (None: all);
    ``min_features``: how many must have drifted; ``cooldown``: no trigger sooner than this after
    the last one, in data time; ``exclude``: features never judged (calendar features such as the
    month move with the date by construction: judged, they would ask for a retraining every
    cooldown)."""

    statistic: str = "psi"
    threshold: float = 0.2
    min_count: int = 500
    features: tuple[str, ...] | None = None
    min_features: int = 1
    cooldown: timedelta = timedelta(days=7)
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.statistic not in STATISTICS:
            raise ValueError(f"statistic must be one of {', '.join(STATISTICS)}; got {self.statistic!r}")
        if not math.isfinite(self.threshold):
            raise ValueError(f"threshold must be a finite number; got {self.threshold!r}")
        if self.min_count < 1 or self.min_features < 1:
            raise ValueError(
                f"min_count and min_features must be at least 1; got {self.min_count}, {self.min_features}"
            )
        if self.cooldown < timedelta(0):
            raise ValueError(f"cooldown must not be negative; got {self.cooldown}")

    def crossed(self, value: float) -> bool:
        """Whether one feature's figure counts as drift (a NaN never does)."""
        if not math.isfinite(value):
            return False
        return value < self.threshold if self.statistic == "p_value" else value > self.threshold


@dataclass(frozen=True)
class Trigger:
    """A retraining asked for by drift: which model drifted, at what data time, on which features,
    with every figure of each (``figures[feature]``: n, psi, js, chi2, p_value)."""

    model_version: str
    data_time: datetime
    statistic: str
    threshold: float
    features: tuple[str, ...]
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def data_day(self) -> str:
        return local_day(self.data_time).isoformat()

    @property
    def run_key(self) -> str:
        """The same model, data day and features give the same key (Dagster runs it once)."""
        digest = hashlib.sha1(",".join(sorted(self.features)).encode()).hexdigest()[:12]
        return f"drift:{self.model_version}:{self.data_day}:{digest}"

    def summary(self) -> str:
        shown = ", ".join(f"{f} {self.figures[f][self.statistic]:.3f}" for f in self.features[:5])
        more = f" and {len(self.features) - 5} more" if len(self.features) > 5 else ""
        return f"{self.statistic} beyond {self.threshold} on {shown}{more} (data day {self.data_day})"


def local_day(at: datetime) -> date:
    """The local (America/New_York) day of a UTC instant: the day partitions are by."""
    return pd.Timestamp(at).tz_convert(LOCAL_TZ).date()


def _field(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def assess_drift(
    rows: Iterable[Any],
    policy: DriftPolicy,
    data_time: datetime,
    last_trigger: datetime | None,
    model_version: str | None = None,
) -> tuple[Trigger | None, str]:
    """:func:`drift_trigger`, with the reason when there is none."""
    if last_trigger is not None and data_time - last_trigger < policy.cooldown:
        return None, (
            f"cooling down: the last retraining was triggered at data time {last_trigger.isoformat()}, "
            f"{data_time - last_trigger} before {data_time.isoformat()}; the cooldown is {policy.cooldown}"
        )
    rows = list(rows)
    models = {_field(r, "model_version") for r in rows}
    if model_version is None:
        if len(models) > 1:
            raise ValueError(f"drift rows of several models {sorted(models)}: say which model_version to judge")
        model_version = next(iter(models), None)
    judged = [r for r in rows if _field(r, "model_version") == model_version]
    if policy.features is not None:
        judged = [r for r in judged if _field(r, "feature") in policy.features]
    if policy.exclude:
        judged = [r for r in judged if _field(r, "feature") not in policy.exclude]
    enough = [r for r in judged if int(_field(r, "n")) >= policy.min_count]
    if not enough:
        most = max((int(_field(r, "n")) for r in judged), default=0)
        return None, f"no feature of {model_version} has {policy.min_count} live values yet (most: {most})"

    def severity(r: Any) -> float:
        value = float(_field(r, policy.statistic))
        value = value if math.isfinite(value) else -math.inf
        return -value if policy.statistic == "p_value" else value

    drifted = sorted(
        (r for r in enough if policy.crossed(float(_field(r, policy.statistic)))),
        key=lambda r: (-severity(r), _field(r, "feature")),
    )
    if len(drifted) < policy.min_features:
        top = max(enough, key=severity)
        return None, (
            f"{len(drifted)} of {len(enough)} features of {model_version} beyond {policy.statistic} "
            f"{policy.threshold}, {policy.min_features} needed (nearest: {_field(top, 'feature')} "
            f"{float(_field(top, policy.statistic)):.4f})"
        )
    figures = {
        _field(r, "feature"): {"n": int(_field(r, "n"))} | {s: float(_field(r, s)) for s in STATISTICS if _has(r, s)}
        for r in drifted
    }
    features = tuple(_field(r, "feature") for r in drifted)
    trigger = Trigger(str(model_version), data_time, policy.statistic, policy.threshold, features, figures)
    return trigger, trigger.summary()


def _has(row: Any, name: str) -> bool:
    return name in row if isinstance(row, Mapping) else hasattr(row, name)


def latest_window(
    days: Mapping[str, Mapping[tuple[str, str], float]], min_count: int
) -> tuple[dict[tuple[str, str], float], list[str]]:
    """The drift window over live counts kept by data day (``days[day][(feature, bin)]``): the
    newest days, back to the first that gives some feature ``min_count`` values (all of them when
    none has that many yet). Returns the window's counts and the days it spans, oldest first; a
    day older than those will never be judged again and can be forgotten.

    A sliding window: when the cooldown ends, drift is judged at once on the latest ``min_count``
    values, not on a window that started filling at some earlier judgement."""
    counts: dict[tuple[str, str], float] = {}
    totals: dict[str, float] = {}
    spanned: list[str] = []
    for day in sorted(days, reverse=True):
        spanned.append(day)
        for (feature, b), n in days[day].items():
            counts[(feature, b)] = counts.get((feature, b), 0.0) + n
            totals[feature] = totals.get(feature, 0.0) + n
        if max(totals.values(), default=0.0) >= min_count:
            break
    return counts, spanned[::-1]


def drift_trigger(
    rows: Iterable[Any],
    policy: DriftPolicy,
    data_time: datetime,
    last_trigger: datetime | None,
    model_version: str | None = None,
) -> Trigger | None:
    """A retraining trigger when enough of ``model_version``'s features (rows: ``DriftRow``s or
    mappings with model_version, feature, n and the statistics) have drifted with enough values
    behind them and the cooldown since ``last_trigger`` (data time) has passed; else None."""
    return assess_drift(rows, policy, data_time, last_trigger, model_version)[0]


@dataclass(frozen=True)
class RetrainingWindow:
    """The training window a drift trigger asks for: evaluation on the last ``evaluation_days``
    complete local days before the data time, training on the ``train_days`` before those (not
    before ``first_day``, where the data begin).

    A year by default: the same season last year is what a model of a seasonal process needs, and
    until the history is a year long the window grows with it. On 2013, monthly retrainings scored
    on each next month (April-December) reached a mean AUC of 0.7592 with the growing window
    against 0.7503 with 90 days, and 0.7304 for a model of January-February alone."""

    train_days: int = 365
    evaluation_days: int = 14
    first_day: str = "2013-01-01"

    def dates(self, data_time: datetime) -> dict[str, str]:
        """``train_start``, ``train_end``, ``evaluation_start``, ``evaluation_end`` (YYYY-MM-DD)."""
        evaluation_end = local_day(data_time) - timedelta(days=1)
        evaluation_start = evaluation_end - timedelta(days=self.evaluation_days - 1)
        train_end = evaluation_start - timedelta(days=1)
        train_start = max(train_end - timedelta(days=self.train_days - 1), date.fromisoformat(self.first_day))
        if train_start > train_end:
            raise ValueError(
                f"data time {data_time.isoformat()} leaves no training day after {self.first_day} before an "
                f"evaluation window of {self.evaluation_days} days"
            )
        return {
            "train_start": train_start.isoformat(),
            "train_end": train_end.isoformat(),
            "evaluation_start": evaluation_start.isoformat(),
            "evaluation_end": evaluation_end.isoformat(),
        }


# -- challenger and rollback guard: the sequential test on paired outcomes -------------------
@dataclass(frozen=True)
class ChallengerPolicy:
    """The shadow challenger is promoted once its mean log loss is shown lower than the
    champion's by more than ``margin``, retired once shown not (or after ``max_samples``); no
    decision before ``min_samples`` labelled flights; ``alpha``: the test's error bound."""

    margin: float = 0.0
    min_samples: int = 200
    max_samples: int = 20_000
    alpha: float = 0.05

    def test_config(self) -> SequentialTestConfig:
        return SequentialTestConfig(self.alpha, self.margin, self.min_samples, self.max_samples, futility=True)


HOLD_OUT_TEST = "hold_out_test"  # the challenge event's detail holding the test's opening state
HOLD_OUT_FLIGHTS = "hold_out_flights"


def hold_out_test(
    champion_p: Any,
    challenger_p: Any,
    late: Any,
    champion_train_window: str | None,
    evaluation_start: str,
    policy: ChallengerPolicy = ChallengerPolicy(),
) -> tuple[SequentialState | None, str]:
    """The challenger test's opening state: the paired losses of the offline gate's hold-out
    flights (time order), or None, with why.

    The hold-out is the first traffic neither model learned from when the champion's training
    window (``first/last`` local days, its registry label) ended before ``evaluation_start``: the
    challenger was trained on the days before it, and the live shadow pairs follow it. The bets
    stay predictable and the gate only decides whether the test goes on (a stopping rule on the
    same flights), so Ville's inequality still bounds a false promotion by alpha over the hold-out
    and the live traffic together; the evidence the hold-out gives is not gathered twice on the
    live traffic, which is what kept a fresher challenger waiting while the champion aged."""
    if not champion_train_window or "/" not in champion_train_window:
        return None, f"the champion has no training window label ({champion_train_window!r}): a fresh test"
    trained_until = champion_train_window.split("/")[1]
    if trained_until >= evaluation_start:
        return None, (
            f"the champion was trained until {trained_until}, not before the hold-out's first day "
            f"{evaluation_start}: a fresh test on live traffic"
        )
    late = np.asarray(late).astype("int64")
    state = sequential.start(policy.test_config(), "paired")
    state = sequential.update(state, sequential.log_loss(champion_p, late), sequential.log_loss(challenger_p, late))
    return state, f"opened on the {len(late)} hold-out flights from {evaluation_start}, after the champion's training"


def opening_state(details: Mapping[str, Any], policy: ChallengerPolicy) -> tuple[SequentialState | None, str]:
    """The opening state a challenge event recorded, if it is a test of ``policy`` (same alpha and
    margin); else None and why (a fresh test on live traffic)."""
    text = details.get(HOLD_OUT_TEST)
    if not text:
        return None, "no hold-out evidence recorded"
    try:
        state = SequentialState.from_json(text)
    except (ValueError, TypeError, KeyError) as exc:
        return None, f"the recorded hold-out evidence is not a test state of this version: {exc}"
    config = policy.test_config()
    if state.mode != "paired" or state.bets is None:
        return None, f"the recorded hold-out evidence is a {state.mode} test, expected paired"
    if (state.alpha, state.bets.margin) != (config.alpha, config.margin):
        return None, (
            f"the recorded hold-out evidence is a test at alpha {state.alpha}, margin {state.bets.margin}; "
            f"the challenger sensor tests at alpha {config.alpha}, margin {config.margin}"
        )
    return state, f"opened on {state.bets.n} hold-out flights"


@dataclass(frozen=True)
class RollbackPolicy:
    """The new champion is rolled back once its mean log loss is shown higher than the previous
    champion's (scored in shadow) by more than ``margin``, with at least ``min_samples`` labelled
    flights; it is kept once shown not, or after ``max_samples``."""

    margin: float = 0.02
    min_samples: int = 300
    alpha: float = 0.05
    max_samples: int = 20_000

    def test_config(self) -> SequentialTestConfig:
        return SequentialTestConfig(self.alpha, self.margin, self.min_samples, self.max_samples, futility=True)


@dataclass(frozen=True)
class RollbackDecision:
    """``mean_excess``, ``lower``, ``upper``: the new champion's mean log loss minus the previous
    champion's on the same flights, and its always-valid bounds, after ``n`` flights;
    ``evidence_worse`` and ``evidence_not_worse``: the betting tests' e-values (1/alpha decides)."""

    action: Literal["rollback", "keep", "continue"]
    reason: str
    n: int
    mean_excess: float
    lower: float
    upper: float
    evidence_worse: float = 1.0
    evidence_not_worse: float = 1.0


def paired_losses(outcomes: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per-flight log losses (clipped as the test needs) of ``champion_p`` and ``challenger_p``."""
    missing = [c for c in ("late", "champion_p", "challenger_p") if c not in outcomes]
    if missing:
        raise ValueError(f"paired outcomes need the columns late, champion_p, challenger_p; missing {missing}")
    late = outcomes["late"].astype("int64").to_numpy()
    return (
        sequential.log_loss(outcomes["champion_p"].to_numpy(), late),
        sequential.log_loss(outcomes["challenger_p"].to_numpy(), late),
    )


def _advance(state: SequentialState | None, outcomes: pd.DataFrame, config: SequentialTestConfig) -> SequentialState:
    state = sequential.start(config, "paired") if state is None else state
    if state.mode != "paired":
        raise ValueError(f"expected a paired (shadow) test state, got {state.mode}")
    return sequential.update(state, *paired_losses(outcomes)) if len(outcomes) else state


def challenger_decision(
    state: SequentialState | None, outcomes: pd.DataFrame, policy: ChallengerPolicy = ChallengerPolicy()
) -> tuple[SequentialState, Decision]:
    """The test after the new paired outcomes (champion_p, challenger_p, late; arrival order),
    from ``state`` (None: a fresh test), and its decision: promote, retire or continue."""
    config = policy.test_config()
    state = _advance(state, outcomes, config)
    return state, sequential.decide(state, config)


def rollback_decision(
    state: SequentialState | None, outcomes: pd.DataFrame, policy: RollbackPolicy = RollbackPolicy()
) -> tuple[SequentialState, RollbackDecision]:
    """The guard after the new paired outcomes: ``champion_p`` the new champion's probability,
    ``challenger_p`` the previous champion's shadow probability. Rolls back when the new
    champion's loss exceeds the previous one's by more than ``margin`` (the betting test's
    evidence reaching 1/alpha)."""
    config = policy.test_config()
    state = _advance(state, outcomes, config)
    d = sequential.decide(state, config)
    action = {"promote": "rollback", "retire": "keep", "continue": "continue"}[d.action]
    figures = (
        f"new champion's mean log-loss excess {d.mean_difference:+.4f} after {d.n} paired flights; betting "
        f"evidence {d.evidence_better:.3g} that it is worse by more than {policy.margin}, {d.evidence_not_better:.3g} "
        f"that it is not (1/alpha = {1 / config.alpha:.3g} decides); always-valid bounds "
        f"[{d.lower:+.4f}, {d.upper:+.4f}]"
    )
    if d.n < config.min_samples:
        reason = f"waiting for {config.min_samples} labelled flights, {d.n} so far; {figures}"
    elif action == "rollback":
        reason = f"new champion worse than the previous by more than {policy.margin} in log loss; {figures}"
    elif action == "keep" and d.evidence_not_better >= 1 / config.alpha:
        reason = f"new champion shown not worse than the previous by more than {policy.margin}; {figures}"
    elif action == "keep":
        reason = f"not shown worse within {config.max_samples} labelled flights; {figures}"
    else:
        reason = f"undecided after {d.n} flights; {figures}"
    return state, RollbackDecision(
        action, reason, d.n, d.mean_difference, d.lower, d.upper, d.evidence_better, d.evidence_not_better
    )


# -- configuration ---------------------------------------------------------------------------
LOOP_CONFIG_ENV = "FLIGHT_DELAY_LOOP_CONFIG"
SENSOR_INTERVALS = {"drift_retraining_sensor": 300, "challenger_sensor": 60, "rollback_sensor": 30}


@dataclass(frozen=True)
class LoopConfig:
    """Every setting of the loop's sensors, with the defaults stated in the policies above;
    ``intervals``: seconds between two evaluations of each sensor by the daemon."""

    drift: DriftPolicy = DriftPolicy()
    window: RetrainingWindow = RetrainingWindow()
    challenger: ChallengerPolicy = ChallengerPolicy()
    rollback: RollbackPolicy = RollbackPolicy()
    intervals: Mapping[str, int] = field(default_factory=lambda: dict(SENSOR_INTERVALS))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> LoopConfig:
        """From ``{"drift": {...}, "window": {...}, "challenger": {...}, "rollback": {...},
        "intervals": {...}}`` (each part optional, each field as in its policy; ``cooldown_days``
        for the drift cooldown); an unknown part or field is an error that names it."""
        parts = {
            "drift": DriftPolicy,
            "window": RetrainingWindow,
            "challenger": ChallengerPolicy,
            "rollback": RollbackPolicy,
        }
        unknown = set(values) - set(parts) - {"intervals"}
        if unknown:
            raise ValueError(f"loop configuration: unknown parts {sorted(unknown)}; expected {[*parts, 'intervals']}")
        built: dict[str, Any] = {}
        for part, kind in parts.items():
            given = dict(values.get(part) or {})
            if part == "drift":
                if "cooldown_days" in given:
                    given["cooldown"] = timedelta(days=float(given.pop("cooldown_days")))
                for name in ("features", "exclude"):
                    if given.get(name) is not None:
                        given[name] = tuple(given[name])
            try:
                built[part] = kind(**given)
            except TypeError as exc:
                raise ValueError(f"loop configuration, {part}: {exc}") from exc
        intervals = dict(SENSOR_INTERVALS)
        for sensor, seconds in dict(values.get("intervals") or {}).items():
            if sensor not in SENSOR_INTERVALS:
                raise ValueError(
                    f"loop configuration, intervals: unknown sensor {sensor!r}; expected {list(SENSOR_INTERVALS)}"
                )
            if int(seconds) < 1:
                raise ValueError(f"loop configuration, intervals: {sensor} must be at least 1 s, got {seconds}")
            intervals[sensor] = int(seconds)
        return cls(intervals=intervals, **built)

    @classmethod
    def load(cls, path: str | None) -> LoopConfig:
        """From a YAML (or JSON) file; the defaults when ``path`` is None or empty."""
        if not path:
            return cls()
        import yaml

        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{LOOP_CONFIG_ENV}={path}: cannot read it as YAML: {exc}") from exc
        if not isinstance(values, Mapping):
            raise ValueError(f"{LOOP_CONFIG_ENV}={path}: expected a mapping of parts, got {type(values).__name__}")
        return cls.from_mapping(values)
