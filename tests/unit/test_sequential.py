"""The challenger's sequential test: known answers, state round trips, and seeded simulations of
its error rates when checked after every labelled flight (A/A, a better and a worse challenger),
including deliberately broken boundaries that the A/A simulation must catch.

Simulated flights: the true delay probability q ~ Beta(2, 8) (mean 0.2), the outcome y ~
Bernoulli(q), and each model predicts expit(logit(q) + noise * N(0, 1)) with its own independent
noise draw. Equal noise gives two models with the same loss distribution (A/A); less noise a better
model. Figures print with ``pytest -s``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, logit
from scipy.stats import norm

from flight_delay import sequential as sq
from flight_delay.sequential import (
    LOSS_MAX,
    LOSS_MIN,
    SequentialState,
    SequentialTestConfig,
    bound_paths,
    decide,
    log_loss,
    start,
    update,
)

CONFIG = SequentialTestConfig()  # alpha 0.05, margin 0, min 200, max 20,000 labelled flights
AA_NOISE = 0.45  # both models
BETTER = (0.6, 0.3)  # champion's and challenger's noise: the challenger's log loss lower by about 0.02
WORSE = (0.3, 0.6)
RUNS = 1_000
CHUNK = 100  # runs simulated at once: 100 x 20,000 flights per array


def _flights(rng: np.random.Generator, shape: tuple[int, ...], champion_noise: float, challenger_noise: float):
    """Per-flight log losses of two models scoring the same flights."""
    q = rng.beta(2.0, 8.0, shape)
    y = (rng.random(shape) < q).astype("int8")
    lq = logit(q)
    champion = log_loss(expit(lq + champion_noise * rng.standard_normal(shape)), y)
    challenger = log_loss(expit(lq + challenger_noise * rng.standard_normal(shape)), y)
    return champion, challenger


def _first_decisions(champion, challenger, config: SequentialTestConfig, mode: sq.Mode = "paired"):
    """Each run's first non-continue action and the labelled flights it took, checking after
    every flight."""
    codes = sq.action_paths(champion, challenger, config, mode)
    decided = codes != sq.CONTINUE
    first = np.where(decided.any(axis=-1), decided.argmax(axis=-1), codes.shape[-1] - 1)
    return codes[np.arange(len(first)), first], first + 1


def _simulate(seed: int, noises: tuple[float, float], runs: int = RUNS, mode: sq.Mode = "paired"):
    rng = np.random.default_rng(seed)
    actions, samples = [], []
    for _ in range(0, runs, CHUNK):
        champion, challenger = _flights(rng, (CHUNK, CONFIG.max_samples), *noises)
        if mode == "split":  # each arm keeps its own flights: the challenger's come from other draws
            challenger = _flights(rng, (CHUNK, CONFIG.max_samples), *noises)[1]
        a, s = _first_decisions(champion, challenger, CONFIG, mode)
        actions.append(a)
        samples.append(s)
    return np.concatenate(actions), np.concatenate(samples)


def _reference(values: list[float], low: float, high: float, alpha: float) -> tuple[float, float]:
    """PrPl-EB written out step by step from Waudby-Smith & Ramdas (2023), Theorem 2 and eq. (26),
    one-sided at alpha, with running intersections; in the values' units."""
    log_term = math.log(1 / alpha)
    total = squares = bets = weighted = penalty = 0.0
    best_lower, best_upper = 0.0, 1.0
    for t, value in enumerate(values, start=1):
        x = (value - low) / (high - low)
        mean_before, var_before = (0.5 + total) / t, (0.25 + squares) / t
        bet = min(math.sqrt(2 * log_term / (var_before * t * math.log(1 + t))), 0.75)
        penalty += 4 * (x - mean_before) ** 2 * (-math.log(1 - bet) - bet) / 4
        bets += bet
        weighted += bet * x
        total += x
        squares += (x - (0.5 + total) / (t + 1)) ** 2
        best_lower = max(best_lower, (weighted - log_term - penalty) / bets)
        best_upper = min(best_upper, (weighted + log_term + penalty) / bets)
    return low + (high - low) * best_lower, low + (high - low) * best_upper


