"""Jobs and schedules: the daily feature refresh, the retraining, the monitoring and the loop's decisions."""

import dagster as dg

from pipeline.assets import (
    decisions,
    feature_store,
    feature_tables,
    ingestion,
    monitoring,
    packaging,
    training,
    validated,
)
from pipeline.partitions import daily_partitions

feature_refresh_job = dg.define_asset_job(
    "feature_refresh_job",
    selection=dg.AssetSelection.groups(ingestion.GROUP, validated.GROUP, feature_tables.GROUP, feature_store.GROUP),
    partitions_def=daily_partitions,
    description="Ingest, validate and compute a day's features; apply the registry; update the online store.",
)

retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.groups(training.GROUP, packaging.GROUP),
    description="Build the training set, train and register a model, decide on promotion, build the Bento.",
)

daily_feature_refresh = dg.build_schedule_from_partitioned_job(
    feature_refresh_job,
    hour_of_day=0,
    minute_of_hour=30,
    description="Refresh yesterday's features shortly after local midnight.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.assets(monitoring.model_monitoring),
    description="Drift and live quality of the served models from the service's counters.",
)

monitoring_schedule = dg.ScheduleDefinition(
    job=monitoring_job,
    cron_schedule="*/15 * * * *",
    description="Drift and live quality every 15 minutes (turn it on in the UI; the daemon runs it).",
)

decision_job = dg.define_asset_job(
    "decision_job",
    selection=dg.AssetSelection.assets(decisions.model_decisions),
    description="Apply one decision about which model serves (run config: action, model, expected champion, "
    "reason, figures); requested by the loop's sensors.",
)
