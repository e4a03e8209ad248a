"""One training run: the network and its logistic baseline on the training split, both evaluated
on the evaluation split, and what the registry records about them (labels, metadata, lineage)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flight_delay import model as model_lib
from flight_delay.drift import reference_distribution
from flight_delay.evaluation import calibration_table, classification_metrics
from flight_delay.flights import LOCAL_TZ

LABEL = "is_late"
SUMMARY_METRICS = ("auc", "log_loss", "brier")


def fingerprint(frame: pd.DataFrame) -> str:
    """A short content hash of a frame (its values, not its index)."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()[:16]


def local_window(ts: pd.Series) -> str:
    """``first/last`` local day of some timestamps."""
    local = ts.dt.tz_convert(LOCAL_TZ)
    return f"{local.min():%Y-%m-%d}/{local.max():%Y-%m-%d}"


@dataclass
class TrainingOutcome:
    """A trained network with its evaluation beside the baseline's."""

    network: model_lib.TrainedModel
    params: model_lib.TrainingConfig
    metrics: dict[str, float]
    baseline_metrics: dict[str, float]
    calibration: pd.DataFrame
    train_window: str
    evaluation_window: str
    horizon_minutes: int
    train_rows: int
    evaluation_rows: int
    seconds: float

    @property
    def ece(self) -> float:
        return float(self.calibration.attrs["ece"])

    def export(self, path: Path) -> None:
        model_lib.export(self.network, path)

    def labels(self, feature_service: str) -> dict[str, str]:
        """Registry labels: strings a user filters models by."""
        return {
            "feature_service": feature_service,
            "train_window": self.train_window,
            "evaluation_window": self.evaluation_window,
            "horizon_minutes": str(self.horizon_minutes),
            "auc": f"{self.metrics['auc']:.4f}",
        }

    def metadata(self, lineage: dict[str, Any]) -> dict[str, Any]:
        """Registry metadata: every figure, the calibration table, the spec, config and lineage."""
        return {
            "metrics": self.metrics,
            "baseline_metrics": self.baseline_metrics,
            "ece": self.ece,
            "calibration": self.calibration.to_dict(orient="records"),
            "feature_spec": self.network.spec.to_json(),
            "training_config": asdict(self.params) | {"hidden_units": list(self.params.hidden_units)},
            "best_epoch": self.network.best_epoch,
            "epochs_run": len(self.network.history.get("loss", [])),
            "lineage": {"train_rows": self.train_rows, "evaluation_rows": self.evaluation_rows, **lineage},
        }


def train_and_evaluate(
    training_set: pd.DataFrame,
    params: model_lib.TrainingConfig,
    spec: model_lib.FeatureSpec = model_lib.FLIGHT_DELAY_FEATURES,
) -> TrainingOutcome:
    """Train on the ``train`` split, evaluate on the ``evaluation`` split of a training set."""
    train = training_set[training_set["split"] == "train"]
    held_out = training_set[training_set["split"] == "evaluation"]
    if held_out.empty:
        raise ValueError("the training set has no evaluation rows; set the evaluation window inside the data")
    started = time.monotonic()
    network = model_lib.train(train, LABEL, spec, params)
    baseline = model_lib.train(train, LABEL, spec, params, linear=True)
    seconds = time.monotonic() - started
    y = held_out[LABEL].to_numpy()
    p = model_lib.predict(network, held_out)
    network.reference = reference_distribution(train, spec.numeric, spec.categorical, p)
    lead = (training_set["sched_dep_ts"] - training_set["event_timestamp"]).median()
    return TrainingOutcome(
        network=network,
        params=params,
        metrics=classification_metrics(y, p),
        baseline_metrics=classification_metrics(y, model_lib.predict(baseline, held_out)),
        calibration=calibration_table(y, p),
        train_window=local_window(train["sched_dep_ts"]),
        evaluation_window=local_window(held_out["sched_dep_ts"]),
        horizon_minutes=int(round(lead.total_seconds() / 60)),
        train_rows=len(train),
        evaluation_rows=len(held_out),
        seconds=seconds,
    )


def evaluation_rows(training_set: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """The evaluation split and its labels."""
    held_out = training_set[training_set["split"] == "evaluation"]
    return held_out, held_out[LABEL].to_numpy()
