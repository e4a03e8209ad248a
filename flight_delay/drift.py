"""Monitoring bins: fixed from the training window and saved with every model, so the values a
service sees can be compared with the ones the model learned from, across replicas and restarts."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np
import pandas as pd

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


def bin_counts(edges: list[float], values: Any) -> dict[str, int]:
    """How many ``values`` fall in each monitoring bin: ``"0"``.. ``str(len(edges))``, and
    ``"missing"`` for NaN. One call per feature and batch, not per value."""
    if len(values) <= _BISECT_MAX:
        out: dict[str, int] = {}
        for x in values:
            b = "missing" if x != x else str(bisect_right(edges, x))
            out[b] = out.get(b, 0) + 1
        return out
    arr = np.asarray(values, dtype="float64")
    nan = np.isnan(arr)
    idx, counts = np.unique(np.searchsorted(edges, arr[~nan], side="right"), return_counts=True)
    out = {str(int(i)): int(c) for i, c in zip(idx, counts)}
    if nan.any():
        out["missing"] = int(nan.sum())
    return out
