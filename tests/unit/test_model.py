"""The network: preprocessing inside the saved model, identical answers after export, OOV and
missing values served, and behaviour on a learnable signal (direction, invariance)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flight_delay import model as M

SPEC = M.FeatureSpec(numeric=("backlog", "noise"), categorical=("carrier",))


def _frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    backlog = rng.exponential(3.0, n)
    carrier = rng.choice(["AA", "UA", "B6"], n)
    logit = 0.8 * (backlog - 3) + np.where(carrier == "B6", 1.0, 0.0)
    frame = pd.DataFrame({
        "backlog": backlog, "noise": rng.normal(size=n), "carrier": carrier,
        "event_timestamp": pd.date_range("2013-01-01", periods=n, freq="min", tz="UTC"),
    })
    frame["is_late"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "noise"] = np.nan
    return frame


@pytest.fixture(scope="module")
def trained() -> M.TrainedModel:
    config = M.TrainingConfig(hidden_units=(16,), max_epochs=8, batch_size=256, patience=2)
    return M.train(_frame(4000, 0), "is_late", SPEC, config)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> M.ServingModel:
    path = tmp_path_factory.mktemp("model") / "saved"
    M.export(trained, path)
    return M.ServingModel(path)


def test_learns_the_signal(trained):
    from flight_delay.metrics import classification_metrics

    test = _frame(2000, 1)
    assert classification_metrics(test["is_late"], M.predict(trained, test))["auc"] > 0.75


def test_exported_model_answers_like_the_trained_one(trained, exported):
    test = _frame(300, 2)
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
        M.ServingModel(path)
    with pytest.raises(FileNotFoundError, match="feature_spec.json"):
        M.ServingModel(tmp_path)


def test_training_is_seeded():
    config = M.TrainingConfig(hidden_units=(8,), max_epochs=2, batch_size=256)
    frame = _frame(1500, 3)
    a = M.predict(M.train(frame, "is_late", SPEC, config), frame.head(50))
    b = M.predict(M.train(frame, "is_late", SPEC, config), frame.head(50))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_single_class_is_refused():
    frame = _frame(500, 4).assign(is_late=0)
    with pytest.raises(ValueError, match="single class"):
        M.train(frame, "is_late", SPEC)
