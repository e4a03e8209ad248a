"""The delay classifier: a Keras network whose preprocessing travels inside the saved model.

Imputation, normalisation and category lookups (with an out-of-vocabulary bucket) are layers of
the model, fitted on the training window only. The exported SavedModel takes raw feature values,
so the service feeds it exactly what the feature store returns and nothing is transformed twice.
TensorFlow is imported lazily: importing this module stays cheap for the pipeline's code location.
"""

from __future__ import annotations

import json
import logging
from bisect import bisect_right
from dataclasses import asdict, dataclass, field
from itertools import repeat
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
# The network's weights and preprocessing as plain arrays, next to the SavedModel (which stays
# the canonical artifact): a numpy forward pass costs a few µs a row where a TF call costs ~0.3 ms.
FORWARD_FILE = "forward.npz"
FORWARD_FORMAT_VERSION = 1
# Largest |numpy - SavedModel| tolerated on the probe batch when a model is loaded.
PARITY_TOLERANCE = 1e-5

log = logging.getLogger(__name__)


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
    # What ``fit_preprocessing`` fitted (means, stds, NaN indicators, vocabularies); empty for a
    # model built before it was recorded, which then exports without ``forward.npz``.
    preprocessing: dict[str, Any] = field(default_factory=dict)


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
    if len(values) <= 16:  # a single request: bisect per value beats numpy's per-call overhead
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
        c: {"vocabulary": sorted(v for v in frame[c].dropna().astype(str).unique() if v)}
        for c in spec.categorical
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
    return TrainedModel(model, spec, config, history, best, feature_bins(fit, spec), preprocessing)


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
    """Write a SavedModel whose ``serve`` endpoint takes a dict of raw feature tensors, and
    ``forward.npz`` (see :func:`forward_arrays`) for the numpy forward pass."""
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
    if trained.preprocessing:
        arrays: dict[str, Any] = forward_arrays(trained)
        np.savez(path / FORWARD_FILE, allow_pickle=False, **arrays)  # plain arrays only
    else:
        (path / FORWARD_FILE).unlink(missing_ok=True)  # never leave a stale one from an earlier export
        log.warning("no recorded preprocessing: %s exported without %s (served by TensorFlow)", path, FORWARD_FILE)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)), in place. Clamping at -88 keeps exp(88) ≈ 1.7e38 below float32's max (no
    # overflow, and p < 1e-38 there anyway); large positive x just underflows exp to 0 (p = 1).
    np.maximum(x, -88.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1
    return np.reciprocal(x, out=x)


def _linear(x: np.ndarray) -> np.ndarray:
    return x


_ACTIVATIONS = {"relu": _relu, "sigmoid": _sigmoid, "linear": _linear}


class NumpyForward:
    """The exported network's forward pass in numpy, in float32 like TensorFlow.

    Built from ``forward.npz`` (:func:`forward_arrays`); every shape is checked when it is loaded.
    Stateless after construction, so safe to call from several threads.
    """

    def __init__(self, arrays: dict[str, np.ndarray], source: str = "<arrays>") -> None:
        self.source = source

        def fail(what: str) -> ValueError:
            return ValueError(f"{source}: {what}; re-export the model")

        def get(key: str, kind: str, ndim: int) -> np.ndarray:
            if key not in arrays:
                raise fail(f"{key!r} is missing")
            a = np.asarray(arrays[key])
            if a.dtype.kind not in kind or a.ndim != ndim:
                raise fail(f"{key!r} is a {a.ndim}-d {a.dtype} array, expected {ndim}-d of kind {kind!r}")
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise fail(f"{key!r} holds non-finite values")
            return a

        version = get("format_version", "iu", 0)
        if int(version) != FORWARD_FORMAT_VERSION:
            raise fail(f"format version {int(version)}, expected {FORWARD_FORMAT_VERSION}")
        self.numeric: tuple[str, ...] = tuple(str(c) for c in get("numeric_names", "U", 1))
        self.categorical: tuple[str, ...] = tuple(str(c) for c in get("categorical_names", "U", 1))
        k = len(self.numeric)
        mean, std = get("numeric_mean", "f", 1), get("numeric_std", "f", 1)
        indicator = get("numeric_indicator", "b", 1)
        for key, a in (("numeric_mean", mean), ("numeric_std", std), ("numeric_indicator", indicator)):
            if a.shape != (k,):
                raise fail(f"{key!r} has shape {a.shape}, expected ({k},) (one per numeric column)")
        if (std <= 0).any():
            raise fail("'numeric_std' must be positive")
        # float32 like the graph, where the Python float constants are float32 tensors.
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.indicator = indicator.astype(bool)
        self.vocabularies: list[tuple[str, ...]] = []
        self.embeddings: list[np.ndarray] = []
        for i, c in enumerate(self.categorical):
            vocab = tuple(str(v) for v in get(f"vocabulary_{i}", "U", 1))
            emb = get(f"embedding_{i}", "f", 2).astype(np.float32)
            if emb.shape[0] != len(vocab) + 1 or emb.shape[1] < 1:
                raise fail(f"'embedding_{i}' ({c}) has shape {emb.shape}, expected ({len(vocab) + 1}, dim >= 1)"
                           f" for a vocabulary of {len(vocab)} plus the out-of-vocabulary row")
            self.vocabularies.append(vocab)
            self.embeddings.append(emb)
        names = get("layer_names", "U", 1)
        activations = get("activations", "U", 1)
        if len(names) == 0 or activations.shape != names.shape:
            raise fail(f"{len(names)} layer names and {len(activations)} activations, expected as many, >= 1")
        width = k + int(self.indicator.sum()) + sum(e.shape[1] for e in self.embeddings)
        self.layers: list[tuple[np.ndarray, np.ndarray, Any]] = []
        for j, (name, act) in enumerate(zip(names, activations)):
            kernel = get(f"kernel_{j}", "f", 2).astype(np.float32)
            bias = get(f"bias_{j}", "f", 1).astype(np.float32)
            last = j == len(names) - 1
            expected = (width, 1) if last else (width, kernel.shape[1])
            if kernel.shape != expected:
                raise fail(f"'kernel_{j}' ({name}) has shape {kernel.shape}, expected {expected}")
            if bias.shape != (kernel.shape[1],):
                raise fail(f"'bias_{j}' ({name}) has shape {bias.shape}, expected ({kernel.shape[1]},)")
            if str(act) not in _ACTIVATIONS:
                raise fail(f"layer {name} has activation {act!r}, expected one of {sorted(_ACTIVATIONS)}")
            self.layers.append((kernel, bias, _ACTIVATIONS[str(act)]))
            width = kernel.shape[1]
        # Hot-path precomputations: column vectors for broadcasting over (columns, rows), where
        # each numeric value and indicator lands in the concatenated features, and dict lookups.
        self._mean_col = self.mean[:, None]
        self._std_col = self.std[:, None]
        self._value_pos = np.empty(k, dtype=np.intp)
        ind_pos, pos = [], 0
        for i in range(k):
            self._value_pos[i] = pos
            pos += 1
            if self.indicator[i]:
                ind_pos.append(pos)
                pos += 1
        self._ind_pos = np.array(ind_pos, dtype=np.intp)
        self._ind_rows = np.flatnonzero(self.indicator)
        self._has_ind = bool(len(ind_pos))
        self._width = self.layers[0][0].shape[0]
        self._cats = []
        for c, vocab, emb in zip(self.categorical, self.vocabularies, self.embeddings):
            lookup: dict[Any, int] = {}
            for j, v in enumerate(vocab, start=1):
                lookup[v] = j
                lookup[v.encode("utf-8")] = j  # TF strings are bytes: b"AA" is "AA" there too
            self._cats.append((c, lookup, emb, slice(pos, pos + emb.shape[1])))
            pos += emb.shape[1]

    @classmethod
    def load(cls, path: Path) -> NumpyForward:
        """Read and check ``forward.npz``; any unreadable or inconsistent file is a ValueError."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: npz[key] for key in npz.files}  # reads (and CRC-checks) every array
        except Exception as exc:
            raise ValueError(f"cannot read {path}: {type(exc).__name__}: {exc}; "
                             f"expected an .npz written by flight_delay.model.export") from exc
        return cls(arrays, source=str(path))

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        """Probabilities (float64) for named input columns: numerics as floats (NaN = missing),
        categories as strings (unknown or ``""`` → the out-of-vocabulary row)."""
        if self.numeric:
            num = np.array([inputs[c] for c in self.numeric], dtype=np.float32)
            if num.ndim != 2:
                raise ValueError(f"numeric inputs must be equal-length 1-d columns, got shape {num.shape}")
            n = num.shape[1]
        else:
            n = len(inputs[self.categorical[0]]) if self.categorical else 0
        x = np.empty((n, self._width), dtype=np.float32)
        if self.numeric:
            isnan = np.isnan(num)
            z = (np.where(isnan, self._mean_col, num) - self._mean_col) / self._std_col
            x[:, self._value_pos] = z.T
            if self._has_ind:
                x[:, self._ind_pos] = isnan[self._ind_rows].T
        for c, lookup, emb, where in self._cats:
            col = inputs[c]
            if len(col) != n:
                raise ValueError(f"input column {c!r} has {len(col)} values, expected {n}")
            x[:, where] = emb.take(np.fromiter(map(lookup.get, col, repeat(0)), np.intp, n), axis=0)
        for kernel, bias, activation in self.layers:
            x = x @ kernel
            x += bias
            x = activation(x)
        return x[:, 0].astype(np.float64)

    def probe_inputs(self) -> dict[str, list[Any]]:
        """Eight rows that exercise every path: zeros, all missing, means, ±std, far out, known,
        unknown and empty categories."""
        mean, std = self.mean.astype(np.float64), self.std.astype(np.float64)
        rows = [np.zeros_like(mean), np.full_like(mean, np.nan), mean, mean + std, mean - 2 * std,
                mean + 10 * std, -np.abs(mean) - 5 * std,
                np.where(np.arange(len(mean)) % 2 == 0, np.nan, mean - std)]
        inputs: dict[str, list[Any]] = {c: [float(r[i]) for r in rows] for i, c in enumerate(self.numeric)}
        for j, (c, vocab) in enumerate(zip(self.categorical, self.vocabularies)):
            known = list(vocab) or [""]
            unseen = "\x00unseen category"
            inputs[c] = [known[0], "", unseen, known[-1], known[len(known) // 2], known[(1 + j) % len(known)],
                         "", unseen if j % 2 else known[0]]
        return inputs


class ServingModel:
    """A loaded model. The SavedModel is always loaded (the canonical artifact, checked on load);
    predictions come from the numpy forward pass of ``forward.npz`` when the export has one and it
    agrees with the SavedModel on a probe batch, else from one TF graph call per batch."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        path = Path(path)
        spec_file = path / "feature_spec.json"
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
        bins_file = path / "feature_bins.json"
        self.bins: dict[str, list[float]] = json.loads(bins_file.read_text()) if bins_file.exists() else {}
        self._numpy: NumpyForward | None = None
        self.engine = "tensorflow"
        forward_file = path / FORWARD_FILE
        if not forward_file.exists():
            log.warning("%s has no %s (exported before the numpy forward pass): serving it with TensorFlow",
                        path, FORWARD_FILE)
            return
        forward = NumpyForward.load(forward_file)
        if forward.numeric != self.spec.numeric or forward.categorical != self.spec.categorical:
            raise ValueError(f"{forward_file}: its columns differ from {spec_file}; re-export the model")
        probe = forward.probe_inputs()
        diff = float(np.max(np.abs(self._predict_tf(probe) - forward.predict_inputs(probe))))
        if not diff <= PARITY_TOLERANCE:  # NaN fails too
            raise ValueError(f"the model at {path}: numpy forward pass disagrees with the SavedModel by {diff}; "
                             "re-export the model")
        self._numpy = forward
        self.engine = "numpy"

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self.predict_inputs(to_model_inputs(frame, self.spec))

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        """Probabilities for named input columns (lists or arrays): numpy, else one graph call."""
        if self._numpy is not None:
            return self._numpy.predict_inputs(inputs)
        return self._predict_tf(inputs)

    def _predict_tf(self, inputs: dict[str, Any]) -> np.ndarray:
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