def _bet_reference(differences: list[float], margin: float) -> tuple[float, float]:
    """Both bettors of the paired test written out flight by flight (the module's docstring):
    their highest log wealth."""
    width = LOSS_MAX - LOSS_MIN
    total = squares = log_better = log_not_better = best_better = best_not_better = 0.0
    for d in differences:
        x = d - margin
        fraction = total / (squares + 0.01)
        log_better += math.log(1 + min(max(fraction, 0.0), 0.75 / (width + margin)) * x)
        log_not_better += math.log(1 - min(max(-fraction, 0.0), 0.75 / (width - margin)) * x)
        best_better, best_not_better = max(best_better, log_better), max(best_not_better, log_not_better)
        total += x
        squares += x * x
    return best_better, best_not_better


# Known answers


def test_log_loss_clips_probabilities_to_the_stated_bound():
    losses = log_loss([0.0, 1.0, 0.0, 1.0, 0.2], [0, 1, 1, 0, 1])
    assert losses[:2] == pytest.approx([LOSS_MIN, LOSS_MIN])
    assert losses[2:4] == pytest.approx([LOSS_MAX, LOSS_MAX])
    assert losses[4] == pytest.approx(-math.log(0.2))
    assert math.isclose(LOSS_MAX, 4.6051702, abs_tol=1e-7) and math.isclose(LOSS_MIN, 0.01005034, rel_tol=1e-6)
    with pytest.raises(ValueError, match="outcomes 0 or 1"):
        log_loss([0.5], [2])


def test_boundary_for_three_values_by_hand():
    # x = 0.5, 0.6, 0.4 on [0, 1] at alpha 0.05: every bet is capped at 3/4, psi(3/4) = (ln 4 - 3/4) / 4;
    # the plug-in means before the 2nd and 3rd values are 1/2 and 1.6/3.
    p = sq._advance(np.array([0.5, 0.6, 0.4]), 0.05)
    psi = (math.log(4) - 0.75) / 4
    assert p.bets.tolist() == pytest.approx([0.75, 1.5, 2.25])
    assert p.weighted.tolist() == pytest.approx([0.375, 0.825, 1.125])
    assert p.penalty.tolist() == pytest.approx([0.0, 0.04 * psi, (0.04 + 4 * (0.4 - 1.6 / 3) ** 2) * psi])
    assert p.penalty[-1] == pytest.approx(0.0176748, abs=1e-7)
    assert (1.125 - math.log(20) - p.penalty[-1]) / 2.25 == pytest.approx(-0.839292, abs=1e-6)
    assert [b.tolist() for b in sq._stream_bounds(p, 0.05)] == [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]  # clipped to [0, 1]


def test_an_uncapped_bet_by_hand():
    # After 99 values with plug-in mean 1/2 and variance 1/4, the 100th bet is
    # sqrt(2 ln 20 / (0.25 * 100 * ln 101)) = 0.227879, below the cap.
    origin = sq.StreamState(0.0, 1.0, 0.05, n=99, total=49.5, squares=24.75)
    p = sq._advance(np.array([1.0]), 0.05, origin)
    bet = math.sqrt(2 * math.log(20) / (0.25 * 100 * math.log(101)))
    assert bet == pytest.approx(0.227879, abs=1e-6)
    assert p.bets[0] == pytest.approx(bet)
    assert p.penalty[0] == pytest.approx(4 * 0.25 * (-math.log(1 - bet) - bet) / 4)
    assert p.squares[0] == pytest.approx(24.75 + (1.0 - 51 / 101) ** 2)


