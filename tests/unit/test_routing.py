"""The model router follows the registry, and a broken artifact never replaces a working model."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flight_delay import model as M
from flight_delay.registry import ModelRegistry
from serving.routing import ModelRouter
from tests.support.synthetic import SPEC, synthetic_frame


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = M.TrainingConfig(hidden_units=(8,), max_epochs=2, batch_size=256, patience=1)
    path = tmp_path_factory.mktemp("router") / "saved"
    M.export(M.train(synthetic_frame(2000, 1), "is_late", SPEC, config), path)
    return path


def register(registry: ModelRegistry, export_dir: Path, corrupt: bool = False) -> str:
    def write(target: Path) -> None:
        shutil.copytree(export_dir, target)
        if corrupt:
            blob = (target / M.FORWARD_FILE).read_bytes()
            (target / M.FORWARD_FILE).write_bytes(blob[: len(blob) // 2])

    return registry.register("m", write, {}, {})


def test_a_broken_champion_keeps_the_previous_one_serving(tmp_path: Path, export_dir: Path):
    registry = ModelRegistry(tmp_path / "bentoml")
    good = register(registry, export_dir)
    registry.promote("m", good, "first")
    router = ModelRouter(registry, "m", challenger="none", weight=0.0, refresh_seconds=3600)
    try:
        assert router.routing.champion.tag == good and router.routing.champion.model.engine == "numpy"

        broken = register(registry, export_dir, corrupt=True)
        registry.promote("m", broken, "a bad export")
        with pytest.raises(ValueError, match="forward.npz"):
            router.refresh()
        assert router.routing.champion.tag == good, "the working model keeps serving"
        assert router.last_error and "forward.npz" in router.last_error
        assert router.refresh() is False, "not retried until the registry changes again"

        registry.rollback("m", "the export is broken")
        router.refresh()
        assert router.routing.champion.tag == good and router.last_error is None
    finally:
        router.close()
