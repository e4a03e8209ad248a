"""The Feast registry and the online store."""

import dagster as dg
import pandas as pd
from pydantic import Field

from features import BATCH_TABLES, STREAM_TABLES, push_source_name
from pipeline.partitions import daily_partitions
from pipeline.resources import FeatureStoreResource, TableStore
from pipeline.step_resources import step_op_tags

GROUP = "feature_store"
FEATURE_TABLES = [*BATCH_TABLES, *STREAM_TABLES]


# Applying definitions reads no feature data, so the registry depends on none: it can be applied
# before the first partition exists, and the online store (which does read data) follows both.
@dg.asset(group_name=GROUP, op_tags=step_op_tags(GROUP), kinds={"feast"})
def feature_registry(feature_store: FeatureStoreResource) -> dg.MaterializeResult:
    """Feast registry with every entity, source, feature view and feature service applied."""
    store = feature_store.store()
    objects = feature_store.definitions()
    store.apply(objects)
    views = store.list_feature_views()
    services = store.list_feature_services()
    return dg.MaterializeResult(
        metadata={
            "project": store.project,
            "feature_views": dg.MetadataValue.json({v.name: [f.name for f in v.features] for v in views}),
            "feature_services": dg.MetadataValue.json(
                {s.name: [p.name for p in s.feature_view_projections] for s in services}
            ),
            "offline_root": feature_store.offline_root,
        }
    )


class OnlineFeaturesConfig(dg.Config):
    """How far the online store is brought."""

    as_of: str | None = Field(
        default=None,
        description="Bring the online store to this instant (ISO 8601, inside the last partition) "
        "instead of the end of the partitions: a replay of the live state at that moment.",
    )


def latest_per_entity(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Each entity's last row: the state a log-compacted stream leaves in the online store."""
    if frame.empty:
        return frame
    return frame.sort_values("event_timestamp", kind="stable").groupby(keys, as_index=False).tail(1)


@dg.asset(
    group_name=GROUP,
    op_tags=step_op_tags(GROUP),
    partitions_def=daily_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    deps=[feature_registry, *FEATURE_TABLES],
    kinds={"feast", "sqlite"},
)
def online_features(
    context: dg.AssetExecutionContext,
    config: OnlineFeaturesConfig,
    feature_store: FeatureStoreResource,
    offline_tables: TableStore,
) -> dg.MaterializeResult:
    """Online store up to the end of the partitions: batch views materialized, streamed views pushed."""
    from feast.data_source import PushMode

    store = feature_store.store()
    days = list(context.partition_keys)
    window = context.partition_time_window
    start, end = pd.Timestamp(window.start).tz_convert("UTC"), pd.Timestamp(window.end).tz_convert("UTC")
    if config.as_of:
        as_of = pd.Timestamp(config.as_of)
        as_of = as_of.tz_localize("UTC") if as_of.tzinfo is None else as_of.tz_convert("UTC")
        if not start <= as_of < end:
            raise dg.Failure(f"as_of {as_of} lies outside the partitions' window {start} – {end}")
        # Values stamped exactly at as_of are known at as_of, as in the point-in-time join.
        end = as_of + pd.Timedelta(microseconds=1)
    pushed: dict[str, int] = {}
    for table in STREAM_TABLES:
        view = store.get_feature_view(table)
        rows = offline_tables.read(table, days)
        frame = latest_per_entity(rows[rows["event_timestamp"] < end], list(view.join_keys))
        store.push(push_source_name(table), frame, to=PushMode.ONLINE)
        pushed[table] = len(frame)
    for table in BATCH_TABLES:
        view = store.get_feature_view(table)
        # A view without TTL (static attributes) needs its whole history, not just these days.
        since = start - view.ttl if view.ttl else pd.Timestamp("1970-01-01", tz="UTC")
        store.materialize(start_date=since.to_pydatetime(), end_date=end.to_pydatetime(), feature_views=[table])
    return dg.MaterializeResult(
        metadata={
            "pushed_rows": dg.MetadataValue.json(pushed),
            "materialized_views": dg.MetadataValue.json(list(BATCH_TABLES)),
            "online_as_of": end.isoformat(),
        }
    )
