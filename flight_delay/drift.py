"""Reference distributions and monitoring bins: fixed from the training window and saved with
every model, so that the values a service sees can be compared with the ones the model learned
from, across replicas and restarts.

Every monitored quantity is binned the same way in training and in the service:
- a numeric feature by the inner deciles of its training values (``"0"`` .. ``"k"``), with
  ``"missing"`` for no value;
- a categorical feature by its most frequent training values (up to :data:`TOP_CATEGORIES`), with
  ``"other"`` for the rest and ``"missing"`` for no value;
- the model's score (:data:`SCORE_FEATURE`) by twenty equal-width bins of [0, 1], its reference
  taken on the evaluation window.
A :class:`Reference` holds each quantity's binning and its reference fraction per bin.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

REFERENCE_FILE = "reference.json"  # written next to the exported model
MISSING, OTHER = "missing", "other"
TOP_CATEGORIES = 20
SCORE_FEATURE = "prediction_score"
SCORE_EDGES: tuple[float, ...] = tuple(round(i / 20, 2) for i in range(1, 20))  # 20 bins of width 0.05
# Above this many values a call bins with numpy; below, bisect per value beats numpy's per-call
# overhead (a single request's values).
_BISECT_MAX = 16


def feature_bins(frame: pd.DataFrame, columns: tuple[str, ...], bins: int = 10) -> dict[str, list[float]]:
    """Inner decile edges of each numeric column of ``frame``: fixed monitoring bins, so live
    value histograms can be compared with training (drift) across replicas and restarts."""
    edges: dict[str, list[float]] = {}
    for c in columns:
        values = frame[c].astype("float64").dropna()
        qs = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) else []
        edges[c] = [float(q) for q in qs]
    return edges


def bin_counts(edges: list[float] | tuple[float, ...], values: Any) -> dict[str, int]:
    """How many ``values`` fall in each monitoring bin: ``"0"``.. ``str(len(edges))``, and
    ``"missing"`` for NaN. One call per feature and batch, not per value."""
    if len(values) <= _BISECT_MAX:
        out: dict[str, int] = {}
        for x in values:
            b = MISSING if x != x else str(bisect_right(edges, x))
            out[b] = out.get(b, 0) + 1
        return out
    arr = np.asarray(values, dtype="float64")
    nan = np.isnan(arr)
    idx, counts = np.unique(np.searchsorted(edges, arr[~nan], side="right"), return_counts=True)
    out = {str(int(i)): int(c) for i, c in zip(idx, counts)}
    if nan.any():
        out[MISSING] = int(nan.sum())
    return out


@dataclass(frozen=True)
class Binning:
    """How one monitored quantity is binned: by numeric ``edges`` or by a list of ``categories``."""

    feature: str
    edges: tuple[float, ...] | None = None
    categories: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.edges is None) == (self.categories is None):
            raise ValueError(f"{self.feature}: expected numeric edges or categories, exactly one")
        object.__setattr__(self, "_known", frozenset(self.categories or ()))

    @property
    def labels(self) -> tuple[str, ...]:
        """Every bin of this quantity, in order."""
        if self.edges is not None:
            return (*(str(i) for i in range(len(self.edges) + 1)), MISSING)
        return (*self.categories, OTHER, MISSING)

    def count(self, values: Any) -> dict[str, int]:
        """How many ``values`` fall in each bin (only the bins that got some)."""
        if self.edges is not None:
            return bin_counts(self.edges, values)
        known = self._known
        out: dict[str, int] = {}
        for v, n in Counter(values).items():  # a few distinct values among many
            b = MISSING if v is None or v == "" else (v if v in known else OTHER)
            out[b] = out.get(b, 0) + n
        return out

    def to_json(self) -> dict[str, Any]:
        if self.edges is not None:
            return {"edges": list(self.edges)}
        return {"categories": list(self.categories or ())}

    @classmethod
    def from_json(cls, feature: str, value: Mapping[str, Any]) -> Binning:
        if "edges" in value:
            return cls(feature, edges=tuple(float(e) for e in value["edges"]))
        return cls(feature, categories=tuple(str(c) for c in value["categories"]))


def fractions(counts: Mapping[str, int], labels: Iterable[str]) -> dict[str, float]:
    """Each bin's share of ``counts`` (every label present, 0.0 for an empty bin)."""
    labels = list(labels)
    total = sum(counts.get(b, 0) for b in labels)
    if total == 0:
        raise ValueError("no values to take fractions of")
    return {b: counts.get(b, 0) / total for b in labels}


