"""The challenger's sequential test: may a retrained model replace the champion, judged on live
traffic and checked after every batch of labelled feedback?

Paired (shadow) mode decides by **testing by betting** (Shafer (2021), "Testing by betting", JRSS-A
184(2); Waudby-Smith & Ramdas (2023), "Estimating means of bounded random variables by betting",
JRSS-B 86(1), Section 4 and the aGRAPA bet of Section B.2). Each paired flight gives ``d_i =
loss(champion_i) - loss(challenger_i)``, in [-W, W] with W = LOSS_MAX - LOSS_MIN; with ``x_i = d_i -
margin`` two gamblers bet on the flights in turn::

    promotion wealth  K_t = prod_{i<=t} (1 + b_i x_i),   b_i = clip( S_{i-1} / (Q_{i-1} + q0), 0, c / (W + margin))
    futility wealth   L_t = prod_{i<=t} (1 - a_i x_i),   a_i = clip(-S_{i-1} / (Q_{i-1} + q0), 0, c / (W - margin))
    S_t = sum_{i<=t} x_i,  Q_t = sum_{i<=t} x_i^2,  c = BET_FRACTION (3/4), q0 = SQUARES_PRIOR.

The bets use only earlier flights (predictable) and keep every factor above 1 - c > 0 whatever the
flight, so while the challenger is not better by more than ``margin`` (every flight's conditional
mean of ``x`` at most 0) K is a nonnegative supermartingale from 1, and by Ville's inequality
P(K ever reaches 1/alpha) <= alpha: promoting when it does is wrong with probability at most alpha,
however often it is checked. The same holds for L while the challenger is better by more than
``margin`` (futility: retire when L reaches 1/alpha). ``S / Q`` = mean / (variance + mean^2) is the
growth-optimal fraction for small bets, capped so a flight's loss can never bankrupt the bettor.

Why betting rather than the confidence sequence below for paired decisions: the per-flight
difference of two similar models has an sd of 0.1-0.3 in a range of +-4.6, and the
empirical-Bernstein sequence's bet is capped at 3/4 of the *range's* scale, about twice smaller
than the betting cap (3/4 of 1 / (W + margin) against 3/4 of 1 / (2 W)). On the shadow pairs of a
replay of 2013 (``make replay``), the four challengers of July-October (mean log-loss gain
0.004-0.011) were shown better after 2,412-5,674 paired flights by betting and 7,410-13,144 by the
sequence; the two of May, whose gain grew only as the champion aged, after 12,594 and 19,195
against 14,314 and 20,708. On simulated flights better by 0.02: a median of 1,344 flights against
2,708 (``tests/unit/test_sequential.py``).

**Bounds** (both modes) and **split-mode decisions** come from the predictable plug-in
empirical-Bernstein confidence sequence (PrPl-EB) of Waudby-Smith & Ramdas (2023), Theorem 2 and
eq. (26), built on the sub-exponential supermartingale of Howard, Ramdas, McAuliffe & Sekhon (2021),
"Time-uniform, nonparametric, nonasymptotic confidence sequences", Ann. Statist. 49(2),
Theorem 4. For values ``x_i`` in [0, 1] with conditional mean ``m``::

    lower_t = (sum lambda_i x_i - log(1/alpha) - sum v_i psi(lambda_i)) / sum lambda_i
    upper_t = (sum lambda_i x_i + log(1/alpha) + sum v_i psi(lambda_i)) / sum lambda_i
    v_i = 4 (x_i - mu_{i-1})^2,  psi(l) = (-log(1 - l) - l) / 4,
    lambda_t = min(sqrt(2 log(1/alpha) / (var_{t-1} t log(1 + t))), 3/4),
    mu_t = (1/2 + sum_{i<=t} x_i) / (t + 1),  var_t = (1/4 + sum_{i<=t} (x_i - mu_i)^2) / (t + 1).

Guarantee: P(exists t: m < lower_t) <= alpha and P(exists t: m > upper_t) <= alpha, at every
sample size at once, whatever the stopping rule, for any distribution on [0, 1] (no normality, no
variance assumption: the width adapts to the observed variance). Each bound is a one-sided
(1 - alpha) sequence, so [lower, upper] is a (1 - 2 alpha) two-sided one; running intersections
keep the same guarantee. If the mean drifts with the traffic, the bounds (and the bets) hold for
the (bet-weighted) average of the flights' conditional means, so a promotion means better on the
traffic seen. In paired mode the bounds are reported beside the decision, which they do not make.

Both rest on the clip: :func:`log_loss` clips p to [P_CLIP, 1 - P_CLIP], so a per-flight loss lies
in [LOSS_MIN, LOSS_MAX] (about [0.01, 4.61]). The range caps both methods' bets, so it sets how
fast they decide: with the clip at 0.01 rather than 1e-4 the range halves (the sequence's median on
flights better by 0.02 fell from 4,413 to 2,708). The price: the test judges log loss with
probabilities taken as at least 1 % and at most 99 %, so it does not tell apart two models that
differ only in how far below 1 % (or above 99 %) they go. A delay model rarely answers there:
offline, the models retrained on the first of each month of 2013 (on all the days before a 14-day
hold-out) did so for at most 0.3 % of their month's flights.

- Paired (shadow) mode: both models scored the same flight; the two betting tests above decide;
  one sequence at alpha on the mean of ``d`` is reported.
- Split mode: each arm's flights are different (routed independently of their outcomes); one
  sequence per arm's mean loss at alpha/2, and a union bound: champion_lower - challenger_upper
  <= mean difference <= champion_upper - challenger_lower, each side holding at every time with
  probability >= 1 - alpha; the bounds decide.

Decisions (:func:`decide`): promote when the challenger is shown better by more than ``margin``
(false promotion of a challenger that is not: at most alpha); retire early (futility) when it is
shown not better by more than ``margin`` (wrongful retirement of a challenger that is better by
more than ``margin``: at most alpha); retire at ``max_samples`` when neither has happened; no
decision before ``min_samples``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, NamedTuple

import numpy as np

P_CLIP = 0.01  # see the module's docstring: the range of a per-flight loss sets the test's width
LOSS_MIN = -math.log1p(-P_CLIP)  # loss of a confident right answer, p = 1 - P_CLIP
LOSS_MAX = -math.log(P_CLIP)  # loss of a confident wrong answer, p = P_CLIP
BET_CAP = 0.75  # Waudby-Smith & Ramdas suggest 1/2 or 3/4; lambda must stay below 1
BET_FRACTION = 0.75  # of the largest bet that no flight's loss could bankrupt (the paired tests)
SQUARES_PRIOR = 0.01  # q0: one pseudo-flight's squared difference, so no bet is made on no evidence
METHOD = "betting+prpl-eb"
ACTIONS = ("continue", "promote", "retire")
CONTINUE, PROMOTE, RETIRE = 0, 1, 2
Mode = Literal["paired", "split"]
# Values may come back from JSON or another process a rounding error outside the clip's range.
_TOLERANCE = 1e-9


def log_loss(p: Any, y: Any) -> np.ndarray:
    """Per-flight log loss of probability ``p`` for outcome ``y`` (1 late, 0 on time), with ``p``
    clipped to [P_CLIP, 1 - P_CLIP] so every loss lies in [LOSS_MIN, LOSS_MAX], the bound the
    sequential test relies on. Callers compute both models' losses with it."""
    p = np.clip(np.asarray(p, dtype="float64"), P_CLIP, 1.0 - P_CLIP)
    y = np.asarray(y)
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"expected outcomes 0 or 1, got {np.unique(y)[:5].tolist()}")
    return -np.where(y == 1, np.log(p), np.log1p(-p))


