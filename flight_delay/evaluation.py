"""Quality measures of probabilistic binary predictions."""

from __future__ import annotations

import numpy as np
import pandas as pd


def classification_metrics(y_true: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, log loss, Brier score, base rate and mean prediction."""
    from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y_true, dtype="float64")
    p = np.clip(np.asarray(p, dtype="float64"), 1e-7, 1 - 1e-7)
    if y.size == 0:
        raise ValueError("no rows to evaluate")
    if np.unique(y).size < 2:
        raise ValueError("the evaluation window holds a single class; AUC is undefined")
    return {
        "auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "base_rate": float(y.mean()),
        "mean_prediction": float(p.mean()),
        "rows": int(y.size),
    }


def calibration_table(y_true: np.ndarray, p: np.ndarray, bins: int = 10) -> pd.DataFrame:
    """Predicted vs observed late rate per decile of predicted probability, and the expected
    calibration error (row-weighted mean gap) as ``frame.attrs['ece']``."""
    frame = pd.DataFrame({"y": np.asarray(y_true, dtype="float64"), "p": np.asarray(p, dtype="float64")})
    frame["bin"] = pd.qcut(frame["p"], q=bins, labels=False, duplicates="drop")
    table = frame.groupby("bin").agg(rows=("y", "size"), predicted=("p", "mean"), observed=("y", "mean"))
    table["gap"] = (table["predicted"] - table["observed"]).abs()
    table.attrs["ece"] = float((table["gap"] * table["rows"]).sum() / table["rows"].sum())
    return table.reset_index(drop=True)
