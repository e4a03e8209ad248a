"""What the prediction service did: its prediction log as a dataset in the lake.

Nothing here runs on a schedule or in the feature and retraining jobs: the log is materialized on
demand (``dagster asset materialize -m pipeline.definitions --select prediction_log``).
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from serving.prediction_log import read_log

GROUP = "monitoring"


class PredictionLogResource(dg.ConfigurableResource):
    """The service's SQLite prediction log (``<data dir>/prediction_log/predictions.db`` by
    default, as in ``serving.settings``), opened read-only."""

    path: str = Field(description="The service's predictions.db; a missing file reads as an empty log.")

    def read(self, since: float | None = None) -> pd.DataFrame:
        return read_log(Path(self.path), since)


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


@dg.asset(group_name=GROUP, kinds={"sqlite", "pandas", "parquet"})
def prediction_log(context: dg.AssetExecutionContext, prediction_log_db: PredictionLogResource) -> dg.Output:
    """Every prediction the service logged, with its feature values and its latest feedback
    (delay, late) when some came: one row per request id."""
    frame = prediction_log_db.read()
    path = Path(prediction_log_db.path)
    if not path.exists():
        context.log.warning(f"{path} does not exist (the service has not run on this data folder): empty log")
    with_feedback = int(frame["late"].notna().sum())
    metadata: dict[str, object] = {
        "dagster/row_count": len(frame),
        "rows": len(frame),
        "rows_with_feedback": with_feedback,
        "models": dg.MetadataValue.json(_counts(frame["model_version"])),
        "variants": dg.MetadataValue.json(_counts(frame["variant"])),
        "path": dg.MetadataValue.path(str(path)),
    }
    if len(frame):
        metadata["first_prediction"] = dg.MetadataValue.timestamp(frame["predicted_at"].min().timestamp())
        metadata["last_prediction"] = dg.MetadataValue.timestamp(frame["predicted_at"].max().timestamp())
    if with_feedback:
        metadata["late_rate"] = float(frame["late"].mean())
    return dg.Output(frame, metadata=metadata)
