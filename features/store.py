"""Building a Feast ``FeatureStore`` for one deployment: the repo's ``feature_store.yaml`` with
the deployment's state folder and, optionally, another online store. Shared by the pipeline's
resource and the service, so both read and write the same stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml


def online_store_config(url: str) -> dict[str, Any]:
    """``redis://host:port[/db]`` → Feast's Redis online store settings."""
    parsed = urlparse(url)
    if parsed.scheme != "redis" or not parsed.hostname:
        raise ValueError(f"online store URL {url!r}: expected redis://host:port[/db]")
    connection = f"{parsed.hostname}:{parsed.port or 6379}"
    if parsed.path.strip("/"):
        connection += f",db={parsed.path.strip('/')}"
    if parsed.password:
        connection += f",password={parsed.password}"
    return {"type": "redis", "connection_string": connection}


def repo_config(repo_path: str | Path, state_dir: str | Path | None = None, online_store_url: str | None = None) -> Any:
    """``feature_store.yaml`` of ``repo_path``; ``state_dir`` moves the file registry and a
    SQLite online store there; ``online_store_url`` (``redis://...``) replaces the online store."""
    from feast.repo_config import RepoConfig

    repo = Path(repo_path).resolve()
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    if state_dir:
        state = Path(state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)
        registry = raw.get("registry")
        raw["registry"] = (
            {**registry, "path": str(state / "registry.db")}
            if isinstance(registry, dict)
            else str(state / "registry.db")
        )
        online = dict(raw.get("online_store") or {"type": "sqlite"})
        if online.get("type", "sqlite") == "sqlite":
            online["path"] = str(state / "online.db")
        raw["online_store"] = online
    if online_store_url:
        raw["online_store"] = online_store_config(online_store_url)
    return RepoConfig(repo_path=repo, **raw)


def build_store(repo_path: str | Path, state_dir: str | Path | None = None, online_store_url: str | None = None) -> Any:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(repo_path, state_dir, online_store_url))
