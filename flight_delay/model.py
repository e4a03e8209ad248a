"""The delay classifier: a Keras network whose preprocessing travels inside the saved model.

Imputation, normalisation and category lookups (with an out-of-vocabulary bucket) are layers of
the model, fitted on the training window only. The exported SavedModel takes raw feature values,
so the service feeds it exactly what the feature store returns and nothing is transformed twice.
TensorFlow is imported lazily: importing this module stays cheap for the pipeline's code location.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SERVING_ENDPOINT = "serve"
# Two tensors (all numerics, all categories) instead of one per feature: converting ~40 inputs
# per call cost more than the network itself on the service's hot path.
PACKED_ENDPOINT = "serve_packed"


@dataclass(frozen=True)
class FeatureSpec:
    """Which columns the model reads, and how."""

    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return (*self.numeric, *self.categorical)

    def to_json(self) -> dict[str, list[str]]:
        return {"numeric": list(self.numeric), "categorical": list(self.categorical)}

    @classmethod
    def from_json(cls, value: dict[str, list[str]]) -> FeatureSpec:
        return cls(numeric=tuple(value["numeric"]), categorical=tuple(value["categorical"]))


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run."""

    hidden_units: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    embedding_dim: int = 8
    learning_rate: float = 1e-3
    batch_size: int = 1024
    max_epochs: int = 20
    patience: int = 3
    validation_fraction: float = 0.1
    seed: int = 13


@dataclass
class TrainedModel:
    """A fitted network with what it needs to be exported and described."""

    keras_model: Any
    spec: FeatureSpec
    config: TrainingConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = 0
    bins: dict[str, list[float]] = field(default_factory=dict)


def feature_bins(frame: pd.DataFrame, spec: FeatureSpec, bins: int = 10) -> dict[str, list[float]]:
    """Inner decile edges of each numeric feature in ``frame``: fixed monitoring bins, so live
    value histograms can be compared with training (drift) across replicas and restarts."""
    edges: dict[str, list[float]] = {}
    for c in spec.numeric:
        values = frame[c].astype("float64").dropna()
        qs = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) else []
        edges[c] = [float(q) for q in qs]
    return edges


def bin_counts(edges: list[float], values: Any) -> dict[str, int]:
    """How many ``values`` fall in each monitoring bin: ``"0"``.. ``str(len(edges))``, and
    ``"missing"`` for NaN. One call per feature and batch, not per value."""
    arr = np.asarray(values, dtype="float64")
    nan = np.isnan(arr)
    idx, counts = np.unique(np.searchsorted(edges, arr[~nan], side="right"), return_counts=True)
    out = {str(int(i)): int(c) for i, c in zip(idx, counts)}
    if nan.any():
        out["missing"] = int(nan.sum())
    return out


