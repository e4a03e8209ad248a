"""Feast's DuckDB offline store, reading ``s3://`` file sources with pyarrow.

Feast's store hands an ``s3://`` path to ``ibis.read_parquet``, that is to DuckDB's ``httpfs``
extension, which DuckDB downloads the first time it is used: a deployment without internet access
(or a pod with a read-only root filesystem) cannot load it. This store reads such a source itself,
with pyarrow's S3 filesystem (endpoint, credentials and region from the standard AWS environment,
``flight_delay.object_store``), into an in-memory ibis table; every other source, local paths
included, goes to Feast's reader as before, and the point-in-time join is Feast's own.

Selected by ``features.store.repo_config`` under the aws and k8s profiles
(``type: features.offline_stores.S3DuckDBOfflineStore``). Feast finds the config class by the
store's name plus ``Config``. Writes to an ``s3://`` source (``PushMode.OFFLINE``,
``offline_write_batch``) are refused: the pipeline writes the offline tables, and pushes go to the
online store only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
from feast.data_format import ParquetFormat
from feast.data_source import DataSource
from feast.feature_view import FeatureView
from feast.infra.offline_stores import duckdb as feast_duckdb
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore, DuckDBOfflineStoreConfig
from feast.infra.offline_stores.file_source import FileSource
from feast.infra.offline_stores.ibis import (
    get_historical_features_ibis,
    pull_all_from_table_or_query_ibis,
    pull_latest_from_table_or_query_ibis,
)
from feast.infra.offline_stores.offline_store import RetrievalJob
from feast.infra.registry.base_registry import BaseRegistry
from feast.repo_config import RepoConfig

from features.store import S3_OFFLINE_STORE_TYPE

_GLOB_CHARS = "*?["


def s3_parquet_files(url: str, filesystem: Any) -> list[str]:
    """The objects (``bucket/key``, as pyarrow names them) that ``url`` names: one object, or the
    ``.parquet`` objects a glob in its last part matches (``s3://bucket/offline/table/*.parquet``),
    sorted. Raises FileNotFoundError when there are none, as DuckDB does for an empty glob."""
    from pyarrow import fs

    path = url.removeprefix("s3://")
    folder, _, name = path.rpartition("/")
    if not any(c in name for c in _GLOB_CHARS):
        if filesystem.get_file_info(path).type != fs.FileType.File:
            raise FileNotFoundError(f"no object {url}")
        return [path]
    if any(c in folder for c in _GLOB_CHARS):
        raise ValueError(f"{url}: a glob is supported in the last part of the path only")
    infos = filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True, recursive=False))
    files = sorted(i.path for i in infos if i.type == fs.FileType.File and fnmatch.fnmatch(i.base_name, name))
    if not files:
        raise FileNotFoundError(f"no files match {url}")
    return files


def read_s3_parquet(url: str, filesystem: Any = None) -> pa.Table:
    """Every file ``url`` names, as one Arrow table (the first file's schema, as DuckDB reads a glob)."""
    import pyarrow.dataset as ds

    from flight_delay.object_store import arrow_filesystem

    filesystem = filesystem or arrow_filesystem()
    files = s3_parquet_files(url, filesystem)
    return ds.dataset(files, filesystem=filesystem, format="parquet").to_table()


def _read_data_source(data_source: DataSource, repo_path: str) -> Any:
    """Feast's reader, except for Parquet file sources on S3."""
    import ibis

    if (
        isinstance(data_source, FileSource)
        and data_source.path.startswith("s3://")
        and (data_source.file_format is None or isinstance(data_source.file_format, ParquetFormat))
    ):
        return ibis.memtable(read_s3_parquet(data_source.path))
    return feast_duckdb._read_data_source(data_source, repo_path)


def _is_s3(source: DataSource | None) -> bool:
    return isinstance(source, FileSource) and source.path.startswith("s3://")


def _through_us(config: RepoConfig) -> dict[str, Any]:
    """What every ibis function of Feast's DuckDB store is given, with this module's reader."""
    return {
        "data_source_reader": _read_data_source,
        "data_source_writer": feast_duckdb._write_data_source,
        "staging_location": config.offline_store.staging_location,
        "staging_location_endpoint_override": config.offline_store.staging_location_endpoint_override,
    }


class S3DuckDBOfflineStoreConfig(DuckDBOfflineStoreConfig):
    """Feast's DuckDB offline store, with ``s3://`` Parquet sources read by pyarrow."""

    type: Literal["features.offline_stores.S3DuckDBOfflineStore"] = S3_OFFLINE_STORE_TYPE  # type: ignore[assignment]


class S3DuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def pull_latest_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None,
        start_date: datetime,
        end_date: datetime,
    ) -> RetrievalJob:
        return pull_latest_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_through_us(config),
        )

    @staticmethod
    def get_historical_features(
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        feast_duckdb._validate_lance_feature_views(feature_views)
        return get_historical_features_ibis(
            config=config,
            feature_views=feature_views,
            feature_refs=feature_refs,
            entity_df=entity_df,
            registry=registry,
            project=project,
            full_feature_names=full_feature_names,
            **_through_us(config),
            filter_by_created_timestamp=filter_by_created_timestamp,
        )

    @staticmethod
    def pull_all_from_table_or_query(
        config: RepoConfig,
        data_source: DataSource,
        join_key_columns: list[str],
        feature_name_columns: list[str],
        timestamp_field: str,
        created_timestamp_column: str | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> RetrievalJob:
        return pull_all_from_table_or_query_ibis(
            config=config,
            data_source=data_source,
            join_key_columns=join_key_columns,
            feature_name_columns=feature_name_columns,
            timestamp_field=timestamp_field,
            created_timestamp_column=created_timestamp_column,
            start_date=start_date,
            end_date=end_date,
            **_through_us(config),
        )

    @staticmethod
    def offline_write_batch(
        config: RepoConfig,
        feature_view: FeatureView,
        table: pa.Table,
        progress: Callable[[int], Any] | None,
    ) -> None:
        if _is_s3(feature_view.batch_source):
            raise NotImplementedError(
                f"{feature_view.name}: writing to an s3:// offline source is not supported (the pipeline writes "
                "the offline tables; push to the online store only, PushMode.ONLINE)"
            )
        DuckDBOfflineStore.offline_write_batch(config, feature_view, table, progress)