@dataclass(frozen=True)
class Reference:
    """A model's reference distributions: each monitored quantity's binning and the fraction of
    the reference values (training window; evaluation window for the score) in each bin."""

    binnings: dict[str, Binning]
    fractions: dict[str, dict[str, float]]

    def to_json(self) -> str:
        return json.dumps(
            {f: {**b.to_json(), "fractions": self.fractions.get(f, {})} for f, b in self.binnings.items()}, indent=1
        )

    @classmethod
    def from_json(cls, text: str) -> Reference:
        raw = json.loads(text)
        binnings = {f: Binning.from_json(f, v) for f, v in raw.items()}
        return cls(binnings, {f: {str(b): float(x) for b, x in v.get("fractions", {}).items()} for f, v in raw.items()})

    @classmethod
    def from_bins(cls, edges: Mapping[str, list[float]]) -> Reference:
        """A reference without fractions from numeric monitoring edges alone (a model exported
        before reference distributions were saved)."""
        return cls({f: Binning(f, edges=tuple(e)) for f, e in edges.items()}, {})


def categorical_binning(feature: str, values: pd.Series, top: int = TOP_CATEGORIES) -> Binning:
    """The ``top`` most frequent non-empty values of ``values`` (ties by value), as categories."""
    present = values.dropna().astype(str)
    present = present[present != ""]
    counts = present.value_counts()
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return Binning(feature, categories=tuple(sorted(v for v, _ in ordered)))


def reference_distribution(
    frame: pd.DataFrame, numeric: tuple[str, ...], categorical: tuple[str, ...], scores: np.ndarray
) -> Reference:
    """The reference of a model trained on ``frame`` (its training window) whose evaluation-window
    probabilities are ``scores``."""
    binnings: dict[str, Binning] = {}
    for feature, edges in feature_bins(frame, numeric).items():
        binnings[feature] = Binning(feature, edges=tuple(edges))
    for feature in categorical:
        binnings[feature] = categorical_binning(feature, frame[feature])
    binnings[SCORE_FEATURE] = Binning(SCORE_FEATURE, edges=SCORE_EDGES)
    shares: dict[str, dict[str, float]] = {}
    for feature, binning in binnings.items():
        if feature == SCORE_FEATURE:
            values: Any = np.asarray(scores, dtype="float64")
        elif binning.edges is not None:
            values = frame[feature].astype("float64").to_numpy()
        else:
            values = [None if pd.isna(v) else str(v) for v in frame[feature]]
        shares[feature] = fractions(binning.count(values), binning.labels)
    return Reference(binnings, shares)


# -- drift statistics: live counts against a reference ---------------------------------------------
# Both shares are floored at FRACTION_FLOOR before any logarithm or division (an empty bin on
# either side would otherwise make PSI infinite): the same rule as the Prometheus recording rules.
FRACTION_FLOOR = 1e-4


@dataclass(frozen=True)
class DriftFigures:
    """One quantity's drift over some window: how many values, PSI, Jensen-Shannon distance
    (natural log) and the chi-square test of the counts against the reference."""

    n: int
    psi: float
    js: float
    chi2: float
    dof: int
    p_value: float


def _shares(counts: Mapping[str, float], reference: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray, float]:
    bins = list(reference)
    missing = sorted(set(counts) - set(bins))
    if missing:
        raise ValueError(f"live bins {missing} are not in the reference's bins {bins}")
    c = np.array([float(counts.get(b, 0.0)) for b in bins])
    n = float(c.sum())
    if n <= 0:
        raise ValueError("no live values to compare with the reference")
    p = np.maximum(c / n, FRACTION_FLOOR)
    q = np.maximum(np.array([float(reference[b]) for b in bins]), FRACTION_FLOOR)
    return p, q, n


def psi(counts: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Population stability index: Σ (p − q) ln(p / q) over the reference's bins."""
    p, q, _ = _shares(counts, reference)
    return float(np.sum((p - q) * np.log(p / q)))


def js_distance(counts: Mapping[str, float], reference: Mapping[str, float]) -> float:
    """Jensen-Shannon distance (natural log): sqrt of the mean KL divergence to the midpoint."""
    p, q, _ = _shares(counts, reference)
    m = (p + q) / 2
    return float(np.sqrt(0.5 * np.sum(p * np.log(p / m)) + 0.5 * np.sum(q * np.log(q / m))))


def chi_square(counts: Mapping[str, float], reference: Mapping[str, float]) -> tuple[float, int, float]:
    """Pearson's chi-square test of the counts against the reference shares: statistic, degrees of
    freedom (bins − 1), p-value."""
    from scipy.stats import chi2

    p, q, n = _shares(counts, reference)
    expected = n * q
    observed = np.array([float(counts.get(b, 0.0)) for b in reference])
    statistic = float(np.sum((observed - expected) ** 2 / expected))
    dof = len(q) - 1
    return statistic, dof, float(chi2.sf(statistic, dof))


def drift(counts: Mapping[str, float], reference: Mapping[str, float]) -> DriftFigures:
    """Every drift figure of one quantity."""
    statistic, dof, p_value = chi_square(counts, reference)
    return DriftFigures(
        int(round(sum(counts.values()))),
        psi(counts, reference),
        js_distance(counts, reference),
        statistic,
        dof,
        p_value,
    )
