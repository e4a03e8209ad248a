"""Windows of the service's counters, and the drift and quality rows computed from them."""

import pytest

from flight_delay.drift import Reference, drift
from flight_delay.monitoring import CounterWindow, drift_rows, parse_metrics, quality_rows
from flight_delay.quality import binned_auc

EXPOSITION = """\
# TYPE flight_delay_feature_value_total counter
flight_delay_feature_value_total{feature="temp",bin="0",model_version="m:1",variant="champion"} 30
flight_delay_feature_value_total{feature="temp",bin="1",model_version="m:1",variant="champion"} 50
flight_delay_feature_value_total{feature="temp",bin="missing",model_version="m:1",variant="champion"} 20
flight_delay_feature_value_total{feature="temp",bin="1",model_version="m:1",variant="challenger"} 10
# TYPE flight_delay_feedback_score_bin_total counter
flight_delay_feedback_score_bin_total{model_version="m:1",variant="champion",late="true",bin="3"} 4
flight_delay_feedback_score_bin_total{model_version="m:1",variant="champion",late="false",bin="1"} 6
# TYPE flight_delay_feedback_log_loss summary
flight_delay_feedback_log_loss_sum{model_version="m:1",variant="champion"} 5.0
flight_delay_feedback_log_loss_count{model_version="m:1",variant="champion"} 10
# TYPE flight_delay_feedback_brier summary
flight_delay_feedback_brier_sum{model_version="m:1",variant="champion"} 1.5
flight_delay_feedback_brier_count{model_version="m:1",variant="champion"} 10
# TYPE flight_delay_feedback_probability summary
flight_delay_feedback_probability_sum{model_version="m:1",variant="champion"} 2.0
flight_delay_feedback_probability_count{model_version="m:1",variant="champion"} 10
# TYPE flight_delay_feedback_total counter
flight_delay_feedback_total{model_version="m:1",variant="champion",outcome="hit"} 7
flight_delay_feedback_total{model_version="m:1",variant="champion",outcome="miss"} 3
# TYPE flight_delay_model_serving gauge
flight_delay_model_serving{model_version="m:1",variant="champion"} 1
"""
REFERENCE = Reference.from_json('{"temp": {"edges": [10.0], "fractions": {"0": 0.5, "1": 0.4, "missing": 0.1}}}')


def test_a_scrape_sums_variants_of_a_model():
    window = CounterWindow.from_scrape(parse_metrics(EXPOSITION))
    assert window.feature_bins[("m:1", "temp", "1")] == 60  # champion 50 + challenger 10
    assert window.serving == {("m:1", "champion")}
    assert window.feedback_sums[("m:1", "champion")] == {"log_loss": 5.0, "brier": 1.5, "probability": 2.0, "hits": 7}


def test_drift_and_quality_rows():
    window = CounterWindow.from_scrape(parse_metrics(EXPOSITION))
    (row,) = drift_rows(window, {"m:1": REFERENCE})
    expected = drift({"0": 30, "1": 60, "missing": 20}, REFERENCE.fractions["temp"])
    assert (row.n, row.psi, row.js, row.chi2) == (110, expected.psi, expected.js, expected.chi2)
    (quality,) = quality_rows(window)
    assert quality.n == 10 and quality.log_loss == 0.5 and quality.brier == 0.15 and quality.hit_rate == 0.7
    assert quality.mean_predicted == 0.2 and quality.observed_late_rate == 0.4
    assert quality.auc == binned_auc([0, 0, 0, 4], [0, 6, 0, 0]) == 1.0


def test_a_window_is_the_increase_and_survives_a_restart():
    before = CounterWindow.from_scrape(parse_metrics(EXPOSITION))
    after = CounterWindow.from_scrape(parse_metrics(EXPOSITION.replace("} 30", "} 45").replace("} 20\n", "} 5\n")))
    window = after.minus(before)
    assert window.feature_bins[("m:1", "temp", "0")] == 15
    assert window.feature_bins[("m:1", "temp", "1")] == 0
    assert window.feature_bins[("m:1", "temp", "missing")] == 5  # went down: a restarted worker, counts afresh
    assert CounterWindow.from_json(window.to_json()) == window


def test_a_model_without_reference_has_no_drift_row():
    window = CounterWindow.from_scrape(parse_metrics(EXPOSITION))
    assert drift_rows(window, {}) == []
    assert drift_rows(window, {"m:1": Reference.from_bins({"temp": [10.0]})}) == []


@pytest.mark.parametrize("late", ["true", "false"])
def test_one_outcome_only_has_no_auc(late):
    text = EXPOSITION.replace('late="true"', f'late="{late}"').replace('late="false"', f'late="{late}"')
    (quality,) = quality_rows(CounterWindow.from_scrape(parse_metrics(text)))
    assert quality.auc != quality.auc  # NaN
