"""What the prediction service did and how its models fare: its prediction log as a dataset in
the lake, a file per day, materialized on demand (``dagster asset materialize -m
pipeline.definitions --select prediction_log --partition 2013-03-10``, or a range of days in one
run); and drift and live quality from its counters, on a schedule (``monitoring_job``)."""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from flight_delay.drift import Reference
from flight_delay.forward import read_reference
from flight_delay.log_database import redact
from flight_delay.log_reading import data_days
from flight_delay.monitoring import drift_rows, quality_rows
from flight_delay.registry import ModelRegistry
from pipeline.partitions import daily_asset
from pipeline.resources import MetricsSource, ModelRegistryResource, PredictionLogResource, TableStore
from pipeline.step_resources import step_op_tags

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
    }
    if prediction_log_db.database_url:
        metadata["database"] = redact(prediction_log_db.database_url)
    else:
        metadata["path"] = dg.MetadataValue.path(str(path))
    if len(frame):
        metadata["first_prediction"] = dg.MetadataValue.timestamp(frame["predicted_at"].min().timestamp())
        metadata["last_prediction"] = dg.MetadataValue.timestamp(frame["predicted_at"].max().timestamp())
    if with_feedback:
        metadata["late_rate"] = float(frame["late"].mean())
    return dg.Output(frame, metadata=metadata)


class MonitoringConfig(dg.Config):
    """Which figures the UI plots."""

    top_features: int = Field(default=12, ge=1, description="Features plotted per model (the largest PSI first).")


def _references(registry: ModelRegistry, models: set[str]) -> dict[str, Reference]:
    return {m: read_reference(registry.model_dir(m)) for m in sorted(models)}


@dg.asset(group_name=GROUP, op_tags=step_op_tags(GROUP), kinds={"prometheus", "pandas", "parquet"})
def model_monitoring(
    context: dg.AssetExecutionContext,
    config: MonitoringConfig,
    metrics_source: MetricsSource,
    model_registry: ModelRegistryResource,
    lake: TableStore,
) -> dg.Output[pd.DataFrame]:
    """Drift per feature and live quality per variant of the models the service serves, over the
    window since the previous run (or Prometheus's window), appended to a history in the lake."""
    window = metrics_source.window()
    models = {m for m, _, _ in window.feature_bins} | {m for m, _ in window.serving}
    registry = model_registry.registry()
    drift = pd.DataFrame([r.__dict__ for r in drift_rows(window, _references(registry, models))])
    quality = pd.DataFrame([r.__dict__ for r in quality_rows(window)])
    at = pd.Timestamp.now(tz="UTC")
    rows = pd.concat([drift.assign(kind="drift"), quality.assign(kind="quality")], ignore_index=True)
    rows.insert(0, "measured_at", at)
    try:
        history = pd.concat([lake.read("model_monitoring"), rows], ignore_index=True)
    except FileNotFoundError:
        history = rows
    role = dict(window.serving)
    metadata: dict[str, object] = {"source": metrics_source.describe(), "dagster/row_count": len(history)}
    if not drift.empty:
        drift["role"] = drift["model_version"].map(role).fillna("retired")
        for r in drift.sort_values("psi", ascending=False).groupby("role").head(config.top_features).itertuples():
            metadata[f"{r.role}/psi/{r.feature}"] = dg.MetadataValue.float(float(r.psi))
        metadata["drift"] = dg.MetadataValue.md(drift.round(4).to_markdown(index=False))
    if not quality.empty:
        for r in quality.itertuples():
            for figure in ("log_loss", "brier", "hit_rate", "auc", "mean_predicted", "observed_late_rate"):
                value = float(getattr(r, figure))
                if value == value:  # NaN (one outcome only) is not plotted
                    metadata[f"{r.variant}/live_{figure}"] = dg.MetadataValue.float(value)
            metadata[f"{r.variant}/live_feedback"] = dg.MetadataValue.int(int(r.n))
        metadata["quality"] = dg.MetadataValue.md(quality.round(4).to_markdown(index=False))
    context.log.info(f"{len(drift)} drift rows and {len(quality)} quality rows from {metrics_source.describe()}")
    return dg.Output(history, metadata=metadata)
