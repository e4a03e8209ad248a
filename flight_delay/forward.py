"""The exported network served without a TensorFlow call per request.

``forward.npz`` (written by :func:`flight_delay.model.export`) holds the network's preprocessing
and weights as plain arrays; :class:`NumpyForward` runs the forward pass in numpy, in float32 like
TensorFlow. :func:`check_export` checks it against the SavedModel (the canonical artifact) on a
probe batch once, at export, and records the result; :class:`ServingModel` loads an exported model
for serving without importing TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flight_delay.drift import REFERENCE_FILE, Reference
from flight_delay.model import (
    FORWARD_FILE,
    FORWARD_FORMAT_VERSION,
    PACKED_ENDPOINT,
    PARITY_TOLERANCE,
    SERVING_ENDPOINT,
    SPEC_FILE,
    FeatureSpec,
    to_model_inputs,
)


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0, out=x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-x)), in place. Clamping at -88 keeps exp(88) below float32's max (no
    # overflow, and p < 1e-38 there anyway); large positive x just underflows exp to 0 (p = 1).
    np.maximum(x, -88.0, out=x)
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1
    return np.reciprocal(x, out=x)


def _linear(x: np.ndarray) -> np.ndarray:
    return x


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"relu": _relu, "sigmoid": _sigmoid, "linear": _linear}


class _Arrays:
    """Typed access to the arrays of a ``forward.npz``: every read checks kind, rank and values."""

    def __init__(self, arrays: dict[str, np.ndarray], source: str) -> None:
        self.arrays, self.source = arrays, source

    def fail(self, what: str) -> ValueError:
        return ValueError(f"{self.source}: {what}; re-export the model")

    def get(self, key: str, kind: str, ndim: int) -> np.ndarray:
        if key not in self.arrays:
            raise self.fail(f"{key!r} is missing")
        a = np.asarray(self.arrays[key])
        if a.dtype.kind not in kind or a.ndim != ndim:
            raise self.fail(f"{key!r} is a {a.ndim}-d {a.dtype} array, expected {ndim}-d of kind {kind!r}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise self.fail(f"{key!r} holds non-finite values")
        return a

    def names(self, key: str) -> tuple[str, ...]:
        return tuple(str(c) for c in self.get(key, "U", 1))


@dataclass(frozen=True)
class _Dense:
    kernel: np.ndarray
    bias: np.ndarray
    activation: Callable[[np.ndarray], np.ndarray]


class NumpyForward:
    """The exported network's forward pass in numpy, in float32 like TensorFlow.

    Built from ``forward.npz`` (:func:`flight_delay.model.forward_arrays`); every shape is checked
    when it is loaded. Stateless after construction, so safe to call from several threads.
    """

    def __init__(self, arrays: dict[str, np.ndarray], source: str = "<arrays>") -> None:
        self.source = source
        a = _Arrays(arrays, source)
        version = a.get("format_version", "iu", 0)
        if int(version) != FORWARD_FORMAT_VERSION:
            raise a.fail(f"format version {int(version)}, expected {FORWARD_FORMAT_VERSION}")
        self.numeric: tuple[str, ...] = a.names("numeric_names")
        self.categorical: tuple[str, ...] = a.names("categorical_names")
        self._read_preprocessing(a)
        self._read_embeddings(a)
        width = len(self.numeric) + int(self.indicator.sum()) + sum(e.shape[1] for e in self.embeddings)
        self.layers = self._read_layers(a, width)
        self._plan_input_layout()

    def _read_preprocessing(self, a: _Arrays) -> None:
        k = len(self.numeric)
        mean, std = a.get("numeric_mean", "f", 1), a.get("numeric_std", "f", 1)
        indicator = a.get("numeric_indicator", "b", 1)
        for key, values in (("numeric_mean", mean), ("numeric_std", std), ("numeric_indicator", indicator)):
            if values.shape != (k,):
                raise a.fail(f"{key!r} has shape {values.shape}, expected ({k},) (one per numeric column)")
        if (std <= 0).any():
            raise a.fail("'numeric_std' must be positive")
        # float32 like the graph, where the Python float constants are float32 tensors.
        self.mean = mean.astype(np.float32)
        self.std = std.astype(np.float32)
        self.indicator = indicator.astype(bool)

    def _read_embeddings(self, a: _Arrays) -> None:
        self.vocabularies: list[tuple[str, ...]] = []
        self.embeddings: list[np.ndarray] = []
        for i, c in enumerate(self.categorical):
            vocab = a.names(f"vocabulary_{i}")
            emb = a.get(f"embedding_{i}", "f", 2).astype(np.float32)
            if emb.shape[0] != len(vocab) + 1 or emb.shape[1] < 1:
                raise a.fail(
                    f"'embedding_{i}' ({c}) has shape {emb.shape}, expected ({len(vocab) + 1}, dim >= 1)"
                    f" for a vocabulary of {len(vocab)} plus the out-of-vocabulary row"
                )
            self.vocabularies.append(vocab)
            self.embeddings.append(emb)

    @staticmethod
    def _read_layers(a: _Arrays, width: int) -> list[_Dense]:
        names = a.get("layer_names", "U", 1)
        activations = a.get("activations", "U", 1)
        if len(names) == 0 or activations.shape != names.shape:
            raise a.fail(f"{len(names)} layer names and {len(activations)} activations, expected as many, >= 1")
        layers = []
        for j, (name, act) in enumerate(zip(names, activations)):
            kernel = a.get(f"kernel_{j}", "f", 2).astype(np.float32)
            bias = a.get(f"bias_{j}", "f", 1).astype(np.float32)
            expected = (width, 1) if j == len(names) - 1 else (width, kernel.shape[1])
            if kernel.shape != expected:
                raise a.fail(f"'kernel_{j}' ({name}) has shape {kernel.shape}, expected {expected}")
            if bias.shape != (kernel.shape[1],):
                raise a.fail(f"'bias_{j}' ({name}) has shape {bias.shape}, expected ({kernel.shape[1]},)")
            if str(act) not in _ACTIVATIONS:
                raise a.fail(f"layer {name} has activation {act!r}, expected one of {sorted(_ACTIVATIONS)}")
            layers.append(_Dense(kernel, bias, _ACTIVATIONS[str(act)]))
            width = kernel.shape[1]
        return layers

    def _plan_input_layout(self) -> None:
        """Hot-path precomputations: column vectors for broadcasting over (columns, rows), where
        each numeric value and indicator lands in the concatenated features, and dict lookups."""
        self._mean_col = self.mean[:, None]
        self._std_col = self.std[:, None]
        self._value_pos = np.empty(len(self.numeric), dtype=np.intp)
        ind_pos, pos = [], 0
        for i in range(len(self.numeric)):
            self._value_pos[i] = pos
            pos += 1
            if self.indicator[i]:
                ind_pos.append(pos)
                pos += 1
        self._ind_pos = np.array(ind_pos, dtype=np.intp)
        self._ind_rows = np.flatnonzero(self.indicator)
        self._has_ind = bool(len(ind_pos))
        self._width = self.layers[0].kernel.shape[0]
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
            raise ValueError(
                f"cannot read {path}: {type(exc).__name__}: {exc}; "
                "expected an .npz written by flight_delay.model.export"
            ) from exc
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
        for layer in self.layers:
            x = x @ layer.kernel
            x += layer.bias
            x = layer.activation(x)
        return x[:, 0].astype(np.float64)

    def probe_inputs(self) -> dict[str, list[Any]]:
        """Eight rows that exercise every path: zeros, all missing, means, ±std, far out, known,
        unknown and empty categories."""
        mean, std = self.mean.astype(np.float64), self.std.astype(np.float64)
        rows = [
            np.zeros_like(mean),
            np.full_like(mean, np.nan),
            mean,
            mean + std,
            mean - 2 * std,
            mean + 10 * std,
            -np.abs(mean) - 5 * std,
            np.where(np.arange(len(mean)) % 2 == 0, np.nan, mean - std),
        ]
        inputs: dict[str, list[Any]] = {c: [float(r[i]) for r in rows] for i, c in enumerate(self.numeric)}
        for j, (c, vocab) in enumerate(zip(self.categorical, self.vocabularies)):
            known = list(vocab) or [""]
            unseen = "\x00unseen category"
            inputs[c] = [
                known[0],
                "",
                unseen,
                known[-1],
                known[len(known) // 2],
                known[(1 + j) % len(known)],
                "",
                unseen if j % 2 else known[0],
            ]
        return inputs


EXPORT_CHECK_FILE = "export_check.json"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class ExportCheck:
    """The numpy forward pass checked against the SavedModel once, when the model was exported
    (the only step that needs TensorFlow); the service trusts ``forward.npz`` only while its bytes
    are the ones checked."""

    max_abs_diff: float
    tolerance: float
    probe_rows: int
    forward_sha256: str
    tensorflow_version: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def read(cls, path: Path) -> ExportCheck:
        file = Path(path) / EXPORT_CHECK_FILE
        if not file.exists():
            raise ValueError(
                f"the model at {path} has no {EXPORT_CHECK_FILE}: its numpy forward pass was never checked "
                f"against its SavedModel; check it with `python -m flight_delay.forward {path}` "
                "(needs TensorFlow) or re-export the model"
            )
        try:
            check = cls(**json.loads(file.read_text()))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{file}: not an export check written by flight_delay.forward ({exc}); re-export") from exc
        if not check.max_abs_diff <= check.tolerance:
            raise ValueError(f"{file}: the export check failed (|numpy - SavedModel| = {check.max_abs_diff})")
        return check


def check_export(path: Path) -> ExportCheck:
    """Compare the numpy forward pass of the export at ``path`` with its SavedModel on the probe
    batch and record the result in ``export_check.json``; raises (recording nothing) when the
    SavedModel cannot be loaded or the two disagree beyond :data:`PARITY_TOLERANCE`."""
    import tensorflow as tf

    path = Path(path)
    spec = FeatureSpec.read(path)
    forward_file = path / FORWARD_FILE
    if not forward_file.exists():
        raise ValueError(f"the model at {path} has no {FORWARD_FILE}, which the service runs; re-export it")
    digest = _sha256(forward_file)
    forward = NumpyForward.load(forward_file)
    _check_columns(forward, spec, path)
    try:
        module = tf.saved_model.load(str(path))
    except Exception as exc:  # the message of TF's own error is long and vague
        raise ValueError(f"cannot load the SavedModel at {path}: {exc}") from exc
    for endpoint in (SERVING_ENDPOINT, PACKED_ENDPOINT):
        if not hasattr(module, endpoint):
            raise ValueError(f"the SavedModel at {path} has no {endpoint!r} endpoint; re-export it")
    probe = forward.probe_inputs()
    numbers = np.array([probe[c] for c in spec.numeric], dtype=np.float32).T
    categories = np.array([probe[c] for c in spec.categorical], dtype=object).T
    served = getattr(module, PACKED_ENDPOINT)(tf.constant(numbers), tf.constant(categories, dtype=tf.string))
    diff = float(np.max(np.abs(served.numpy().astype("float64") - forward.predict_inputs(probe))))
    if not diff <= PARITY_TOLERANCE:  # NaN fails too
        raise ValueError(
            f"the model at {path}: numpy forward pass disagrees with the SavedModel by {diff}; re-export the model"
        )
    check = ExportCheck(diff, PARITY_TOLERANCE, len(numbers), digest, tf.__version__)
    (path / EXPORT_CHECK_FILE).write_text(check.to_json())
    return check


def _check_columns(forward: NumpyForward, spec: FeatureSpec, path: Path) -> None:
    if forward.numeric != spec.numeric or forward.categorical != spec.categorical:
        raise ValueError(f"{path / FORWARD_FILE}: its columns differ from {path / SPEC_FILE}; re-export the model")


class ServingModel:
    """A loaded model, served by the numpy forward pass of ``forward.npz``: no TensorFlow in the
    serving process. The file must be the one checked against the SavedModel at export
    (``export_check.json``, :func:`check_export`), byte for byte."""

    def __init__(self, path: Path) -> None:
        path = Path(path)
        self.spec = FeatureSpec.read(path)
        self.reference = read_reference(path)
        forward_file = path / FORWARD_FILE
        if not forward_file.exists():
            raise ValueError(
                f"the model at {path} has no {FORWARD_FILE} (exported before the numpy forward pass), "
                "and the service runs no TensorFlow; re-export the model"
            )
        self.check = ExportCheck.read(path)
        self._numpy = NumpyForward.load(forward_file)  # a malformed file: the error says what is wrong
        _check_columns(self._numpy, self.spec, path)
        if _sha256(forward_file) != self.check.forward_sha256:
            raise ValueError(
                f"{forward_file} is not the file checked against the SavedModel at export (its SHA-256 differs "
                f"from {EXPORT_CHECK_FILE}'s); re-export the model"
            )

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return self._numpy.predict_inputs(to_model_inputs(frame, self.spec))

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        """Probabilities for named input columns (lists or arrays)."""
        return self._numpy.predict_inputs(inputs)


def read_reference(path: Path) -> Reference:
    """The model's reference distributions (``reference.json``), or for a model exported before
    they were saved, its numeric monitoring bins without reference fractions."""
    file = Path(path) / REFERENCE_FILE
    if file.exists():
        try:
            return Reference.from_json(file.read_text())
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(
                f"{file}: not a reference written by flight_delay.model.export ({exc}); re-export"
            ) from exc
    bins = Path(path) / "feature_bins.json"
    return Reference.from_bins(json.loads(bins.read_text()) if bins.exists() else {})


def main(argv: list[str] | None = None) -> int:
    """``python -m flight_delay.forward MODEL_DIR...``: check exports made before the check was
    recorded (a model folder: a registry version's ``saved/``)."""
    paths = argv if argv is not None else sys.argv[1:]
    if not paths:
        print("usage: python -m flight_delay.forward MODEL_DIR...", file=sys.stderr)
        return 2
    for p in paths:
        check = check_export(Path(p))
        print(f"{p}: numpy forward pass within {check.max_abs_diff:.2e} of the SavedModel")
    return 0


if __name__ == "__main__":
    sys.exit(main())
