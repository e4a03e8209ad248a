"""Where a deployment keeps its state: one data folder, laid out the same way for the pipeline,
the service, the benchmark and the command-line tools.

``FLIGHT_DELAY_DATA_DIR`` chooses the folder; the project's own ``data/`` is the embedded default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "FLIGHT_DELAY_DATA_DIR"


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$FLIGHT_DELAY_DATA_DIR``, else the project's ``data/``; absolute."""
    return Path(explicit or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT / "data").resolve()


@dataclass(frozen=True)
class DataLayout:
    """The folders and files under one data folder."""

    root: Path

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None = None) -> DataLayout:
        return cls(data_dir(explicit))

    @property
    def lake(self) -> Path:
        """Pipeline tables (raw, validated, training set, prediction log copy)."""
        return self.root / "lake"

    @property
    def offline(self) -> Path:
        """The Feast offline store: one Parquet file per feature table and day."""
        return self.root / "offline"

    @property
    def feast_state(self) -> Path:
        """The Feast registry and the SQLite online store."""
        return self.root / "feast"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def bentoml_home(self) -> Path:
        """BentoML home: the model registry (``models/``), champion history and Bentos."""
        return self.root / "bentoml"

    @property
    def prediction_log(self) -> Path:
        """The service's prediction and feedback log."""
        return self.root / "prediction_log" / "predictions.db"