@pytest.mark.parametrize("mode", ["paired", "split"])
def test_decide_matches_the_method_written_out_by_hand(mode):
    champion, challenger = _flights(np.random.default_rng(3), (600,), 0.6, 0.2)
    decision = decide(update(start(CONFIG, mode), champion, challenger), CONFIG)
    if mode == "paired":
        width = LOSS_MAX - LOSS_MIN
        lower, upper = _reference((champion - challenger).tolist(), -width, width, 0.05)
        assert decision.mean_difference == pytest.approx(np.mean(champion - challenger))
        better, not_better = _bet_reference((champion - challenger).tolist(), CONFIG.margin)
        assert (decision.evidence_better, decision.evidence_not_better) == pytest.approx(
            (math.exp(better), math.exp(not_better)), rel=1e-9
        )
    else:  # union bound: each arm at alpha / 2
        c_low, c_high = _reference(champion.tolist(), LOSS_MIN, LOSS_MAX, 0.025)
        h_low, h_high = _reference(challenger.tolist(), LOSS_MIN, LOSS_MAX, 0.025)
        lower, upper = c_low - h_high, c_high - h_low
    assert (decision.lower, decision.upper) == pytest.approx((lower, upper), rel=1e-9)
    assert decision.lower < decision.mean_difference < decision.upper
    assert decision.n == 600


# State


def test_state_round_trips_through_json():
    champion, challenger = _flights(np.random.default_rng(4), (250,), 0.5, 0.3)
    for mode in ("paired", "split"):
        state = update(start(CONFIG, mode), champion, challenger)
        assert SequentialState.from_json(state.to_json()) == state
        assert decide(SequentialState.from_json(state.to_json()), CONFIG) == decide(state, CONFIG)


def test_a_state_from_json_must_match_its_method():
    text = start(CONFIG).to_json().replace('"alpha": 0.05, "best_lower"', '"alpha": 0.1, "best_lower"')
    with pytest.raises(ValueError, match="do not match"):
        SequentialState.from_json(text)
    with pytest.raises(ValueError, match="betting"):  # a state from before the betting tests
        SequentialState.from_json('{"method": "prpl-eb", "mode": "paired", "alpha": 0.05, "streams": []}')
    without_bets = start(CONFIG).to_json().replace('"bets": {', '"old": {')
    with pytest.raises((ValueError, TypeError)):
        SequentialState.from_json(without_bets)


def test_a_state_is_decided_only_at_the_margin_it_bets_against():
    champion, challenger = _flights(np.random.default_rng(4), (250,), 0.5, 0.3)
    state = update(start(CONFIG), champion, challenger)
    with pytest.raises(ValueError, match="built for margin 0.0"):
        decide(state, SequentialTestConfig(margin=0.01))


@pytest.mark.parametrize("mode", ["paired", "split"])
def test_incremental_updates_equal_one_batch_and_the_simulation_paths(mode):
    champion, challenger = _flights(np.random.default_rng(5), (1_000,), 0.6, 0.3)
    one = update(start(CONFIG, mode), champion, challenger)
    state = start(CONFIG, mode)
    sizes = np.random.default_rng(6).integers(0, 40, 60)
    bounds = np.concatenate([[0], np.cumsum(sizes), [1_000]]).clip(max=1_000)
    for a, b in zip(bounds[:-1], bounds[1:]):
        state = update(state, champion[a:b], challenger[a:b])
    for incremental, batch in zip(state.streams, one.streams):
        assert incremental.n == batch.n == 1_000
        for field in ("total", "squares", "bets", "weighted", "penalty", "best_lower", "best_upper"):
            assert getattr(incremental, field) == pytest.approx(getattr(batch, field), rel=1e-9, abs=1e-12)
    if mode == "paired":
        assert state.bets is not None and one.bets is not None and state.bets.n == 1_000
        for field in ("total", "squares", "log_better", "log_not_better", "best_better", "best_not_better"):
            assert getattr(state.bets, field) == pytest.approx(getattr(one.bets, field), rel=1e-9, abs=1e-12)
    _, lower, upper = bound_paths(champion, challenger, CONFIG.alpha, mode)
    decision = decide(state, CONFIG)
    assert (decision.lower, decision.upper) == pytest.approx((lower[-1], upper[-1]), rel=1e-9)
    config = SequentialTestConfig(min_samples=0)
    codes = sq.action_paths(champion, challenger, config, mode)
    steps = [decide(update(start(config, mode), champion[:k], challenger[:k]), config).action for k in (50, 400, 1_000)]
    assert steps == [sq.ACTIONS[codes[k - 1]] for k in (50, 400, 1_000)]