@dataclass(frozen=True)
class SequentialTestConfig:
    """When a challenger's live record settles its fate. ``margin``: the challenger must beat the
    champion's mean log loss by more than this to be promoted; ``min_samples``: no decision before
    this many labelled flights (per arm in split mode); ``max_samples``: retire, not proven
    better, at this many; ``futility``: retire early once it is shown not better by ``margin``."""

    alpha: float = 0.05
    margin: float = 0.0
    min_samples: int = 200
    max_samples: int = 20_000
    futility: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.alpha < 0.5:
            raise ValueError(f"alpha must lie in (0, 0.5), got {self.alpha}")
        if not 0 <= self.min_samples <= self.max_samples:
            raise ValueError(f"expected 0 <= min_samples <= max_samples, got {self.min_samples}, {self.max_samples}")
        if not -(LOSS_MAX - LOSS_MIN) < self.margin < LOSS_MAX - LOSS_MIN:
            raise ValueError(f"margin {self.margin} lies outside the range of a log-loss difference")


@dataclass(frozen=True)
class StreamState:
    """Running statistics of one confidence sequence on values in [``low``, ``high``], rescaled
    to [0, 1]: ``total`` and ``squares`` give the plug-in mean and variance, ``bets``,
    ``weighted`` and ``penalty`` the sums of lambda, lambda x and v psi(lambda); ``best_lower`` and
    ``best_upper`` the running intersection (in [0, 1])."""

    low: float
    high: float
    alpha: float
    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    bets: float = 0.0
    weighted: float = 0.0
    penalty: float = 0.0
    best_lower: float = 0.0
    best_upper: float = 1.0


