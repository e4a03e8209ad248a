"""Drift statistics, monitoring bins and reference distributions, against hand-computed values
and scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import chisquare

from flight_delay.drift import (
    FRACTION_FLOOR,
    MISSING,
    OTHER,
    SCORE_FEATURE,
    Binning,
    Reference,
    categorical_binning,
    chi_square,
    drift,
    js_distance,
    psi,
    reference_distribution,
)

REFERENCE = {"a": 0.4, "b": 0.4, "c": 0.2}
COUNTS = {"a": 50, "b": 30, "c": 20}


def test_psi_known_answer():
    expected = (0.5 - 0.4) * math.log(0.5 / 0.4) + (0.3 - 0.4) * math.log(0.3 / 0.4) + 0.0
    assert psi(COUNTS, REFERENCE) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.0510826, abs=1e-7)


def test_js_distance_is_scipys_with_natural_log():
    p = np.array([0.5, 0.3, 0.2])
    q = np.array([0.4, 0.4, 0.2])
    assert js_distance(COUNTS, REFERENCE) == pytest.approx(jensenshannon(p, q), rel=1e-12)
    m = (p + q) / 2
    by_hand = math.sqrt(0.5 * sum(p * np.log(p / m)) + 0.5 * sum(q * np.log(q / m)))
    assert js_distance(COUNTS, REFERENCE) == pytest.approx(by_hand, rel=1e-12)


def test_chi_square_is_scipys():
    statistic, dof, p_value = chi_square(COUNTS, REFERENCE)
    want = chisquare([50, 30, 20], f_exp=[40, 40, 20])
    assert statistic == pytest.approx(want.statistic, rel=1e-12) and statistic == pytest.approx(5.0)
    assert dof == 2 and p_value == pytest.approx(want.pvalue, rel=1e-12)


def test_the_same_distribution_has_no_drift():
    figures = drift({"a": 400, "b": 400, "c": 200}, REFERENCE)
    assert figures.n == 1000 and figures.psi == 0 and figures.js == 0 and figures.chi2 == 0 and figures.p_value == 1


def test_empty_bins_are_floored_on_both_sides():
    counts = {"a": 100, "b": 0, "c": 0}
    reference = {"a": 0.5, "b": 0.5, "c": 0.0}
    f = FRACTION_FLOOR
    expected = (1 - 0.5) * math.log(1 / 0.5) + (f - 0.5) * math.log(f / 0.5) + (f - f) * math.log(f / f)
    assert psi(counts, reference) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(js_distance(counts, reference)) and math.isfinite(chi_square(counts, reference)[0])


def test_psi_grows_with_the_shift():
    small = psi({"a": 42, "b": 38, "c": 20}, REFERENCE)
    large = psi({"a": 80, "b": 10, "c": 10}, REFERENCE)
    assert 0 < small < large


def test_bad_inputs_say_what_was_expected():
    with pytest.raises(ValueError, match="not in the reference"):
        psi({"a": 1, "z": 2}, REFERENCE)
    with pytest.raises(ValueError, match="no live values"):
        psi({"a": 0}, REFERENCE)


def test_numeric_and_categorical_binning():
    numeric = Binning("temp", edges=(10.0, 20.0))
    assert numeric.labels == ("0", "1", "2", MISSING)
    assert numeric.count([5.0, 10.0, 15.0, 25.0, float("nan")]) == {"0": 1, "1": 2, "2": 1, MISSING: 1}
    carriers = Binning("carrier", categories=("AA", "UA"))
    assert carriers.labels == ("AA", "UA", OTHER, MISSING)
    assert carriers.count(["UA", "B6", "", None, "UA"]) == {"UA": 2, OTHER: 1, MISSING: 2}


def test_a_value_on_an_edge_is_in_the_bin_above_on_both_paths():
    """Few values are binned one by one, many at once: both put a value equal to an edge in the
    bin above it, as training's deciles were cut (bisect_right)."""
    numeric = Binning("temp", edges=(10.0, 20.0))
    few = [10.0, 20.0, 9.999]
    many = few * 100
    assert numeric.count(few) == {"1": 1, "2": 1, "0": 1}
    assert numeric.count(many) == {"1": 100, "2": 100, "0": 100}


def test_top_categories_by_frequency_then_value():
    values = pd.Series(["B"] * 3 + ["A"] * 3 + ["C"] * 2 + ["D"] + [None, ""])
    assert categorical_binning("x", values, top=2).categories == ("A", "B")  # ties broken by value
    assert categorical_binning("x", values, top=3).categories == ("A", "B", "C")


def test_the_reference_holds_every_bin_and_round_trips():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"temp": rng.normal(50, 10, 500), "carrier": rng.choice(["AA", "UA", "B6"], 500)})
    frame.loc[:9, "temp"] = np.nan
    scores = rng.uniform(0, 1, 200)
    reference = reference_distribution(frame, ("temp",), ("carrier",), scores)
    for feature, binning in reference.binnings.items():
        shares = reference.fractions[feature]
        assert set(shares) == set(binning.labels) and sum(shares.values()) == pytest.approx(1.0)
    assert reference.fractions["temp"][MISSING] == pytest.approx(10 / 500)
    assert reference.binnings[SCORE_FEATURE].labels[:-1] == tuple(str(i) for i in range(20))
    assert Reference.from_json(reference.to_json()) == reference
