"""The network: preprocessing inside the saved model, identical answers after export, OOV and
missing values served, and behaviour on a learnable signal (direction, invariance)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flight_delay import model as M
from flight_delay.drift import bin_counts
from flight_delay.forward import EXPORT_CHECK_FILE, ExportCheck, NumpyForward, ServingModel, check_export
from flight_delay.forward import main as forward_main
from tests.support.synthetic import SPEC, synthetic_frame


@pytest.fixture(scope="module")
def trained() -> M.TrainedModel:
    config = M.TrainingConfig(hidden_units=(16,), max_epochs=8, batch_size=256, patience=2)
    return M.train(synthetic_frame(4000, 0), "is_late", SPEC, config)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> ServingModel:
    path = tmp_path_factory.mktemp("model") / "saved"
    M.export(trained, path)
    return ServingModel(path)


def test_learns_the_signal(trained):
    from flight_delay.evaluation import classification_metrics

    test = synthetic_frame(2000, 1)
    assert classification_metrics(test["is_late"], M.predict(trained, test))["auc"] > 0.75


def test_exported_model_answers_like_the_trained_one(trained, exported):
    test = synthetic_frame(300, 2)
    np.testing.assert_allclose(exported.predict(test), M.predict(trained, test), atol=1e-5)


def test_direction_more_backlog_more_delay(exported):
    row = pd.DataFrame({"backlog": [1.0, 8.0], "noise": [0.0, 0.0], "carrier": ["AA", "AA"]})
    low, high = exported.predict(row)
    assert high > low + 0.2


def test_invariance_to_an_uninformative_feature(exported):
    rows = pd.DataFrame({"backlog": [3.0, 3.0], "noise": [-0.5, 0.5], "carrier": ["UA", "UA"]})
    a, b = exported.predict(rows)
    assert abs(a - b) < 0.1


def test_unknown_category_and_missing_values_are_served(exported):
    rows = pd.DataFrame({"backlog": [3.0, np.nan], "noise": [np.nan, 0.0], "carrier": ["ZZ", None]})
    p = exported.predict(rows)
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all()


def test_missing_feature_column_is_named(exported):
    with pytest.raises(KeyError, match="backlog"):
        exported.predict(pd.DataFrame({"noise": [0.0], "carrier": ["AA"]}))


def test_broken_artifact_gives_a_clear_error(tmp_path: Path, trained):
    path = tmp_path / "saved"
    M.export(trained, path)
    (path / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="cannot load the SavedModel"):
        check_export(path)
    with pytest.raises(FileNotFoundError, match="feature_spec.json"):
        ServingModel(tmp_path)


def test_training_is_seeded():
    config = M.TrainingConfig(hidden_units=(8,), max_epochs=2, batch_size=256)
    frame = synthetic_frame(1500, 3)
    a = M.predict(M.train(frame, "is_late", SPEC, config), frame.head(50))
    b = M.predict(M.train(frame, "is_late", SPEC, config), frame.head(50))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_single_class_is_refused():
    frame = synthetic_frame(500, 4).assign(is_late=0)
    with pytest.raises(ValueError, match="single class"):
        M.train(frame, "is_late", SPEC)


# --- the numpy forward pass (forward.npz) ----------------------------------------------------


@pytest.fixture(scope="module")
def trained_linear() -> M.TrainedModel:
    config = M.TrainingConfig(max_epochs=4, batch_size=256, patience=2)
    return M.train(synthetic_frame(4000, 0), "is_late", SPEC, config, linear=True)


@pytest.fixture(scope="module")
def trained_deep() -> M.TrainedModel:
    """Two hidden layers: the export must not assume how many there are."""
    config = M.TrainingConfig(hidden_units=(16, 8), max_epochs=3, batch_size=256, patience=2)
    return M.train(synthetic_frame(4000, 0), "is_late", SPEC, config)


@pytest.fixture(scope="module")
def export_dir(trained, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model_npz") / "saved"
    M.export(trained, path)
    return path


def _copy(src: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(src, tmp_path / "saved"))


def _hard_rows() -> pd.DataFrame:
    """Test rows with missing numerics (in a column with and one without a NaN indicator),
    unseen, empty and missing categories, and far-out values."""
    rows = synthetic_frame(300, 2)
    rows.loc[0:9, "backlog"] = np.nan  # no NaN in training: imputed, no indicator
    rows.loc[5:14, "noise"] = np.nan
    rows.loc[20:24, "carrier"] = "ZZ"
    rows.loc[25:29, "carrier"] = ""
    rows.loc[30:34, "carrier"] = None
    rows.loc[40, ["backlog", "noise"]] = [1e4, -1e4]
    return rows


@pytest.mark.parametrize("which", ["trained", "trained_deep", "trained_linear"])
def test_numpy_forward_matches_keras_and_the_savedmodel(which, request, tmp_path):
    import tensorflow as tf

    trained = request.getfixturevalue(which)
    path = tmp_path / "saved"
    M.export(trained, path)
    rows = _hard_rows()
    inputs = M.to_model_inputs(rows, SPEC)

    keras_p = M.predict(trained, rows)
    module = tf.saved_model.load(str(path))  # kept referenced: its variables die with it
    serve_p = module.serve({c: tf.constant(v) for c, v in inputs.items()}).numpy()
    numpy_p = NumpyForward.load(path / M.FORWARD_FILE).predict_inputs(inputs)
    served = ServingModel(path)
    served_p = served.predict(rows)

    assert numpy_p.dtype == np.float64 and numpy_p.shape == (len(rows),)
    assert np.abs(keras_p - serve_p).max() < 1e-5
    assert np.abs(numpy_p - keras_p).max() < 1e-5
    assert np.abs(numpy_p - serve_p).max() < 1e-5
    np.testing.assert_array_equal(served_p, numpy_p)
    assert len(np.unique(numpy_p.round(4))) > 10  # not a constant: the comparison means something
    # The service's shape of input: one row, numerics as Python floats, categories as str.
    for i in (0, 7, 22, 27, 32, 40, 100):
        row = {c: [inputs[c][i].item() if c in SPEC.numeric else str(inputs[c][i])] for c in SPEC.columns}
        assert abs(served.predict_inputs(row)[0] - serve_p[i]) < 1e-5


def test_forward_file_holds_the_layers_by_name(trained_deep, tmp_path):
    path = tmp_path / "saved"
    M.export(trained_deep, path)
    with np.load(path / M.FORWARD_FILE, allow_pickle=False) as npz:  # no pickled objects inside
        arrays = {k: npz[k] for k in npz.files}
    assert int(arrays["format_version"]) == M.FORWARD_FORMAT_VERSION
    assert list(arrays["layer_names"]) == ["dense_0", "dense_1", "probability"]
    assert list(arrays["activations"]) == ["relu", "relu", "sigmoid"]
    assert [arrays[f"kernel_{j}"].shape for j in range(3)] == [(2 + 1 + 2, 16), (16, 8), (8, 1)]
    assert list(arrays["numeric_names"]) == ["backlog", "noise"]
    assert list(arrays["numeric_indicator"]) == [False, True]
    assert list(arrays["vocabulary_0"]) == ["AA", "B6", "UA"] and arrays["vocabulary_0"].dtype.kind == "U"
    emb = trained_deep.keras_model.get_layer("carrier_embedding").get_weights()[0]
    np.testing.assert_array_equal(arrays["embedding_0"], emb)
    # OOV (unknown, "") is row 0, the vocabulary rows 1..n, as StringLookup(num_oov_indices=1).
    forward = NumpyForward(arrays)
    lookup = trained_deep.keras_model.get_layer("carrier_lookup")
    keys = ["AA", "B6", "UA", "ZZ", "", "aa"]
    assert [forward._cats[0][1].get(k, 0) for k in keys] == [int(i) for i in lookup(np.array(keys))]


def test_fit_preprocessing_is_json_and_matches_the_training_window(trained):
    import json

    prep = M.fit_preprocessing(synthetic_frame(4000, 0).iloc[:3600], SPEC)  # train's 90% fit window
    assert json.loads(json.dumps(prep)) == prep == trained.preprocessing
    assert list(prep["numeric"]) == ["backlog", "noise"]
    assert prep["numeric"]["backlog"]["indicator"] is False
    assert prep["numeric"]["noise"]["indicator"] is True
    assert prep["categorical"]["carrier"]["vocabulary"] == ["AA", "B6", "UA"]
    odd = pd.DataFrame({"backlog": [np.nan, np.nan], "noise": [2.0, 2.0], "carrier": ["", None]})
    prep = M.fit_preprocessing(odd, SPEC)
    assert prep["numeric"]["backlog"] == {"mean": 0.0, "std": 1.0, "indicator": True}
    assert prep["numeric"]["noise"] == {"mean": 2.0, "std": 1.0, "indicator": False}
    assert prep["categorical"]["carrier"]["vocabulary"] == []


def test_numpy_forward_edge_inputs(export_dir):
    forward = NumpyForward.load(export_dir / M.FORWARD_FILE)
    assert forward.predict_inputs({"backlog": [], "noise": [], "carrier": []}).shape == (0,)
    as_str = forward.predict_inputs({"backlog": [3.0], "noise": [0.1], "carrier": ["UA"]})
    as_bytes = forward.predict_inputs({"backlog": np.array([3.0], np.float32), "noise": [0.1], "carrier": [b"UA"]})
    unknown = forward.predict_inputs({"backlog": [3.0], "noise": [0.1], "carrier": ["ZZ"]})
    np.testing.assert_array_equal(as_str, as_bytes)
    assert as_str[0] != unknown[0]
    with pytest.raises(KeyError, match="noise"):
        forward.predict_inputs({"backlog": [3.0], "carrier": ["UA"]})
    with pytest.raises(ValueError, match="carrier"):
        forward.predict_inputs({"backlog": [3.0], "noise": [0.1], "carrier": ["UA", "AA"]})


def _rewrite(path: Path, change) -> None:
    file = path / M.FORWARD_FILE
    with np.load(file, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    change(arrays)
    np.savez(file, **arrays)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda a: a.update(kernel_1=a["kernel_1"][:-1]), r"kernel_1.*shape \(15, 1\), expected \(16, 1\)"),
        (lambda a: a.update(kernel_0=a["kernel_0"][:-1]), r"kernel_0.*shape \(4, 16\), expected \(5, 16\)"),
        (lambda a: a.update(bias_0=a["bias_0"][:3]), r"bias_0.*expected \(16,\)"),
        (lambda a: a.update(embedding_0=a["embedding_0"][:-1]), r"embedding_0.*expected \(4, dim"),
        (lambda a: a.update(numeric_std=a["numeric_std"][:1]), r"numeric_std.*expected \(2,\)"),
        (lambda a: a.pop("kernel_1"), r"'kernel_1' is missing"),
        (lambda a: a.update(format_version=np.array(99)), r"format version 99, expected 1"),
        (lambda a: a.update(activations=np.array(["relu", "softmax"])), r"softmax"),
        (lambda a: a.update(numeric_names=np.array(["noise", "backlog"])), r"columns differ"),
    ],
)
def test_inconsistent_forward_file_is_refused_at_load(export_dir, tmp_path, change, message):
    path = _copy(export_dir, tmp_path)
    _rewrite(path, change)
    with pytest.raises(ValueError, match=message) as err:
        ServingModel(path)
    assert "forward.npz" in str(err.value)


def test_truncated_forward_file_is_refused_at_load(export_dir, tmp_path):
    path = _copy(export_dir, tmp_path)
    file = path / M.FORWARD_FILE
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cannot read .*forward\.npz"):
        ServingModel(path)


@pytest.mark.parametrize(
    "change",
    [
        lambda a: a.update(bias_1=a["bias_1"] + 0.5),  # shapes fine, values wrong
        lambda a: a.update(numeric_mean=a["numeric_mean"] + 1.0),
        lambda a: a.update(vocabulary_0=a["vocabulary_0"][::-1].copy()),
    ],
)
def test_forward_file_disagreeing_with_the_savedmodel_is_refused(export_dir, tmp_path, change):
    path = _copy(export_dir, tmp_path)
    _rewrite(path, change)
    with pytest.raises(ValueError, match="numpy forward pass disagrees with the SavedModel by .*re-export"):
        check_export(path)
    # The service runs no TensorFlow: it refuses a file other than the one checked at export.
    with pytest.raises(ValueError, match="not the file checked against the SavedModel at export"):
        ServingModel(path)


def test_export_records_its_check_and_the_service_needs_it(export_dir, trained, tmp_path):
    path = _copy(export_dir, tmp_path)
    check = ExportCheck.read(path)
    assert check.max_abs_diff <= check.tolerance == M.PARITY_TOLERANCE and check.probe_rows == 8
    (path / EXPORT_CHECK_FILE).unlink()
    with pytest.raises(ValueError, match=r"no export_check\.json.*python -m flight_delay\.forward"):
        ServingModel(path)
    assert forward_main([str(path)]) == 0  # what the message says to run
    rows = _hard_rows()
    np.testing.assert_allclose(ServingModel(path).predict(rows), M.predict(trained, rows), atol=1e-5)


def test_a_failed_check_is_refused(export_dir, tmp_path):
    path = _copy(export_dir, tmp_path)
    record = json.loads((path / EXPORT_CHECK_FILE).read_text())
    (path / EXPORT_CHECK_FILE).write_text(json.dumps(record | {"max_abs_diff": 0.5}))
    with pytest.raises(ValueError, match="the export check failed"):
        ServingModel(path)


def test_model_exported_without_forward_file_is_refused_with_what_to_do(export_dir, tmp_path):
    path = _copy(export_dir, tmp_path)
    (path / M.FORWARD_FILE).unlink()
    with pytest.raises(ValueError, match=r"no forward\.npz .*runs no TensorFlow; re-export"):
        ServingModel(path)


def test_trained_model_without_preprocessing_is_not_exported(trained, tmp_path):
    legacy = M.TrainedModel(trained.keras_model, trained.spec, trained.config, {}, 0, {})  # positional
    with pytest.raises(ValueError, match="no preprocessing"):
        M.export(legacy, tmp_path / "saved")


def test_serving_a_model_imports_no_tensorflow(export_dir):
    """The service's modules and a served prediction, in a fresh interpreter: neither TensorFlow
    nor Keras is imported (the lean serving image has neither)."""
    code = f"""
import sys
import serving.service, serving.routing, serving.scoring
from flight_delay.forward import ServingModel
from tests.support.synthetic import synthetic_frame
ServingModel({str(export_dir)!r}).predict(synthetic_frame(10, 0))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
print(heavy)
sys.exit(1 if heavy else 0)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_bin_counts_small_and_large_inputs_agree():
    edges = [1.0, 2.5, 4.0]
    values = [0.5, 1.0, 2.4, 2.5, 3.9, 4.0, 7.0, float("nan"), -3.0]
    expected = {"0": 2, "1": 2, "2": 2, "3": 2, "missing": 1}  # a value on an edge goes right
    assert bin_counts(edges, values) == expected  # the bisect path (a request's few values)
    assert bin_counts(edges, values * 10) == {k: v * 10 for k, v in expected.items()}  # numpy path
    assert bin_counts(edges, []) == {}