def test_split_mode_takes_arms_of_different_sizes():
    champion, challenger = _flights(np.random.default_rng(7), (500,), 0.5, 0.5)
    state = update(start(CONFIG, "split"), champion, challenger[:300])
    assert [s.n for s in state.streams] == [500, 300]
    assert decide(state, CONFIG).n == 300


def test_update_refuses_losses_outside_the_clip_and_unpaired_lengths():
    with pytest.raises(ValueError, match="sequential.log_loss"):
        update(start(CONFIG), [0.3, 12.0], [0.3, 0.3])
    with pytest.raises(ValueError, match="sequential.log_loss"):
        update(start(CONFIG), [0.3, float("nan")], [0.3, 0.3])
    with pytest.raises(ValueError, match="one champion and one challenger loss per flight"):
        update(start(CONFIG), [0.3, 0.2], [0.3])
    with pytest.raises(ValueError, match="built for alpha 0.05"):
        decide(start(CONFIG), SequentialTestConfig(alpha=0.01))
    with pytest.raises(ValueError, match="min_samples <= max_samples"):
        SequentialTestConfig(min_samples=500, max_samples=100)


# Decisions


def test_no_decision_before_min_samples_and_retirement_at_max_samples():
    config = SequentialTestConfig(min_samples=1_500, max_samples=3_000, futility=False)
    champion, challenger = _flights(np.random.default_rng(8), (1_500,), 2.0, 0.0)  # far better
    early = decide(update(start(config), champion[:-1], challenger[:-1]), config)
    assert early.action == "continue" and "waiting for 1500" in early.reason
    assert early.evidence_better >= 1 / config.alpha  # it would already promote
    assert decide(update(start(config), champion, challenger), config).action == "promote"
    same = _flights(np.random.default_rng(9), (3_000,), 0.5, 0.5)
    assert decide(update(start(config), same[0][:-1], same[1][:-1]), config).action == "continue"
    final = decide(update(start(config), *same), config)
    assert final.action == "retire" and "not proven better within 3000" in final.reason


def test_margin_raises_the_bar():
    champion, challenger = _flights(np.random.default_rng(10), (5_000,), 0.9, 0.2)
    decision = decide(update(start(CONFIG), champion, challenger), CONFIG)
    assert decision.action == "promote" and decision.lower > 0
    demanding = SequentialTestConfig(margin=decision.upper + 0.01)
    retired = decide(update(start(demanding), champion, challenger), demanding)
    assert retired.action == "retire" and "not better by more than" in retired.reason
    half = decision.mean_difference / 2
    # Half the gain as a margin: the bettor wins less per flight, so it takes longer to show.
    codes = {m: sq.action_paths(champion, challenger, SequentialTestConfig(margin=m)) for m in (0.0, half)}
    first = {m: int(np.argmax(c == sq.PROMOTE)) if (c == sq.PROMOTE).any() else len(c) for m, c in codes.items()}
    assert first[0.0] < first[half] < len(champion), first


