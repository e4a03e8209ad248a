"""Building a Feast ``FeatureStore`` for one deployment: the repo's ``feature_store.yaml`` with
the deployment's state folder and, optionally, another online store and an S3 location (the aws
and k8s profiles: the registry at ``s3://bucket/prefix/feast/registry.pb``, the offline store
reading ``s3://`` sources, ``features.offline_stores``). Shared by the pipeline's resource and the
service, so both read and write the same stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import yaml

from features.online_stores import REDIS_TYPE, SQLITE_TYPE
from flight_delay.object_store import S3Location
from flight_delay.paths import redact as redact  # the service redacts its store URL with it

# The offline store of the aws and k8s profiles (features.offline_stores, named here so that
# building a config does not import that module before Feast needs it).
S3_OFFLINE_STORE_TYPE = "features.offline_stores.S3DuckDBOfflineStore"

# Every Redis command and connection attempt gives up after this long (seconds) unless the URL
# says otherwise (?socket_timeout=...&socket_connect_timeout=...): without it redis-py waits for
# ever on a half-open connection, and the worker with it.
REDIS_TIMEOUT_SECONDS = 0.5
_REDIS_OPTIONS = {
    "socket_timeout",
    "socket_connect_timeout",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
}


def online_store_config(url: str) -> dict[str, Any]:
    """``redis://[user:password@]host:port[/db][?option=value...]`` (``rediss://`` for TLS) →
    Feast's Redis online store settings (the monotone store of ``features.online_stores``), with
    timeouts on every command. Options: socket_timeout, socket_connect_timeout (seconds), and for
    TLS ssl_cert_reqs (required, optional, none), ssl_ca_certs, ssl_certfile, ssl_keyfile."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"online store URL {redact(url)!r}: expected redis://host:port[/db] or rediss://...")
    options = {"socket_timeout": str(REDIS_TIMEOUT_SECONDS), "socket_connect_timeout": str(REDIS_TIMEOUT_SECONDS)}
    for key, values in parse_qs(parsed.query).items():
        if key not in _REDIS_OPTIONS:
            raise ValueError(f"online store URL option {key!r}: expected one of {sorted(_REDIS_OPTIONS)}")
        options[key] = values[-1]
    if parsed.scheme == "rediss":
        options["ssl"] = "true"
    if parsed.path.strip("/"):
        options["db"] = parsed.path.strip("/")
    if parsed.username:
        options["username"] = unquote(parsed.username)
    if parsed.password:
        options["password"] = unquote(parsed.password)
    bad = [k for k, v in options.items() if "," in v or "=" in v]
    if bad:
        raise ValueError(f"online store URL: {', '.join(bad)} may not contain ',' or '=' (Feast's connection string)")
    connection = ",".join([f"{parsed.hostname}:{parsed.port or 6379}", *(f"{k}={v}" for k, v in options.items())])
    return {"type": REDIS_TYPE, "connection_string": connection}


def registry_url(s3: S3Location) -> str:
    """Where the aws and k8s profiles keep the Feast registry."""
    return s3.url("feast", "registry.pb")


def _registry_at(registry: Any, path: str) -> Any:
    """``feature_store.yaml``'s registry setting (a path, or a mapping with one) moved to ``path``."""
    return {**registry, "path": path} if isinstance(registry, dict) else path


def repo_config(
    repo_path: str | Path,
    state_dir: str | Path | None = None,
    online_store_url: str | None = None,
    s3: S3Location | None = None,
) -> Any:
    """``feature_store.yaml`` of ``repo_path``; ``state_dir`` moves the file registry and a
    SQLite online store there; ``online_store_url`` (``redis://...``, ``rediss://...``) replaces the
    online store; ``s3`` (the aws and k8s profiles) puts the registry in the bucket and reads the
    offline sources there (boto3 and pyarrow find endpoint and credentials in the environment)."""
    from feast.repo_config import RepoConfig

    repo = Path(repo_path).resolve()
    raw = yaml.safe_load((repo / "feature_store.yaml").read_text())
    if state_dir:
        state = Path(state_dir).resolve()
        state.mkdir(parents=True, exist_ok=True)
        raw["registry"] = _registry_at(raw.get("registry"), str(state / "registry.db"))
        online = dict(raw.get("online_store") or {"type": SQLITE_TYPE})
        if online.get("type", "sqlite") in ("sqlite", SQLITE_TYPE):
            online["path"] = str(state / "online.db")
        raw["online_store"] = online
    if online_store_url:
        raw["online_store"] = online_store_config(online_store_url)
    if s3 is not None:
        # Feast's S3 registry store: boto3, endpoint from AWS_ENDPOINT_URL_S3 (or FEAST_S3_ENDPOINT_URL).
        raw["registry"] = _registry_at(raw.get("registry"), registry_url(s3))
        raw["offline_store"] = {**(raw.get("offline_store") or {}), "type": S3_OFFLINE_STORE_TYPE}
    return RepoConfig(repo_path=repo, **raw)


def build_store(
    repo_path: str | Path,
    state_dir: str | Path | None = None,
    online_store_url: str | None = None,
    s3: S3Location | None = None,
) -> Any:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(repo_path, state_dir, online_store_url, s3))
