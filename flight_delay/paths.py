"""Where a deployment keeps its state: one data folder, laid out the same way for the pipeline,
the service, the benchmark and the command-line tools.

``FLIGHT_DELAY_DATA_DIR`` chooses the folder; the project's own ``data/`` is the embedded default.
``FLIGHT_DELAY_PROFILE`` (``local``, the default, ``aws`` or ``k8s``) chooses where the shared
state lives: ``aws`` and ``k8s`` keep tables, feature files, the Feast registry and model versions
in S3 (``flight_delay.object_store``), and the data folder holds only local caches.
``FLIGHT_DELAY_DATABASE_URL`` (``postgresql://user:password@host:port/database``) moves the state
that several replicas of the service must share, the prediction log and the champion history, to
PostgreSQL; unset, they are files in the data folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal, get_args
from urllib.parse import urlparse

from flight_delay.object_store import S3Location

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR_ENV = "FLIGHT_DELAY_DATA_DIR"
DATABASE_URL_ENV = "FLIGHT_DELAY_DATABASE_URL"

Profile = Literal["local", "aws", "k8s"]
PROFILE_ENV: Final = "FLIGHT_DELAY_PROFILE"


def deployment_profile() -> Profile:
    """The profile ``FLIGHT_DELAY_PROFILE`` names, ``local`` when unset."""
    value = os.environ.get(PROFILE_ENV, "") or "local"
    if value not in get_args(Profile):
        raise ValueError(f"{PROFILE_ENV}={value!r} is no profile; expected one of {', '.join(get_args(Profile))}")
    return value  # type: ignore[return-value]


def data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``explicit``, else ``$FLIGHT_DELAY_DATA_DIR``, else the project's ``data/``; absolute."""
    return Path(explicit or os.environ.get(DATA_DIR_ENV) or PROJECT_ROOT / "data").resolve()


def database_url(explicit: str | None = None) -> str | None:
    """``explicit``, else ``$FLIGHT_DELAY_DATABASE_URL``, else None (the state stays in files)."""
    url = explicit or os.environ.get(DATABASE_URL_ENV) or None
    if url is not None and not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(
            f"{DATABASE_URL_ENV}: expected postgresql://user:password@host:port/database, got a value starting "
            f"{url.split('://')[0]!r}; unset it to keep the prediction log and champion history in files"
        )
    return url


@dataclass(frozen=True)
class DataLayout:
    """The folders and files under one data folder, and the shared database if there is one."""

    root: Path
    # The prediction log and the champion history, shared by replicas; None: files under root.
    # It holds a password: never in a repr.
    database_url: str | None = field(default=None, repr=False)
    # The aws and k8s profiles: where tables, feature files, the Feast registry and model versions
    # live (the data folder then holds caches only); None under the local profile.
    s3: S3Location | None = None

    @classmethod
    def resolve(cls, explicit: str | os.PathLike[str] | None = None) -> DataLayout:
        s3 = S3Location.from_env() if deployment_profile() != "local" else None
        return cls(data_dir(explicit), database_url(), s3)

    @property
    def lake(self) -> Path:
        """Pipeline tables (raw, validated, training set, prediction log copy)."""
        return self.root / "lake"

    @property
    def offline(self) -> Path:
        """The Feast offline store: one Parquet file per feature table and day."""
        return self.root / "offline"

    @property
    def feast_state(self) -> Path:
        """The Feast registry and the SQLite online store."""
        return self.root / "feast"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def bentoml_home(self) -> Path:
        """BentoML home: the model registry (``models/``), champion history and Bentos."""
        return self.root / "bentoml"

    @property
    def prediction_log(self) -> Path:
        """The service's prediction and feedback log (with a database URL: where its spill files
        go, beside a log that is in the database)."""
        return self.root / "prediction_log" / "predictions.db"

    @property
    def prediction_log_location(self) -> str | Path:
        """Where the prediction log is read: the database URL, else :attr:`prediction_log`."""
        return self.database_url or self.prediction_log


def redact(url: str) -> str:
    """``url`` (a store's or a database's) with its password replaced, for logs and error messages."""
    parsed = urlparse(url)
    if not parsed.password:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()
