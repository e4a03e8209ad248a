"""The model_decisions asset applies one decision to a real local registry, checked against the
state it was decided on, and records it with its figures and run id, which the registry's events
carry too; model_promotion makes a retrained model that passes the offline gate the shadow
challenger, and only the very first model the champion."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from flight_delay.model import MODEL_NAME
from flight_delay.registry import ModelRegistry
from pipeline.assets import training
from pipeline.assets.decisions import model_decisions
from pipeline.resources import LocalModelRegistry


def _write(path: Path) -> None:
    path.mkdir(parents=True)
    (path / "weights.txt").write_text("w")


@pytest.fixture()
def home(tmp_path: Path) -> Path:
    return tmp_path / "bentoml"


@pytest.fixture()
def registry(home: Path) -> ModelRegistry:
    return ModelRegistry(home)


def _models(registry: ModelRegistry, n: int) -> list[str]:
    return [registry.register(MODEL_NAME, _write, {}, {}) for _ in range(n)]


def _decide(home: Path, action: str, model: str, champion: str | None, **figures) -> dg.ExecuteInProcessResult:
    config = {
        "action": action,
        "model_version": model,
        "expected_champion": champion or "",
        "reason": f"test {action}",
        "figures": json.dumps(figures),
    }
    return dg.materialize(
        [model_decisions],
        resources={"model_registry": LocalModelRegistry(bentoml_home=str(home))},
        run_config={"ops": {"model_decisions": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict:
    (materialization,) = result.asset_materializations_for_node("model_decisions")
    return {k: v.value for k, v in materialization.metadata.items()}


def test_a_promotion_makes_the_challenger_champion_and_guards_it_with_the_replaced_one(home, registry):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    result = _decide(home, "promote", b, a, n=400, lower=0.01, upper=0.05)
    assert result.success
    state = registry.state(MODEL_NAME)
    assert state.champion == b and state.challenger.tag == a and state.challenger.mode == "shadow"
    meta = _metadata(result)
    assert meta["action"] == "promote" and meta["model_version"] == b and meta["champion_after"] == b
    assert meta["dagster_run_id"] == result.run_id and meta["lower"] == 0.01 and meta["figures"]["n"] == 400
    promote, guard = registry.history(MODEL_NAME)[-2:]
    assert (promote.action, guard.action) == ("promote", "challenge")
    assert promote.details["dagster_run_id"] == guard.details["dagster_run_id"] == result.run_id
    assert promote.details["figures"] == {"n": 400, "lower": 0.01, "upper": 0.05}
    assert [e["action"] for e in meta["registry_events"]] == ["promote", "challenge"]


def test_a_decision_against_a_state_that_changed_is_not_applied(home, registry):
    a, b, c = _models(registry, 3)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    before = registry.history(MODEL_NAME)
    assert not _decide(home, "promote", b, c).success  # decided against another champion
    assert not _decide(home, "promote", c, a).success  # c is not the challenger
    assert not _decide(home, "retire", c, a).success
    assert not _decide(home, "retire", b, c).success  # the right challenger, decided against another champion
    assert not _decide(home, "rollback", a, b).success  # b is not the champion
    assert registry.history(MODEL_NAME) == before


def test_a_retirement_bars_the_challenger(home, registry):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    result = _decide(home, "retire", b, a, upper=-0.01)
    assert result.success
    state = registry.state(MODEL_NAME)
    assert state.champion == a and state.challenger is None and state.barred[b].startswith("retired")
    assert registry.history(MODEL_NAME)[-1].details["dagster_run_id"] == result.run_id


def test_a_rollback_restores_the_guarded_champion_and_bars_the_new_one(home, registry):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    assert _decide(home, "promote", b, a).success
    result = _decide(home, "rollback", a, b, mean_excess=0.3, lower=0.1)
    assert result.success
    state = registry.state(MODEL_NAME)
    assert state.champion == a and state.challenger is None and state.barred[b].startswith("rolled back")
    last = registry.history(MODEL_NAME)[-1]
    assert last.action == "rollback" and last.details["dagster_run_id"] == result.run_id
    assert _metadata(result)["mean_excess"] == 0.3


def test_keep_records_the_decision_and_changes_nothing(home, registry):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    registry.challenge(MODEL_NAME, b, "shadow", 1.0, "retrained", a)
    assert _decide(home, "promote", b, a).success
    before = registry.history(MODEL_NAME)
    result = _decide(home, "keep", a, b, upper=0.01)
    assert result.success and registry.history(MODEL_NAME) == before
    assert _metadata(result)["action"] == "keep" and _metadata(result)["registry_events"] == []
    assert not _decide(home, "keep", a, a).success  # a is not the champion any more


def test_challenge_starts_a_shadow_challenger(home, registry):
    a, b = _models(registry, 2)
    registry.promote(MODEL_NAME, a, "first", None)
    result = _decide(home, "challenge", b, a)
    assert result.success
    assert registry.state(MODEL_NAME).challenger.tag == b and _metadata(result)["challenger_after"] == b


# -- model_promotion: the offline gate -----------------------------------------------------------
def _promotion(monkeypatch, home: Path, candidate: str, champion_auc: float) -> dict:
    class Scored:
        def __init__(self, path) -> None:
            pass

        def predict(self, frame):
            return np.full(len(frame), 0.5)

    monkeypatch.setattr(training, "ServingModel", Scored)
    monkeypatch.setattr(training, "evaluation_rows", lambda frame: (frame, np.zeros(len(frame))))
    monkeypatch.setattr(
        training, "classification_metrics", lambda y, p: {"auc": champion_auc, "log_loss": 0.5, "brier": 0.2}
    )

    @dg.asset(name="delay_model")
    def candidate_model() -> dict:
        return {"tag": candidate, "metrics": {"auc": 0.7, "log_loss": 0.5}}

    @dg.asset(name="training_set")
    def rows() -> pd.DataFrame:
        day = pd.Timestamp("2013-03-08 12:00", tz="UTC")
        return pd.DataFrame({"sched_dep_ts": [day, day], "split": ["evaluation"] * 2, "is_late": [0, 1]})

    result = dg.materialize(
        [candidate_model, rows, training.model_promotion],
        resources={"model_registry": LocalModelRegistry(bentoml_home=str(home))},
        instance=dg.DagsterInstance.ephemeral(),
        tags={"flight_delay/trigger": "drift"},
    )
    by_asset = {m.asset_key.to_user_string(): m for m in result.asset_materializations_for_node("model_promotion")}
    assert set(by_asset) <= {"model_promotion", "model_decisions"}
    out = {k: v.value for k, v in by_asset["model_promotion"].metadata.items()}
    decision = by_asset.get("model_decisions")  # the decision in the model's history too, when one was made
    return out | {"logged_decision": decision and {k: v.value for k, v in decision.metadata.items()}}


def test_the_first_model_is_promoted_and_a_better_one_becomes_the_shadow_challenger(monkeypatch, home, registry):
    a, b, c = _models(registry, 3)
    first = _promotion(monkeypatch, home, a, champion_auc=0.6)
    assert registry.state(MODEL_NAME).champion == a and first["decision"] == "promote"
    assert first["logged_decision"]["action"] == "promote" and first["logged_decision"]["model_version"] == a
    better = _promotion(monkeypatch, home, b, champion_auc=0.6)
    state = registry.state(MODEL_NAME)
    assert state.champion == a and state.challenger.tag == b and state.challenger.mode == "shadow"
    assert better["decision"] == "challenge" and better["trigger/trigger"] == "drift"
    assert registry.history(MODEL_NAME)[-1].details["trigger"] == {"flight_delay/trigger": "drift"}
    assert better["logged_decision"]["action"] == "challenge" and better["logged_decision"]["champion_auc"] == 0.6
    worse = _promotion(monkeypatch, home, c, champion_auc=0.8)
    assert worse["decision"] == "keep" and registry.state(MODEL_NAME).barred[c].startswith("rejected")
    assert worse["logged_decision"] is None
