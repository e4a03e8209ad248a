"""Live quality of a model from the outcomes of its predictions, over a window: the same figures
the Prometheus recording rules compute from the service's feedback counters.

Feedback arrives after departure, so a window's figures describe predictions made at least the
prediction horizon (60 minutes by default) before; they trail the traffic by that label delay.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class FeedbackCounts:
    """A model variant's feedback counters over a window (increases, not totals).

    ``late_bins`` and ``on_time_bins``: predictions with feedback per score bin (twenty of width
    0.05, the lowest first), by outcome; ``log_loss_sum``, ``brier_sum``, ``probability_sum``:
    sums over the same predictions; ``hits``: predictions right at the service's threshold."""

    late_bins: Sequence[float]
    on_time_bins: Sequence[float]
    log_loss_sum: float
    brier_sum: float
    probability_sum: float
    hits: float

    @property
    def n(self) -> float:
        return float(sum(self.late_bins) + sum(self.on_time_bins))


@dataclass(frozen=True)
class LiveQuality:
    n: int
    log_loss: float
    brier: float
    hit_rate: float
    mean_predicted: float
    observed_late_rate: float
    auc: float  # NaN when the window holds one outcome only

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def binned_auc(late_bins: Sequence[float], on_time_bins: Sequence[float]) -> float:
    """ROC AUC from score histograms: the chance a late flight's score is above an on-time
    flight's, pairs in the same bin counting one half (Mann-Whitney on binned scores)."""
    if len(late_bins) != len(on_time_bins):
        raise ValueError(f"expected as many late as on-time bins, got {len(late_bins)} and {len(on_time_bins)}")
    late_total, on_time_total = float(sum(late_bins)), float(sum(on_time_bins))
    if late_total == 0 or on_time_total == 0:
        return math.nan
    below = 0.0  # on-time predictions in lower bins
    pairs = 0.0
    for late, on_time in zip(late_bins, on_time_bins):
        pairs += late * (below + 0.5 * on_time)
        below += on_time
    return pairs / (late_total * on_time_total)


def live_quality(counts: FeedbackCounts) -> LiveQuality:
    """Every live quality figure of one variant's window of feedback."""
    n = counts.n
    if n <= 0:
        raise ValueError("no feedback in the window")
    return LiveQuality(
        n=int(round(n)),
        log_loss=counts.log_loss_sum / n,
        brier=counts.brier_sum / n,
        hit_rate=counts.hits / n,
        mean_predicted=counts.probability_sum / n,
        observed_late_rate=float(sum(counts.late_bins)) / n,
        auc=binned_auc(counts.late_bins, counts.on_time_bins),
    )


def counts_from_bins(bins: Mapping[tuple[str, str], float], sums: Mapping[str, float]) -> FeedbackCounts:
    """A :class:`FeedbackCounts` from ``{(late, bin): count}`` (late ``"true"``/``"false"``, bin
    ``"0"``..``"19"``) and ``{"log_loss", "brier", "probability", "hits"}`` sums."""
    width = 1 + max((int(b) for _, b in bins), default=19)
    late = [float(bins.get(("true", str(i)), 0.0)) for i in range(width)]
    on_time = [float(bins.get(("false", str(i)), 0.0)) for i in range(width)]
    return FeedbackCounts(late, on_time, sums["log_loss"], sums["brier"], sums["probability"], sums["hits"])
