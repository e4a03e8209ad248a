"""Service settings, from the environment (12-factor), with the project's embedded defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from flight_delay.model import MODEL_NAME
from flight_delay.paths import PROJECT_ROOT, DataLayout


def _float(name: str, default: float, lo: float, hi: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number between {lo} and {hi}") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name}={raw!r}: expected a number between {lo} and {hi}")
    return value


DEFAULT_LOG_MAX_BACKLOG = 50_000
DEFAULT_LOG_RETENTION_DAYS = 30.0


def log_max_backlog() -> int:
    """Rows the prediction log may hold in memory, not yet committed, before predictions are
    refused (``FLIGHT_DELAY_LOG_MAX_BACKLOG``)."""
    return int(_float("FLIGHT_DELAY_LOG_MAX_BACKLOG", DEFAULT_LOG_MAX_BACKLOG, 1, 10_000_000))


def log_retention_days() -> float:
    """Days a logged prediction is kept (``FLIGHT_DELAY_LOG_RETENTION_DAYS``; 0 keeps everything)."""
    return _float("FLIGHT_DELAY_LOG_RETENTION_DAYS", DEFAULT_LOG_RETENTION_DAYS, 0, 36_500)


@dataclass(frozen=True)
class ServingSettings:
    layout: DataLayout  # the data folder: registry, Feast state, prediction log
    repo_path: Path
    online_store_url: str | None
    model_name: str
    threshold: float
    max_batch: int
    refresh_seconds: float
    log_flush_seconds: float
    log_max_backlog: int
    log_retention_days: float
    feature_cache_seconds: float
    feature_cache_entries: int
    max_concurrency: int  # requests in progress per worker before it sheds load (503)
    max_body_bytes: int
    # When set, the API paths need "Authorization: Bearer <token>"; never shown in a repr or log.
    api_token: str | None = field(repr=False)
    store_timeout_seconds: float  # deadline of one online-store read or prediction-log call
    io_threads: int  # threads per worker for those calls

    @classmethod
    def from_env(cls) -> ServingSettings:
        env = os.environ
        for gone in ("FLIGHT_DELAY_CHALLENGER", "FLIGHT_DELAY_CHALLENGER_WEIGHT"):
            if gone in env:  # silently ignoring it would serve something else than its author meant
                raise ValueError(
                    f"{gone} is no longer read: the challenger, its mode and share are a decision recorded "
                    "in the registry (python -m flight_delay.registry challenge TAG --mode split --share 0.1 "
                    "--reason ...); unset it"
                )
        max_batch = int(_float("FLIGHT_DELAY_MAX_BATCH", 1000, 1, 100_000))
        return cls(
            layout=DataLayout.resolve(),
            repo_path=Path(env.get("FLIGHT_DELAY_FEATURE_REPO") or PROJECT_ROOT).resolve(),
            online_store_url=env.get("FLIGHT_DELAY_ONLINE_STORE") or None,
            model_name=env.get("FLIGHT_DELAY_MODEL", MODEL_NAME),
            threshold=_float("FLIGHT_DELAY_THRESHOLD", 0.3, 0.0, 1.0),
            max_batch=max_batch,
            refresh_seconds=_float("FLIGHT_DELAY_REFRESH_SECONDS", 0.5, 0.05, 60),
            log_flush_seconds=_float("FLIGHT_DELAY_LOG_FLUSH_SECONDS", 0.1, 0.01, 10),
            log_max_backlog=log_max_backlog(),
            log_retention_days=log_retention_days(),
            # How long a worker reuses an online-feature row it read (0: read every request).
            feature_cache_seconds=_float("FLIGHT_DELAY_FEATURE_CACHE_SECONDS", 1.0, 0.0, 60),
            feature_cache_entries=int(_float("FLIGHT_DELAY_FEATURE_CACHE_ENTRIES", 20_000, 100, 10_000_000)),
            max_concurrency=int(_float("FLIGHT_DELAY_MAX_CONCURRENCY", 64, 1, 100_000)),
            # A flight is about 250 bytes of JSON: a full batch fits with room to spare.
            max_body_bytes=int(_float("FLIGHT_DELAY_MAX_BODY_BYTES", max(65_536, max_batch * 1024), 1024, 1 << 30)),
            api_token=env.get("FLIGHT_DELAY_API_TOKEN") or None,
            store_timeout_seconds=_float("FLIGHT_DELAY_STORE_TIMEOUT_SECONDS", 2.0, 0.05, 60),
            io_threads=int(_float("FLIGHT_DELAY_IO_THREADS", 4, 1, 64)),
        )
