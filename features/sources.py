"""Data sources: the offline Parquet tables the pipeline writes (one file per day) and the push
sources through which the streaming features reach the online store.

The offline root is given when the repo is built: the DuckDB offline store reads paths as they
are, so they are made absolute (or ``s3://`` URIs) by the caller, never relative to a cwd.
"""

from __future__ import annotations

from feast import FileSource, PushSource
from feast.data_format import ParquetFormat

from features import BATCH_TABLES, STREAM_TABLES, offline_path, push_source_name


def _file(offline_root: str, table: str) -> FileSource:
    return FileSource(
        name=f"{table}_source",
        path=f"{offline_path(offline_root, table)}/*.parquet",
        file_format=ParquetFormat(),
        timestamp_field="event_timestamp",
        description=f"Daily Parquet files written by the pipeline's {table} asset.",
    )


def build_sources(offline_root: str) -> dict[str, FileSource | PushSource]:
    """Every source, by the feature table it reads."""
    sources: dict[str, FileSource | PushSource] = {t: _file(offline_root, t) for t in BATCH_TABLES}
    for table in STREAM_TABLES:
        sources[table] = PushSource(
            name=push_source_name(table),
            batch_source=_file(offline_root, table),
            description=f"Stream of {table} rows; its batch source is the offline history.",
        )
    return sources
