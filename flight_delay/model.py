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

from flight_delay.drift import REFERENCE_FILE, Reference, feature_bins
from flight_delay.feature_tables import (
    AIRCRAFT_PROFILE_NUMERIC,
    AIRCRAFT_PROFILE_TEXT,
    CARRIER_7D,
    HOURS_SINCE_LAST_DEP,
    LAST_DEP_DELAY,
    ORIGIN_1H,
    ORIGIN_CARRIER_3H,
    ROUTE_28D,
    WEATHER_COLUMNS,
    activity_columns,
)
from flight_delay.flights import SCHEDULE_CATEGORICAL, SCHEDULE_NUMERIC

if TYPE_CHECKING:  # pragma: no cover
    import tensorflow as tf

SERVING_ENDPOINT = "serve"
# Two tensors (all numerics, all categories) instead of one per feature: converting every input
# separately per call cost more than the network itself on the service's hot path.
PACKED_ENDPOINT = "serve_packed"
SPEC_FILE = "feature_spec.json"  # which columns an exported model reads (FeatureSpec)
# The network's weights and preprocessing as plain arrays, next to the SavedModel (which stays
# the canonical artifact), for the numpy forward pass of flight_delay.forward.
FORWARD_FILE = "forward.npz"
FORWARD_FORMAT_VERSION = 1
# Largest |numpy - SavedModel| tolerated on the probe batch when a model is exported.
PARITY_TOLERANCE = 1e-5


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

    @classmethod
    def read(cls, model_dir: Path) -> FeatureSpec:
        """The spec of an exported model, from its folder (without loading the model)."""
        spec_file = Path(model_dir) / SPEC_FILE
        if not spec_file.exists():
            raise FileNotFoundError(f"{spec_file} is missing: expected a model exported by flight_delay.model.export")
        return cls.from_json(json.loads(spec_file.read_text()))


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
    # What ``fit_preprocessing`` fitted (means, stds, NaN indicators, vocabularies); empty for a
    # model built before it was recorded, which then exports without ``forward.npz``.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # The reference distributions monitoring compares live traffic with (set once the model has
    # been evaluated: the score's reference is its evaluation window).
    reference: Reference | None = None


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


def fit_preprocessing(frame: pd.DataFrame, spec: FeatureSpec) -> dict[str, Any]:
    """The preprocessing statistics of ``frame`` (the training window), JSON-able.

    ``{"numeric": {column: {"mean", "std", "indicator"}}, "categorical": {column: {"vocabulary"}}}``
    in ``spec`` order. Missing numerics are imputed with the mean and, when the column had missing
    values in the window, flagged by an indicator feature; the vocabulary is the sorted non-empty
    values (everything else, ``""`` included, goes to the out-of-vocabulary index 0).
    """
    numeric: dict[str, dict[str, Any]] = {}
    for c in spec.numeric:
        values = frame[c].astype("float64")
        mean = float(values.mean()) if values.notna().any() else 0.0
        std = float(values.std()) if values.notna().sum() > 1 else 1.0
        std = std if std > 1e-9 else 1.0
        numeric[c] = {"mean": mean, "std": std, "indicator": bool(values.isna().any())}
    categorical = {
        c: {"vocabulary": sorted(v for v in frame[c].dropna().astype(str).unique() if v)} for c in spec.categorical
    }
    return {"numeric": numeric, "categorical": categorical}


def _build(
    frame: pd.DataFrame,
    spec: FeatureSpec,
    config: TrainingConfig,
    linear: bool,
    preprocessing: dict[str, Any] | None = None,
) -> Any:
    import keras
    from keras import layers, ops

    prep = preprocessing if preprocessing is not None else fit_preprocessing(frame, spec)
    inputs = {c: keras.Input(shape=(), name=c, dtype="float32") for c in spec.numeric}
    inputs |= {c: keras.Input(shape=(), name=c, dtype="string") for c in spec.categorical}

    # Feature order (NumpyForward relies on it): per numeric its value then its indicator, if
    # any; then one embedding per categorical, in spec order.
    parts = []
    for c in spec.numeric:
        stats = prep["numeric"][c]
        mean, std = stats["mean"], stats["std"]
        x = inputs[c]
        isnan = ops.isnan(x)
        filled = ops.where(isnan, ops.full_like(x, mean), x)
        parts.append(ops.expand_dims((filled - mean) / std, -1))
        if stats["indicator"]:
            parts.append(ops.expand_dims(ops.cast(isnan, "float32"), -1))
    for c in spec.categorical:
        vocab = prep["categorical"][c]["vocabulary"]
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
    preprocessing = fit_preprocessing(fit, spec)
    model = _build(fit, spec, config, linear, preprocessing)
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
    return TrainedModel(model, spec, config, history, best, feature_bins(fit, spec.numeric), preprocessing)


def predict(trained: TrainedModel, frame: pd.DataFrame) -> np.ndarray:
    """Probabilities from the in-memory network (training and evaluation only)."""
    out = trained.keras_model(to_model_inputs(frame, trained.spec), training=False)
    return np.asarray(out, dtype="float64")


