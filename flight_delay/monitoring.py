"""Drift and live quality from the service's counters: what the pipeline's monitoring asset (and
the loop's sensors) compute, with the functions of :mod:`flight_delay.drift` and
:mod:`flight_delay.quality`, from a window of counts read from Prometheus's HTTP API or from the
services' own ``/metrics``.

The counts of a window are increases of the service's counters (see the README's Monitoring
section): per model version, feature and bin the values served; per model version and variant the
predictions that received feedback by outcome and score bin, and the sums of their log loss,
Brier score and probability, and the hits at the threshold.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from flight_delay.drift import Reference, drift
from flight_delay.quality import FeedbackCounts, counts_from_bins, live_quality

Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Scrape:
    """A Prometheus exposition as ``{(sample name, sorted label pairs): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric_total(scrape: Scrape, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``match``; a counter declared as
    ``name`` is exposed as ``name_total``, and both spellings match."""
    return sum(
        value
        for (metric, labels), value in scrape.items()
        if metric in (name, f"{name}_total") and all(dict(labels).get(k) == v for k, v in match.items())
    )


@dataclass
class CounterWindow:
    """The service's monitoring counters over one window: increases, summed over instances."""

    feature_bins: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (model, feature, bin)
    feedback_bins: dict[tuple[str, str, str, str], float] = field(default_factory=dict)  # (model, variant, late, bin)
    feedback_sums: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)  # (model, variant) -> sums
    serving: set[tuple[str, str]] = field(default_factory=set)  # (model, variant) served at the window's end

    @classmethod
    def from_scrape(cls, scrape: Scrape) -> CounterWindow:
        """The cumulative counters of one or several ``/metrics`` scrapes, summed."""
        window = cls()
        sums: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(_SUMS, 0.0))
        for (name, labels), value in scrape.items():
            d = dict(labels)
            if name == "flight_delay_feature_value_total":
                key = (d["model_version"], d["feature"], d["bin"])
                window.feature_bins[key] = window.feature_bins.get(key, 0.0) + value
            elif name == "flight_delay_feedback_score_bin_total":
                key4 = (d["model_version"], d["variant"], d["late"], d["bin"])
                window.feedback_bins[key4] = window.feedback_bins.get(key4, 0.0) + value
            elif name in _SUM_SAMPLES:
                sums[(d["model_version"], d["variant"])][_SUM_SAMPLES[name]] += value
            elif name == "flight_delay_feedback_total" and d.get("outcome") == "hit":
                sums[(d["model_version"], d["variant"])]["hits"] += value
            elif name == "flight_delay_model_serving" and value >= 1:
                window.serving.add((d["model_version"], d["variant"]))
        window.feedback_sums = dict(sums)
        return window

    def minus(self, earlier: CounterWindow) -> CounterWindow:
        """The increase from ``earlier`` (cumulative) to this (cumulative); a counter that went
        down was reset (a restarted worker) and counts from zero."""

        def delta(now: Mapping, before: Mapping) -> dict:
            return {k: (v - before.get(k, 0.0) if v >= before.get(k, 0.0) else v) for k, v in now.items()}

        return CounterWindow(
            delta(self.feature_bins, earlier.feature_bins),
            delta(self.feedback_bins, earlier.feedback_bins),
            {k: delta(v, earlier.feedback_sums.get(k, {})) for k, v in self.feedback_sums.items()},
            set(self.serving),
        )

    def to_json(self) -> dict:
        return {
            "feature_bins": [[*k, v] for k, v in self.feature_bins.items()],
            "feedback_bins": [[*k, v] for k, v in self.feedback_bins.items()],
            "feedback_sums": [[*k, v] for k, v in self.feedback_sums.items()],
            "serving": sorted(self.serving),
        }

    @classmethod
    def from_json(cls, value: Mapping) -> CounterWindow:
        return cls(
            {tuple(r[:3]): float(r[3]) for r in value["feature_bins"]},
            {tuple(r[:4]): float(r[4]) for r in value["feedback_bins"]},
            {tuple(r[:2]): dict(r[2]) for r in value["feedback_sums"]},
            {tuple(s) for s in value["serving"]},
        )


_SUMS = ("log_loss", "brier", "probability", "hits")
_SUM_SAMPLES = {
    "flight_delay_feedback_log_loss_sum": "log_loss",
    "flight_delay_feedback_brier_sum": "brier",
    "flight_delay_feedback_probability_sum": "probability",
}


@dataclass(frozen=True)
class DriftRow:
    model_version: str
    feature: str
    n: int
    psi: float
    js: float
    chi2: float
    dof: int
    p_value: float


@dataclass(frozen=True)
class QualityRow:
    model_version: str
    variant: str
    n: int
    log_loss: float
    brier: float
    hit_rate: float
    mean_predicted: float
    observed_late_rate: float
    auc: float


def drift_rows(window: CounterWindow, references: Mapping[str, Reference]) -> list[DriftRow]:
    """Every served model's drift per quantity over the window (quantities with values only)."""
    counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for (model, feature, b), n in window.feature_bins.items():
        counts[(model, feature)][b] = n
    rows = []
    for (model, feature), by_bin in sorted(counts.items()):
        reference = references.get(model)
        shares = reference.fractions.get(feature) if reference else None
        if not shares or sum(by_bin.values()) <= 0:
            continue
        f = drift(by_bin, shares)
        rows.append(DriftRow(model, feature, f.n, f.psi, f.js, f.chi2, f.dof, f.p_value))
    return rows


def quality_rows(window: CounterWindow) -> list[QualityRow]:
    """Every variant's live quality over the window (variants with feedback only)."""
    bins: dict[tuple[str, str], dict[tuple[str, str], float]] = defaultdict(dict)
    for (model, variant, late, b), n in window.feedback_bins.items():
        bins[(model, variant)][(late, b)] = n
    rows = []
    for key, by_bin in sorted(bins.items()):
        sums = window.feedback_sums.get(key, dict.fromkeys(_SUMS, 0.0))
        counts: FeedbackCounts = counts_from_bins(by_bin, {s: sums.get(s, 0.0) for s in _SUMS})
        if counts.n <= 0:
            continue
        q = live_quality(counts)
        rows.append(
            QualityRow(
                key[0], key[1], q.n, q.log_loss, q.brier, q.hit_rate, q.mean_predicted, q.observed_late_rate, q.auc
            )
        )
    return rows


def finite_or_none(values: Iterable[float]) -> list[float | None]:
    return [v if math.isfinite(v) else None for v in values]
