"""The Feast feature store, configured from ``feature_store.yaml`` with per-deployment paths."""

from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field


class FeatureStoreResource(dg.ConfigurableResource):
    """A Feast ``FeatureStore`` over one repo folder, one offline root and one state folder.

    ``feature_store.yaml`` in ``repo_path`` chooses the stores (SQLite online, DuckDB offline);
    ``state_dir`` moves the file registry and a SQLite online store next to the rest of a
    deployment's data; ``online_store_url`` switches the online store to Redis. The offline root
    is where the feature table assets write their daily Parquet files and where the applied
    definitions point. ``s3_bucket`` (the aws and k8s profiles) puts the registry in that bucket,
    under ``s3_prefix``, and reads ``s3://`` offline roots there (``features.store.repo_config``).
    """

    repo_path: str = Field(description="Folder of feature_store.yaml.")
    offline_root: str = Field(description="Folder (or s3:// prefix) of the offline feature tables.")
    state_dir: str | None = Field(
        default=None,
        description="Folder for the file registry and the SQLite online store; empty: as in feature_store.yaml.",
    )
    online_store_url: str | None = Field(
        default=None,
        description="redis://host:port[/db] to use Redis as the online store; empty: SQLite.",
    )
    s3_bucket: str | None = Field(
        default=None,
        description="Bucket of the Feast registry (s3://bucket/prefix/feast/registry.pb); empty: a file registry.",
    )
    s3_prefix: str = Field(default="", description="Key prefix of the deployment in s3_bucket.")

    def s3_location(self) -> Any:
        from flight_delay.object_store import S3Location

        return S3Location(self.s3_bucket, self.s3_prefix.strip("/")) if self.s3_bucket else None

    def store(self) -> Any:
        from features.store import build_store

        return build_store(self.repo_path, self.state_dir, self.online_store_url, self.s3_location())

    def definitions(self) -> list:
        import features

        root = self.offline_root
        if "://" not in root:
            root = str(Path(root).resolve())
        return features.definitions(root)