def test_simulated_flights_have_the_noise_of_real_ones():
    # Per-flight log loss sd 0.5-0.7 and paired difference sd 0.1-0.3, as on the flight data.
    champion, challenger = _flights(np.random.default_rng(11), (400_000,), *BETTER)
    gain = champion - challenger
    print(
        f"\nlog loss sd: champion {champion.std():.3f}, challenger {challenger.std():.3f}; "
        f"difference mean {gain.mean():.4f} sd {gain.std():.3f}"
    )
    assert 0.5 < challenger.std() < champion.std() < 0.7
    assert 0.1 < gain.std() < 0.3
    assert gain.mean() == pytest.approx(0.02, abs=0.002)
    aa = _flights(np.random.default_rng(12), (400_000,), AA_NOISE, AA_NOISE)
    assert 0.1 < (aa[0] - aa[1]).std() < 0.3 and abs((aa[0] - aa[1]).mean()) < 0.002


# Error rates, checked after every labelled flight up to max_samples


def test_identical_models_are_rarely_promoted():
    actions, _ = _simulate(20, (AA_NOISE, AA_NOISE))
    rate = np.mean(actions == sq.PROMOTE)
    print(f"\nA/A paired: {rate:.1%} of {RUNS} runs promoted; {np.mean(actions == sq.RETIRE):.1%} retired")
    assert rate <= CONFIG.alpha


def test_identical_models_are_rarely_promoted_in_split_mode():
    actions, _ = _simulate(21, (AA_NOISE, AA_NOISE), runs=500, mode="split")
    rate = np.mean(actions == sq.PROMOTE)
    print(f"\nA/A split: {rate:.1%} of 500 runs promoted")
    assert rate <= CONFIG.alpha


def test_a_better_challenger_is_promoted_within_2500_flights():
    actions, samples = _simulate(22, BETTER)
    promoted = actions == sq.PROMOTE
    within = np.mean(promoted & (samples <= 2_500))
    print(
        f"\nbetter by 0.02: {promoted.mean():.1%} promoted, {within:.1%} within 2,500 flights; "
        f"median {np.median(samples[promoted]):.0f}, 80th percentile {np.quantile(samples[promoted], 0.8):.0f} flights"
    )
    assert within >= 0.8


def test_a_worse_challenger_is_retired_never_promoted():
    actions, samples = _simulate(23, WORSE)
    retired = actions == sq.RETIRE
    print(
        f"\nworse by 0.02: {np.mean(actions == sq.PROMOTE):.1%} promoted, {retired.mean():.1%} retired, "
        f"median {np.median(samples[retired]):.0f} flights to retirement"
    )
    assert np.mean(actions == sq.PROMOTE) <= CONFIG.alpha
    assert retired.mean() >= 0.8 and np.median(samples[retired]) < CONFIG.max_samples


# Mutations: tests broken on purpose must fail the A/A simulation


def _look_ahead_bet(differences, s):
    """A bettor who sizes each bet knowing the flight it bets on: not predictable."""
    x = differences - s.margin
    total, squares = np.cumsum(x, axis=-1), np.cumsum(x * x, axis=-1)
    width = LOSS_MAX - LOSS_MIN
    better = np.clip(total / (squares + sq.SQUARES_PRIOR), 0.0, sq.BET_FRACTION / (width + s.margin))
    log_better = np.cumsum(np.log1p(better * x), axis=-1)
    n = np.broadcast_to(np.arange(1, x.shape[-1] + 1), x.shape)
    zero = np.zeros(x.shape)
    return sq._BetPaths(n, total, squares, log_better, zero, np.maximum.accumulate(log_better, axis=-1), zero)


def _any_gain(alpha):
    """Promote as soon as the bettor is ahead: the test without Ville's 1/alpha."""
    return 0.0


@pytest.fixture(scope="module")
def aa_flights():
    return _flights(np.random.default_rng(30), (200, CONFIG.max_samples), AA_NOISE, AA_NOISE)