@dataclass(frozen=True)
class BetState:
    """The paired mode's two betting tests on ``x = d - margin``: ``total`` and ``squares`` (S and
    Q, which set the next bets), the log wealth of the promotion (``log_better``) and futility
    (``log_not_better``) bettors, and the highest each has reached (a decision once at 1/alpha
    stays: Ville's inequality bounds the supremum)."""

    margin: float
    n: int = 0
    total: float = 0.0
    squares: float = 0.0
    log_better: float = 0.0
    log_not_better: float = 0.0
    best_better: float = 0.0
    best_not_better: float = 0.0


@dataclass(frozen=True)
class SequentialState:
    """Everything the test needs between batches; JSON round-trips exactly (a sensor keeps it in
    its cursor or in the registry). ``streams``: one (paired) or champion then challenger
    (split); ``bets``: the paired mode's betting tests (None in split mode)."""

    mode: Mode
    alpha: float
    streams: tuple[StreamState, ...]
    bets: BetState | None = None

    def to_json(self) -> str:
        return json.dumps({"method": METHOD, **asdict(self)}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SequentialState:
        raw = json.loads(text)
        if raw.pop("method", None) != METHOD:
            raise ValueError(f"expected a state written by SequentialState.to_json (method {METHOD})")
        bets = BetState(**raw["bets"]) if raw.get("bets") is not None else None
        state = cls(raw["mode"], raw["alpha"], tuple(StreamState(**s) for s in raw["streams"]), bets)
        margin = bets.margin if bets is not None else 0.0
        expected = start(SequentialTestConfig(alpha=state.alpha, margin=margin), state.mode)
        if [(s.low, s.high, s.alpha) for s in state.streams] != [(s.low, s.high, s.alpha) for s in expected.streams]:
            raise ValueError(f"state's streams do not match a {state.mode} test at alpha {state.alpha}")
        if (bets is None) != (expected.bets is None):
            raise ValueError(f"a {state.mode} test {'has' if expected.bets else 'has no'} betting state")
        return state


@dataclass(frozen=True)
class Decision:
    """``mean_difference``, ``lower`` and ``upper``: champion minus challenger mean log loss (positive:
    the challenger is better) and its confidence sequence after ``n`` labelled flights (split mode:
    the smaller arm's count, which ``min_samples`` and ``max_samples`` apply to).
    ``evidence_better`` and ``evidence_not_better``: the paired mode's highest betting wealth
    (e-values; 1/alpha decides), 1.0 in split mode."""

    action: Literal["promote", "retire", "continue"]
    reason: str
    n: int
    mean_difference: float
    lower: float
    upper: float
    evidence_better: float = 1.0
    evidence_not_better: float = 1.0


def start(config: SequentialTestConfig, mode: Mode = "paired") -> SequentialState:
    """A test with no observations yet."""
    width = LOSS_MAX - LOSS_MIN
    if mode == "paired":
        return SequentialState(mode, config.alpha, (StreamState(-width, width, config.alpha),), BetState(config.margin))
    if mode == "split":
        return SequentialState(mode, config.alpha, (StreamState(LOSS_MIN, LOSS_MAX, config.alpha / 2),) * 2)
    raise ValueError(f"expected mode 'paired' or 'split', got {mode!r}")


class _Paths(NamedTuple):
    """Cumulative statistics after each value (last axis)."""

    n: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    bets: np.ndarray
    weighted: np.ndarray
    penalty: np.ndarray


def _advance(x: np.ndarray, alpha: float, origin: StreamState | None = None) -> _Paths:
    """PrPl-EB statistics after each of ``x``'s values (in [0, 1], last axis), from ``origin``.
    lambda_t and mu_{t-1} use only values before t (predictable), which is what makes the
    sequence valid; cumulative sums make it one pass of numpy per batch."""
    s = origin or StreamState(0.0, 1.0, alpha)
    t = s.n + np.arange(1, x.shape[-1] + 1)
    total = s.total + np.cumsum(x, axis=-1)
    mean = (0.5 + total) / (t + 1)
    squares = s.squares + np.cumsum((x - mean) ** 2, axis=-1)
    prior_mean = np.concatenate([np.full(x.shape[:-1] + (1,), (0.5 + s.total) / (s.n + 1)), mean[..., :-1]], axis=-1)
    prior_var = (0.25 + np.concatenate([np.full(x.shape[:-1] + (1,), s.squares), squares[..., :-1]], axis=-1)) / t
    log_term = math.log(1 / alpha)
    bet = np.minimum(np.sqrt(2 * log_term / (prior_var * t * np.log1p(t))), BET_CAP)
    psi = (-np.log1p(-bet) - bet) / 4
    bets = s.bets + np.cumsum(bet, axis=-1)
    weighted = s.weighted + np.cumsum(bet * x, axis=-1)
    penalty = s.penalty + np.cumsum(4 * (x - prior_mean) ** 2 * psi, axis=-1)
    return _Paths(np.broadcast_to(t, x.shape), total, squares, bets, weighted, penalty)


def _stream_bounds(p: _Paths, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The time-uniform lower and upper bounds (in [0, 1]) of the mean, each at level alpha."""
    slack = math.log(1 / alpha) + p.penalty
    with np.errstate(divide="ignore", invalid="ignore"):
        lower = np.where(p.n > 0, (p.weighted - slack) / p.bets, 0.0)
        upper = np.where(p.n > 0, (p.weighted + slack) / p.bets, 1.0)
    return np.clip(lower, 0.0, 1.0), np.clip(upper, 0.0, 1.0)


def _intersected(
    lower: np.ndarray, upper: np.ndarray, best_lower: float = 0.0, best_upper: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Running intersection of the bounds along the last axis: the guarantee holds at every time
    at once, so the tightest bound so far holds too (and decisions never flip back)."""
    return (
        np.maximum.accumulate(np.maximum(lower, best_lower), axis=-1),
        np.minimum.accumulate(np.minimum(upper, best_upper), axis=-1),
    )


def _checked(losses: Any, name: str) -> np.ndarray:
    values = np.asarray(losses, dtype="float64")
    if values.size and not (
        np.isfinite(values).all() and values.min() >= LOSS_MIN - _TOLERANCE and values.max() <= LOSS_MAX + _TOLERANCE
    ):
        raise ValueError(
            f"expected {name} per-flight log losses from sequential.log_loss, within [{LOSS_MIN:.6g}, "
            f"{LOSS_MAX:.6g}]; got values from {np.nanmin(values):.6g} to {np.nanmax(values):.6g}"
        )
    return np.clip(values, LOSS_MIN, LOSS_MAX)


def _scaled(values: np.ndarray, s: StreamState) -> np.ndarray:
    return (values - s.low) / (s.high - s.low)


def _update_stream(s: StreamState, values: np.ndarray) -> StreamState:
    if values.size == 0:
        return s
    p = _advance(_scaled(values, s), s.alpha, s)
    lower, upper = _intersected(*_stream_bounds(p, s.alpha), s.best_lower, s.best_upper)
    last = {field: float(getattr(p, field)[-1]) for field in ("total", "squares", "bets", "weighted", "penalty")}
    return replace(s, n=int(p.n[-1]), best_lower=float(lower[-1]), best_upper=float(upper[-1]), **last)


class _BetPaths(NamedTuple):
    """The betting tests' cumulative statistics after each value (last axis)."""

    n: np.ndarray
    total: np.ndarray
    squares: np.ndarray
    log_better: np.ndarray
    log_not_better: np.ndarray
    best_better: np.ndarray
    best_not_better: np.ndarray


def _shifted(origin: float, cumulative: np.ndarray) -> np.ndarray:
    """The cumulative sums before each value: ``origin``, then all but the last."""
    return np.concatenate([np.full(cumulative.shape[:-1] + (1,), origin), cumulative[..., :-1]], axis=-1)


def _bet(differences: np.ndarray, s: BetState) -> _BetPaths:
    """Both bettors' wealth after each paired difference (last axis), from ``s``. Each bet uses
    only the differences before it (S and Q shifted by one), which keeps the wealth a
    supermartingale under its null; cumulative sums make it one pass of numpy per batch."""
    width = LOSS_MAX - LOSS_MIN
    x = differences - s.margin
    total = s.total + np.cumsum(x, axis=-1)
    squares = s.squares + np.cumsum(x * x, axis=-1)
    fraction = _shifted(s.total, total) / (_shifted(s.squares, squares) + SQUARES_PRIOR)
    better = np.clip(fraction, 0.0, BET_FRACTION / (width + s.margin))
    not_better = np.clip(-fraction, 0.0, BET_FRACTION / (width - s.margin))
    log_better = s.log_better + np.cumsum(np.log1p(better * x), axis=-1)
    log_not_better = s.log_not_better + np.cumsum(np.log1p(-not_better * x), axis=-1)
    return _BetPaths(
        s.n + np.broadcast_to(np.arange(1, x.shape[-1] + 1), x.shape),
        total,
        squares,
        log_better,
        log_not_better,
        np.maximum.accumulate(np.maximum(log_better, s.best_better), axis=-1),
        np.maximum.accumulate(np.maximum(log_not_better, s.best_not_better), axis=-1),
    )


def _evidence_threshold(alpha: float) -> float:
    """The log wealth that decides: 1/alpha, Ville's bound."""
    return math.log(1 / alpha)


def _update_bets(s: BetState, differences: np.ndarray) -> BetState:
    if differences.size == 0:
        return s
    p = _bet(differences, s)
    return BetState(s.margin, *(v.item(-1) for v in p))


def update(state: SequentialState, champion_losses: Any, challenger_losses: Any) -> SequentialState:
    """The state after a batch of labelled flights, in arrival order. Paired mode: the two models'
    losses on the same flights, position by position. Split mode: each arm's losses on its own
    flights (the counts may differ). One batch or many smaller ones give the same state."""
    champion = _checked(champion_losses, "champion").ravel()
    challenger = _checked(challenger_losses, "challenger").ravel()
    if state.mode == "paired":
        if champion.shape != challenger.shape:
            raise ValueError(
                f"paired mode expects one champion and one challenger loss per flight, got {champion.size} "
                f"and {challenger.size}"
            )
        d = champion - challenger
        assert state.bets is not None  # a paired state always bets (start and from_json see to it)
        return replace(state, streams=(_update_stream(state.streams[0], d),), bets=_update_bets(state.bets, d))
    arms = zip(state.streams, (champion, challenger))
    return replace(state, streams=tuple(_update_stream(s, values) for s, values in arms))


def _raw(bound: Any, s: StreamState) -> Any:
    return s.low + (s.high - s.low) * bound


def action_codes(n: Any, better: Any, not_better: Any, config: SequentialTestConfig) -> np.ndarray:
    """:data:`CONTINUE`, :data:`PROMOTE` or :data:`RETIRE` for each (n, shown better by more than
    the margin, shown not): the rule :func:`decide` applies, on arrays (the simulations use it on
    whole paths)."""
    n, better, not_better = np.asarray(n), np.asarray(better), np.asarray(not_better)
    futile = not_better if config.futility else np.zeros(not_better.shape, dtype=bool)
    code = np.where(better, PROMOTE, np.where(futile | (n >= config.max_samples), RETIRE, CONTINUE))
    return np.where(n < config.min_samples, CONTINUE, code)


def decide(state: SequentialState, config: SequentialTestConfig) -> Decision:
    """Promote, retire or continue: paired mode from the betting tests, split mode from the
    confidence sequence of the mean log-loss difference (champion minus challenger); valid however
    often it is called."""
    if state.alpha != config.alpha:
        raise ValueError(f"the state was built for alpha {state.alpha}, the config asks for {config.alpha}")
    threshold = _evidence_threshold(config.alpha)
    if state.mode == "paired":
        (s,), b = state.streams, state.bets
        assert b is not None
        if b.margin != config.margin:
            raise ValueError(f"the state was built for margin {b.margin}, the config asks for {config.margin}")
        n = s.n
        mean = _raw(s.total / s.n, s) if s.n else 0.0
        lower, upper = _raw(s.best_lower, s), _raw(s.best_upper, s)
        evidence = (math.exp(b.best_better), math.exp(b.best_not_better))
        better, not_better = b.best_better >= threshold, b.best_not_better >= threshold
        figures = (
            f"mean log-loss gain {mean:+.4f} after {n} paired flights; betting evidence {evidence[0]:.3g} that it is "
            f"better by more than {config.margin}, {evidence[1]:.3g} that it is not (1/alpha = {1 / config.alpha:.3g} "
            f"decides); always-valid bounds [{lower:+.4f}, {upper:+.4f}]"
        )
        shown = not_shown = "betting evidence reached 1/alpha"
    else:
        c, h = state.streams
        n = min(c.n, h.n)
        mean = _raw(c.total / c.n, c) - _raw(h.total / h.n, h) if n else 0.0
        lower = _raw(c.best_lower, c) - _raw(h.best_upper, h)
        upper = _raw(c.best_upper, c) - _raw(h.best_lower, h)
        evidence = (1.0, 1.0)
        better, not_better = lower > config.margin, upper <= config.margin
        figures = (
            f"mean log-loss gain {mean:+.4f}, always-valid bounds [{lower:+.4f}, {upper:+.4f}] after {c.n} champion "
            f"and {h.n} challenger flights"
        )
        shown, not_shown = "lower bound above it", "upper bound at or below it"
    code = int(action_codes(n, better, not_better, config))
    if n < config.min_samples:
        reason = f"waiting for {config.min_samples} labelled flights; {figures}"
    elif code == PROMOTE:
        reason = f"challenger better by more than {config.margin} ({shown}); {figures}"
    elif code == RETIRE and config.futility and not_better:
        reason = f"challenger shown not better by more than {config.margin} ({not_shown}); {figures}"
    elif code == RETIRE:
        reason = f"not proven better within {config.max_samples} labelled flights; {figures}"
    else:
        reason = f"undecided; {figures}"
    return Decision(ACTIONS[code], reason, n, float(mean), float(lower), float(upper), *evidence)


def bound_paths(
    champion_losses: Any, challenger_losses: Any, alpha: float, mode: Mode = "paired"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n, lower, upper)`` of the mean difference after every observation (last axis), from a
    fresh start, for many runs at once (leading axes); split mode takes one flight per arm per
    step. The same statistics as :func:`update`, for simulations."""
    state = start(SequentialTestConfig(alpha=alpha), mode)
    champion, challenger = _losses_of_one_shape(champion_losses, challenger_losses)
    sources = [champion - challenger] if mode == "paired" else [champion, challenger]
    bounds = []
    for s, values in zip(state.streams, sources):
        lower, upper = _stream_bounds(_advance(_scaled(values, s), s.alpha), s.alpha)
        lower, upper = _intersected(lower, upper)
        bounds.append((_raw(lower, s), _raw(upper, s)))
    n = np.broadcast_to(np.arange(1, champion.shape[-1] + 1), champion.shape)
    if mode == "paired":
        return n, *bounds[0]
    (c_low, c_high), (h_low, h_high) = bounds
    return n, c_low - h_high, c_high - h_low


def _losses_of_one_shape(champion_losses: Any, challenger_losses: Any) -> tuple[np.ndarray, np.ndarray]:
    champion, challenger = _checked(champion_losses, "champion"), _checked(challenger_losses, "challenger")
    if champion.shape != challenger.shape:
        raise ValueError(f"expected arrays of one shape, got {champion.shape} and {challenger.shape}")
    return champion, challenger


def action_paths(
    champion_losses: Any, challenger_losses: Any, config: SequentialTestConfig, mode: Mode = "paired"
) -> np.ndarray:
    """The action :func:`decide` would take after every observation (last axis), from a fresh
    start, for many runs at once (leading axes): the same statistics as :func:`update`, for
    simulations of the error rates."""
    if mode == "split":
        n, lower, upper = bound_paths(champion_losses, challenger_losses, config.alpha, mode)
        return action_codes(n, lower > config.margin, upper <= config.margin, config)
    champion, challenger = _losses_of_one_shape(champion_losses, challenger_losses)
    p = _bet(champion - challenger, BetState(config.margin))
    threshold = _evidence_threshold(config.alpha)
    return action_codes(p.n, p.best_better >= threshold, p.best_not_better >= threshold, config)
