"""Running the asset graph in-process the way the Makefile runs it from the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

from pipeline.definitions import build_definitions

REFERENCE = ["raw_airports", "raw_airlines", "raw_planes", "aircraft_profile", "feature_registry"]
DAILY = ["raw_flights", "raw_weather", "departures", "origin_hourly_weather", "origin_1h_departures",
         "origin_carrier_3h_departures", "aircraft_last_departure", "carrier_7d_delays", "route_28d_delays",
         "online_features"]
TRAINING = ["training_set", "delay_model", "model_promotion"]


class Graph:
    """One data folder, one source folder, one Dagster instance."""

    def __init__(self, data_dir: Path, source_dir: Path, instance: dg.DagsterInstance) -> None:
        self.data_dir = data_dir
        self.defs = build_definitions(data_dir=str(data_dir), source_dir=str(source_dir))
        self.instance = instance

    def run(self, selection: list[str], days: tuple[str, str] | None = None,
            run_config: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
        tags = {}
        if days:
            tags = {ASSET_PARTITION_RANGE_START_TAG: days[0], ASSET_PARTITION_RANGE_END_TAG: days[1]}
        return dg.materialize(
            list(self.defs.assets or []), selection=selection, resources=self.defs.resources,
            instance=self.instance, tags=tags, run_config=run_config or {}, raise_on_error=False,
        )

    def training_config(self, train_end: str, evaluation_start: str, evaluation_end: str,
                        epochs: int = 3) -> dict[str, Any]:
        return {"ops": {
            "training_set": {"config": {"train_start": "2013-01-01", "train_end": train_end,
                                        "evaluation_start": evaluation_start, "evaluation_end": evaluation_end}},
            "delay_model": {"config": {"max_epochs": epochs, "hidden_units": [32, 16]}},
        }}

    def resource(self, name: str) -> Any:
        return self.defs.resources[name]