@pytest.mark.parametrize(("name", "broken"), [("_bet", _look_ahead_bet), ("_evidence_threshold", _any_gain)])
def test_a_broken_bet_fails_the_identical_models_check(monkeypatch, aa_flights, name, broken):
    assert np.mean(_first_decisions(*aa_flights, CONFIG)[0] == sq.PROMOTE) <= CONFIG.alpha
    monkeypatch.setattr(sq, name, broken)
    actions, _ = _first_decisions(*aa_flights, CONFIG)
    rate = np.mean(actions == sq.PROMOTE)
    print(f"\nmutation {broken.__name__}: A/A {rate:.1%} of 200 paired runs promoted")
    assert rate > 2 * CONFIG.alpha


def _naive_z_interval(p, alpha):
    """The peeking mistake: a fixed-n one-sided z interval, recomputed after every flight."""
    mean = p.total / p.n
    half = norm.ppf(1 - alpha) * np.sqrt(p.squares / p.n / p.n)
    return mean - half, mean + half


def _without_log_term(p, alpha):
    return p.weighted / p.bets - p.penalty / p.bets, p.weighted / p.bets + p.penalty / p.bets


@pytest.fixture(scope="module")
def aa_split_flights():
    rng = np.random.default_rng(31)
    champion = _flights(rng, (200, CONFIG.max_samples), AA_NOISE, AA_NOISE)[0]
    return champion, _flights(rng, (200, CONFIG.max_samples), AA_NOISE, AA_NOISE)[1]


@pytest.mark.parametrize(
    ("boundary", "intersection"),
    [
        # The textbook peeking mistake, with the running intersection that keeps early, too-tight
        # bounds (without it, split mode's union of two arms hides it: 4 % of 200 runs).
        (_naive_z_interval, sq._intersected),
        (_without_log_term, sq._intersected),
    ],
)
def test_a_broken_boundary_fails_the_identical_models_check(monkeypatch, aa_split_flights, boundary, intersection):
    assert np.mean(_first_decisions(*aa_split_flights, CONFIG, "split")[0] == sq.PROMOTE) <= CONFIG.alpha
    monkeypatch.setattr(sq, "_stream_bounds", boundary)
    monkeypatch.setattr(sq, "_intersected", intersection)
    actions, _ = _first_decisions(*aa_split_flights, CONFIG, "split")
    rate = np.mean(actions == sq.PROMOTE)
    print(f"\nmutation {boundary.__name__} with {intersection.__name__}: A/A {rate:.1%} of 200 split runs promoted")
    assert rate > 2 * CONFIG.alpha


def test_opening_on_the_gates_hold_out_keeps_identical_models_rarely_promoted():
    """The loop opens the challenger's test on the offline gate's hold-out (flight_delay.loop.
    hold_out_test), after the gate chose it on those same flights: here a gate passing a challenger
    whose mean loss on the first HOLD_OUT flights is lower, the test going on from the hold-out's
    evidence. Ville's inequality bounds the promotions of all identical challengers by alpha, the
    gate being a stopping rule; among those the gate passed, by alpha over its pass rate."""
    hold_out = 6_000  # about 7 days of the replay's flights
    rng = np.random.default_rng(24)
    passed, promoted = [], []
    for _ in range(0, RUNS, CHUNK):
        champion, challenger = _flights(rng, (CHUNK, CONFIG.max_samples), AA_NOISE, AA_NOISE)
        gate = (champion[:, :hold_out] - challenger[:, :hold_out]).mean(axis=1) > 0
        actions, _ = _first_decisions(champion, challenger, CONFIG)
        passed.append(gate)
        promoted.append(gate & (actions == sq.PROMOTE))
    passed_all, promoted_all = np.concatenate(passed), np.concatenate(promoted)
    rate = promoted_all.mean()
    print(
        f"\nA/A opened on a {hold_out}-flight hold-out: the gate passed {passed_all.mean():.1%}; "
        f"{rate:.1%} of {RUNS} runs promoted ({promoted_all.sum() / passed_all.sum():.1%} of those passed)"
    )
    assert rate <= CONFIG.alpha
