"""Live quality from feedback counters, against hand-computed values and scikit-learn."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from flight_delay.quality import FeedbackCounts, binned_auc, counts_from_bins, live_quality


def test_binned_auc_is_the_roc_auc_of_the_bin_midpoints():
    rng = np.random.default_rng(7)
    late = rng.integers(0, 30, 20).astype(float)
    on_time = rng.integers(0, 30, 20).astype(float)
    scores = np.concatenate([np.repeat(np.arange(20), late.astype(int)), np.repeat(np.arange(20), on_time.astype(int))])
    labels = np.concatenate([np.ones(int(late.sum())), np.zeros(int(on_time.sum()))])
    assert binned_auc(late, on_time) == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)


def test_binned_auc_known_answers():
    assert binned_auc([0, 0, 5], [5, 0, 0]) == 1.0  # every late flight scored above every on-time one
    assert binned_auc([5, 0, 0], [0, 0, 5]) == 0.0
    assert binned_auc([2, 0], [2, 0]) == 0.5  # all in one bin: ties
    assert binned_auc([1, 1], [1, 1]) == pytest.approx((1 * 0.5 + 1 * (1 + 0.5)) / 4)
    assert math.isnan(binned_auc([0, 0], [3, 1]))


def test_live_quality_known_answer():
    counts = FeedbackCounts(
        late_bins=[0, 2, 1], on_time_bins=[3, 1, 0], log_loss_sum=2.1, brier_sum=0.7, probability_sum=2.4, hits=5
    )
    q = live_quality(counts)
    assert q.n == 7
    assert q.log_loss == pytest.approx(0.3) and q.brier == pytest.approx(0.1)
    assert q.hit_rate == pytest.approx(5 / 7) and q.mean_predicted == pytest.approx(2.4 / 7)
    assert q.observed_late_rate == pytest.approx(3 / 7)
    assert q.auc == pytest.approx((2 * (3 + 0.5) + 1 * (4 + 0)) / (3 * 4))


def test_counts_from_labelled_bins():
    bins = {("true", "1"): 2.0, ("false", "0"): 3.0, ("true", "19"): 1.0}
    counts = counts_from_bins(bins, {"log_loss": 1.0, "brier": 0.5, "probability": 1.5, "hits": 4.0})
    assert len(counts.late_bins) == 20 and counts.late_bins[1] == 2 and counts.late_bins[19] == 1
    assert counts.on_time_bins[0] == 3 and counts.n == 6


def test_no_feedback_is_an_error():
    with pytest.raises(ValueError, match="no feedback"):
        live_quality(FeedbackCounts([0], [0], 0, 0, 0, 0))
