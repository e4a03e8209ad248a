"""The Feast feature store, configured from ``feature_store.yaml`` with per-deployment paths."""

from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import Field


class FeatureStoreResource(dg.ConfigurableResource):
    """A Feast ``FeatureStore`` over one repo folder, one offline root and one state folder.

    ``feature_store.yaml`` in ``repo_path`` chooses the stores (SQLite or Redis online, DuckDB
    offline); ``state_dir`` moves the file registry and a SQLite online store next to the rest of
    a deployment's data; the offline root is where the feature table assets write their daily
    Parquet files and where the applied definitions point.
    """

    repo_path: str = Field(description="Folder of feature_store.yaml.")
    offline_root: str = Field(description="Folder (or s3:// prefix) of the offline feature tables.")
    state_dir: str | None = Field(
        default=None,
        description="Folder for the file registry and the SQLite online store; empty: as in feature_store.yaml.",
    )

    def repo_config(self) -> Any:
        from feast.repo_config import RepoConfig

        repo = Path(self.repo_path).resolve()
        raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
        if self.state_dir:
            state = Path(self.state_dir).resolve()
            state.mkdir(parents=True, exist_ok=True)
            registry = raw.get("registry")
            if isinstance(registry, dict):
                registry = {**registry, "path": str(state / "registry.db")}
            else:
                registry = str(state / "registry.db")
            raw["registry"] = registry
            online = dict(raw.get("online_store") or {"type": "sqlite"})
            if online.get("type", "sqlite") == "sqlite":
                online["path"] = str(state / "online.db")
            raw["online_store"] = online
        return RepoConfig(repo_path=repo, **raw)

    def store(self) -> Any:
        from feast import FeatureStore

        return FeatureStore(config=self.repo_config())

    def definitions(self) -> list:
        import features

        root = self.offline_root
        if "://" not in root:
            root = str(Path(root).resolve())
        return features.definitions(root)
