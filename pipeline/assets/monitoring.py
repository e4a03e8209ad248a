"""What the prediction service did: its prediction log as a dataset in the lake, a file per day.

Nothing here runs on a schedule or in the feature and retraining jobs: the log is materialized on
demand (``dagster asset materialize -m pipeline.definitions --select prediction_log --partition
2013-03-10``, or a range of days in one run).
"""

from pathlib import Path

import dagster as dg
import pandas as pd

from flight_delay.prediction_log import data_days
from pipeline.partitions import daily_asset
from pipeline.resources import PredictionLogResource

GROUP = "monitoring"


def _counts(values: pd.Series) -> dict[str, int]:
    return {str(k): int(v) for k, v in values.value_counts().sort_index().items()}


@dg.asset(**daily_asset(GROUP, "day", kinds={"sqlite", "pandas", "parquet"}))
def prediction_log(context: dg.AssetExecutionContext, prediction_log_db: PredictionLogResource) -> dg.Output:
    """The predictions the service logged for a local day of data time (the request's prediction
    time, else when it was logged), with their feature values and feedback (delay, late) when
    some came: one row per request id."""
    path = Path(prediction_log_db.path)
    if not prediction_log_db.exists():
        context.log.warning(f"{path} does not exist (the service has not run on this data folder): empty log")
    window = context.partition_time_window
    frame = prediction_log_db.read(start=window.start.timestamp(), end=window.end.timestamp())
    frame["day"] = data_days(frame)
    keys = context.partition_key_range
    with_feedback = int(frame["late"].notna().sum())
    metadata: dict[str, object] = {
        "day": keys.start if keys.start == keys.end else f"{keys.start}...{keys.end}",
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