def to_model_inputs(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Raw feature values as the model's named inputs: float32 numerics (NaN = missing) and
    strings for categories (missing → ``""``, which the lookup sends to the OOV bucket)."""
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise KeyError(f"feature columns missing from the frame: {missing}; expected {list(spec.columns)}")
    inputs: dict[str, np.ndarray] = {}
    for c in spec.numeric:
        inputs[c] = pd.to_numeric(frame[c], errors="raise").astype("float32").to_numpy()
    for c in spec.categorical:
        col = frame[c]
        inputs[c] = np.where(col.isna(), "", col.astype(str)).astype(object)
    return inputs


def _build(frame: pd.DataFrame, spec: FeatureSpec, config: TrainingConfig, linear: bool) -> Any:
    import keras
    from keras import layers, ops

    inputs = {c: keras.Input(shape=(), name=c, dtype="float32") for c in spec.numeric}
    inputs |= {c: keras.Input(shape=(), name=c, dtype="string") for c in spec.categorical}

    parts = []
    for c in spec.numeric:
        values = frame[c].astype("float64")
        mean = float(values.mean()) if values.notna().any() else 0.0
        std = float(values.std()) if values.notna().sum() > 1 else 1.0
        std = std if std > 1e-9 else 1.0
        x = inputs[c]
        isnan = ops.isnan(x)
        filled = ops.where(isnan, ops.full_like(x, mean), x)
        parts.append(ops.expand_dims((filled - mean) / std, -1))
        if values.isna().any():
            parts.append(ops.expand_dims(ops.cast(isnan, "float32"), -1))
    for c in spec.categorical:
        vocab = sorted(v for v in frame[c].dropna().astype(str).unique() if v)
        lookup = layers.StringLookup(vocabulary=vocab, num_oov_indices=1, name=f"{c}_lookup")
        dim = 1 if linear else min(config.embedding_dim, max(2, int(round(len(vocab) ** 0.5))))
        emb = layers.Embedding(len(vocab) + 1, dim, name=f"{c}_embedding")
        parts.append(emb(lookup(inputs[c])))
    x = layers.Concatenate(name="features")(parts)
    if not linear:
        for i, units in enumerate(config.hidden_units):
            x = layers.Dense(units, activation="relu", name=f"dense_{i}")(x)
            if config.dropout:
                x = layers.Dropout(config.dropout, seed=config.seed + i)(x)
    out = layers.Dense(1, activation="sigmoid", name="probability")(x)
    model = keras.Model(inputs, ops.squeeze(out, -1))
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc")],
    )
    return model


def train(
    frame: pd.DataFrame,
    label: str,
    spec: FeatureSpec,
    config: TrainingConfig = TrainingConfig(),
    linear: bool = False,
    time_column: str = "event_timestamp",
) -> TrainedModel:
    """Fit the network (``linear=True``: logistic regression on the same preprocessing).

    The last ``validation_fraction`` of the window, by time, is held out for early stopping, so
    the model is never selected on rows older than the ones it learned from.
    """
    import keras

    if frame.empty:
        raise ValueError("cannot train on an empty training set")
    if frame[label].nunique() < 2:
        raise ValueError(f"label {label!r} has a single class in the training window; need both")
    keras.utils.set_random_seed(config.seed)
    frame = frame.sort_values(time_column, kind="stable")
    cut = int(len(frame) * (1 - config.validation_fraction))
    fit, val = frame.iloc[:cut], frame.iloc[cut:]
    model = _build(fit, spec, config, linear)
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_auc", mode="max", patience=config.patience, restore_best_weights=True
        )
    ]
    result = model.fit(
        to_model_inputs(fit, spec),
        fit[label].astype("float32").to_numpy(),
        validation_data=(to_model_inputs(val, spec), val[label].astype("float32").to_numpy()),
        batch_size=config.batch_size,
        epochs=config.max_epochs,
        callbacks=callbacks,
        shuffle=True,
        verbose=0,
    )
    history = {k: [float(v) for v in vs] for k, vs in result.history.items()}
    best = int(np.argmax(history["val_auc"])) + 1 if history.get("val_auc") else len(history["loss"])
    return TrainedModel(model, spec, config, history, best, feature_bins(fit, spec))


def predict(trained: TrainedModel, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities from the in-memory network (training and evaluation only)."""
    out = trained.keras_model(to_model_inputs(frame, trained.spec), training=False)
    return np.asarray(out, dtype="float64")


def export(trained: TrainedModel, path: Path) -> None:
    """Write a SavedModel whose ``serve`` endpoint takes a dict of raw feature tensors."""
    import keras
    import tensorflow as tf

    signature = {c: tf.TensorSpec([None], tf.float32, name=c) for c in trained.spec.numeric}
    signature |= {c: tf.TensorSpec([None], tf.string, name=c) for c in trained.spec.categorical}
    archive = keras.export.ExportArchive()
    archive.track(trained.keras_model)
    model = trained.keras_model

    def serve(features: dict[str, tf.Tensor]) -> tf.Tensor:
        return model(features, training=False)

    archive.add_endpoint(SERVING_ENDPOINT, serve, input_signature=[signature])
    numeric, categorical = trained.spec.numeric, trained.spec.categorical

    def serve_packed(numbers: tf.Tensor, categories: tf.Tensor) -> tf.Tensor:
        features = {c: numbers[:, i] for i, c in enumerate(numeric)}
        features |= {c: categories[:, i] for i, c in enumerate(categorical)}
        return model(features, training=False)

    archive.add_endpoint(
        PACKED_ENDPOINT, serve_packed,
        input_signature=[tf.TensorSpec([None, len(numeric)], tf.float32, name="numbers"),
                         tf.TensorSpec([None, len(categorical)], tf.string, name="categories")],
    )
    archive.write_out(str(path), verbose=False)
    (path / "feature_spec.json").write_text(json.dumps(trained.spec.to_json(), indent=2))
    (path / "training_config.json").write_text(json.dumps(asdict(trained.config), indent=2))
    (path / "feature_bins.json").write_text(json.dumps(trained.bins, indent=2))


class ServingModel:
    """A loaded SavedModel: one graph call per batch, no Keras ``predict`` loop."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        spec_file = Path(path) / "feature_spec.json"
        if not spec_file.exists():
            raise FileNotFoundError(
                f"{spec_file} is missing: expected a model exported by flight_delay.model.export"
            )
        self.spec = FeatureSpec.from_json(json.loads(spec_file.read_text()))
        try:
            self._module = tf.saved_model.load(str(path))
        except Exception as exc:  # the message of TF's own error is long and vague
            raise ValueError(f"cannot load the SavedModel at {path}: {exc}") from exc
        for endpoint in (SERVING_ENDPOINT, PACKED_ENDPOINT):
            if not hasattr(self._module, endpoint):
                raise ValueError(f"the SavedModel at {path} has no {endpoint!r} endpoint; re-export it")
        # The concrete function skips tf.function's per-call signature matching (~0.2 ms a call).
        self._serve = getattr(self._module, PACKED_ENDPOINT).get_concrete_function(
            tf.TensorSpec([None, len(self.spec.numeric)], tf.float32),
            tf.TensorSpec([None, len(self.spec.categorical)], tf.string),
        )
        self._tf = tf
        bins_file = Path(path) / "feature_bins.json"
        self.bins: dict[str, list[float]] = json.loads(bins_file.read_text()) if bins_file.exists() else {}

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_inputs(to_model_inputs(frame, self.spec))

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        """Probabilities for named input columns (lists or arrays): one graph call."""
        tf = self._tf
        numbers = np.array([inputs[c] for c in self.spec.numeric], dtype=np.float32).T
        categories = np.array([inputs[c] for c in self.spec.categorical], dtype=object).T
        return self._serve(tf.constant(numbers), tf.constant(categories, dtype=tf.string)).numpy().astype("float64")


# The network's inputs: request fields, request-time features and the flight_delay_v1 service.
FLIGHT_DELAY_FEATURES = FeatureSpec(
    numeric=(
        "dep_hour", "month", "days_to_holiday", "distance",
        "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
        "origin_1h_departures", "origin_1h_mean_delay", "origin_1h_late_rate", "origin_1h_pending",
        "origin_1h_scheduled_next",
        "origin_carrier_3h_departures", "origin_carrier_3h_mean_delay", "origin_carrier_3h_late_rate",
        "last_dep_delay", "hours_since_last_dep",
        "plane_year", "plane_seats", "plane_engines",
        "carrier_7d_departures", "carrier_7d_late_rate", "carrier_7d_mean_delay",
        "route_28d_departures", "route_28d_late_rate", "route_28d_mean_delay",
    ),
    categorical=("carrier", "origin", "dest", "weekday", "plane_manufacturer", "plane_engine"),
)