def forward_arrays(trained: TrainedModel) -> dict[str, np.ndarray]:
    """What a numpy forward pass needs, as plain arrays (the content of ``forward.npz``).

    ``format_version``; ``numeric_names`` / ``numeric_mean`` / ``numeric_std`` /
    ``numeric_indicator`` in ``spec.numeric`` order; ``categorical_names`` and, for the i-th of
    them, ``vocabulary_{i}`` (unicode, index 0 = out of vocabulary so row j+1 of the embedding is
    ``vocabulary[j]``) and ``embedding_{i}`` (``len(vocabulary) + 1`` rows); ``layer_names`` /
    ``activations`` and ``kernel_{j}`` / ``bias_{j}`` of the dense layers in order
    (``dense_0``, ``dense_1``, ..., ``probability``), read from the Keras model by name.
    """
    spec, prep, model = trained.spec, trained.preprocessing, trained.keras_model
    if not prep:
        raise ValueError("the trained model has no recorded preprocessing (TrainedModel.preprocessing)")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORWARD_FORMAT_VERSION, dtype=np.int64),
        "numeric_names": np.array(spec.numeric, dtype=np.str_).reshape(-1),
        "numeric_mean": np.array([prep["numeric"][c]["mean"] for c in spec.numeric], dtype=np.float64),
        "numeric_std": np.array([prep["numeric"][c]["std"] for c in spec.numeric], dtype=np.float64),
        "numeric_indicator": np.array([prep["numeric"][c]["indicator"] for c in spec.numeric], dtype=bool),
        "categorical_names": np.array(spec.categorical, dtype=np.str_).reshape(-1),
    }
    for i, c in enumerate(spec.categorical):
        vocab = list(prep["categorical"][c]["vocabulary"])
        # The lookup layer is what the SavedModel runs: its vocabulary must be the recorded one.
        in_layer = [str(v) for v in model.get_layer(f"{c}_lookup").get_vocabulary()[1:]]
        if in_layer != vocab:
            raise ValueError(f"the {c!r} lookup layer's vocabulary differs from the recorded preprocessing")
        arrays[f"vocabulary_{i}"] = np.array(vocab, dtype=np.str_).reshape(-1)
        arrays[f"embedding_{i}"] = np.asarray(model.get_layer(f"{c}_embedding").get_weights()[0], np.float32)
    hidden = sorted(
        (layer for layer in model.layers if layer.name.startswith("dense_") and layer.name[6:].isdigit()),
        key=lambda layer: int(layer.name[6:]),
    )
    dense = [*hidden, model.get_layer("probability")]
    arrays["layer_names"] = np.array([layer.name for layer in dense], dtype=np.str_)
    arrays["activations"] = np.array([layer.activation.__name__ for layer in dense], dtype=np.str_)
    for j, layer in enumerate(dense):
        weights = layer.get_weights()
        kernel = np.asarray(weights[0], np.float32)
        bias = np.asarray(weights[1], np.float32) if layer.use_bias else np.zeros(kernel.shape[1], np.float32)
        arrays[f"kernel_{j}"], arrays[f"bias_{j}"] = kernel, bias
    return arrays


def export(trained: TrainedModel, path: Path) -> None:
    """Write a SavedModel whose ``serve`` endpoint takes a dict of raw feature tensors,
    ``forward.npz`` (see :func:`forward_arrays`) for the service's numpy forward pass, and the
    check of one against the other (``export_check.json``); a failed check raises."""
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
        PACKED_ENDPOINT,
        serve_packed,
        input_signature=[
            tf.TensorSpec([None, len(numeric)], tf.float32, name="numbers"),
            tf.TensorSpec([None, len(categorical)], tf.string, name="categories"),
        ],
    )
    archive.write_out(str(path), verbose=False)
    (path / SPEC_FILE).write_text(json.dumps(trained.spec.to_json(), indent=2))
    (path / "training_config.json").write_text(json.dumps(asdict(trained.config), indent=2))
    (path / "feature_bins.json").write_text(json.dumps(trained.bins, indent=2))
    if trained.reference is not None:
        (path / REFERENCE_FILE).write_text(trained.reference.to_json())
    if not trained.preprocessing:
        raise ValueError(
            "the trained model records no preprocessing, so no numpy forward pass can be exported for the "
            "service (which runs no TensorFlow); train it with flight_delay.model.train"
        )
    np.savez(path / FORWARD_FILE, allow_pickle=False, **forward_arrays(trained))  # plain arrays only
    from flight_delay.forward import check_export  # it imports this module

    check_export(path)


MODEL_NAME = "flight_delay"

# The network's inputs: request fields, request-time features and the flight_delay_v1 service
# (the last-departure time itself is an input only through hours_since_last_dep).
FLIGHT_DELAY_FEATURES = FeatureSpec(
    numeric=(
        *SCHEDULE_NUMERIC,
        *WEATHER_COLUMNS,
        *activity_columns(ORIGIN_1H),
        *activity_columns(ORIGIN_CARRIER_3H),
        LAST_DEP_DELAY,
        HOURS_SINCE_LAST_DEP,
        *AIRCRAFT_PROFILE_NUMERIC,
        *CARRIER_7D.columns,
        *ROUTE_28D.columns,
    ),
    categorical=("carrier", "origin", "dest", *SCHEDULE_CATEGORICAL, *AIRCRAFT_PROFILE_TEXT),
)
