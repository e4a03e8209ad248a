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
    definitions point.
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

    def store(self) -> Any:
        from features.store import build_store

        return build_store(self.repo_path, self.state_dir, self.online_store_url)

    def definitions(self) -> list:
        import features

        root = self.offline_root
        if "://" not in root:
            root = str(Path(root).resolve())
        return features.definitions(root)
