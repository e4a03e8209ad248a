"""The registry keeps every version immutable and every champion change in its history."""

from pathlib import Path

import pytest

from flight_delay.registry import ModelRegistry


def _write(text: str):
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "weights.txt").write_text(text)

    return write


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "bentoml")


def test_register_keeps_labels_metadata_and_files(registry):
    tag = registry.register("m", _write("one"), {"feature_service": "svc_v1"}, {"metrics": {"auc": 0.8}})
    model = registry.get(tag)
    assert model.info.labels["feature_service"] == "svc_v1"
    assert model.info.metadata["metrics"]["auc"] == 0.8
    assert (registry.model_dir(tag) / "weights.txt").read_text() == "one"


def test_labels_must_be_strings(registry):
    with pytest.raises(TypeError, match="labels must be strings"):
        registry.register("m", _write("x"), {"auc": 0.8}, {})  # type: ignore[dict-item]


def test_versions_are_listed_oldest_first(registry):
    tags = [registry.register("m", _write(str(i)), {}, {}) for i in range(3)]
    assert registry.list("m") == tags


def test_promote_and_rollback_keep_history(registry):
    a, b, c = (registry.register("m", _write(str(i)), {}, {}) for i in range(3))
    assert registry.champion("m") is None
    registry.promote("m", a, "first")
    registry.promote("m", b, "better")
    registry.promote("m", c, "better again")
    event = registry.rollback("m", "c degraded")
    assert registry.champion("m") == b and event.previous == c and event.action == "rollback"
    registry.rollback("m", "restore the first", to_tag=a)
    assert registry.champion("m") == a
    assert [e.tag for e in registry.history("m")] == [a, b, c, b, a]


def test_history_survives_a_new_registry_object(registry, tmp_path):
    a = registry.register("m", _write("a"), {}, {})
    registry.promote("m", a, "first")
    assert ModelRegistry(tmp_path / "bentoml").champion("m") == a


def test_cannot_promote_an_unknown_model(registry):
    with pytest.raises(LookupError, match="not in the registry"):
        registry.promote("m", "m:doesnotexist", "typo")


def test_rollback_needs_an_earlier_champion(registry):
    a = registry.register("m", _write("a"), {}, {})
    with pytest.raises(LookupError, match="no champion"):
        registry.rollback("m", "nothing yet")
    registry.promote("m", a, "first")
    with pytest.raises(LookupError, match="single champion"):
        registry.rollback("m", "nothing earlier")
    b = registry.register("m", _write("b"), {}, {})
    with pytest.raises(LookupError, match="never a champion"):
        registry.rollback("m", "b never served", to_tag=b)


def test_corrupt_history_line_is_reported(registry):
    a = registry.register("m", _write("a"), {}, {})
    registry.promote("m", a, "first")
    with open(registry.home / "champions" / "m.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match="m.jsonl:2: not a champion event"):
        registry.champion("m")
