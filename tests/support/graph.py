"""Running the asset graph in-process the way ``make materialize`` runs it from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from pipeline.definitions import build_definitions
from pipeline.materialize import graph_steps

_REFERENCE, _DAILY, _TRAINING = graph_steps()
REFERENCE = list(_REFERENCE.assets)
DAILY = list(_DAILY.assets)
TRAINING = [a for a in _TRAINING.assets if a != "prediction_bento"]  # the Bento build is tested end to end


class Graph:
    """One data folder, one source folder, one Dagster instance."""

    def __init__(self, data_dir: Path, source_dir: Path, instance: dg.DagsterInstance) -> None:
        self.data_dir = data_dir
        self.defs = build_definitions(data_dir=str(data_dir), source_dir=str(source_dir))
        self.instance = instance

    def run(
        self, selection: list[str], days: tuple[str, str] | None = None, run_config: dict[str, Any] | None = None
    ) -> dg.ExecuteInProcessResult:
        tags = {}
        if days:
            tags = {ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[1]}
        return dg.materialize(
            list(self.defs.assets or []),
            selection=selection,
            resources=self.defs.resources,
            instance=self.instance,
            tags=tags,
            run_config=run_config or {},
            raise_on_error=False,
        )

    def training_config(
        self, train_end: str, evaluation_start: str, evaluation_end: str, epochs: int = 3
    ) -> dict[str, Any]:
        return {
            "ops": {
                "training_set": {
                    "config": {
                        "train_start": "2013-01-01",
                        "train_end": train_end,
                        "evaluation_start": evaluation_start,
                        "evaluation_end": evaluation_end,
                    }
                },
                "delay_model": {"config": {"max_epochs": epochs, "hidden_units": [32, 16]}},
            }
        }

    def resource(self, name: str) -> Any:
        return self.defs.resources[name]
