"""What the prediction service did: its prediction log as a dataset in the lake.

Nothing here runs on a schedule or in the feature and retraining jobs: the log is materialized on
demand (``dagster asset materialize -m pipeline.definitions --select prediction_log``).
"""

from pathlib import Path

import dagster as dg
import pandas as pd

from pipeline.resources import PredictionLogResource

GROUP = "monitoring"


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


@dg.asset(group_name=GROUP, kinds={"sqlite", "pandas", "parquet"})
def prediction_log(context: dg.AssetExecutionContext, prediction_log_db: PredictionLogResource) -> dg.Output:
    """Every prediction the service logged, with its feature values and its latest feedback
    (delay, late) when some came: one row per request id."""
    path = Path(prediction_log_db.path)
    if not prediction_log_db.exists():
        context.log.warning(f"{path} does not exist (the service has not run on this data folder): empty log")
    frame = prediction_log_db.read()
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
