"""Model versions on S3 for the aws and k8s profiles: immutable archives that every replica
downloads, verifies and imports into its own local BentoML store before it serves them.

A version is one BentoML archive (``bentoml.models.export_model``) at
``<prefix>/models/<name>/<version>.bentomodel`` and one row of the PostgreSQL table
``model_versions`` (name, version, SHA-256, size, key, time). The row is the registration: a
version without one is not registered, whatever the bucket holds, and a reader trusts an object
only if its size and digest match the row. Neither is ever replaced: the row's primary key refuses
a second registration of a version, and the object is written only by the registration that holds
the (uncommitted) row, with ``If-None-Match: *``.

:class:`flight_delay.registry.ModelRegistry` uses this module when it is given an S3 location;
under the local profile it is not imported.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from flight_delay.log_database import SharedConnection, connect_postgres, redact
from flight_delay.object_store import S3Location, s3_client
from flight_delay.registry import STAGING_DIR

log = logging.getLogger(__name__)

ARCHIVE_SUFFIX = ".bentomodel"
_CHUNK = 1 << 20
_TABLE = """
CREATE TABLE IF NOT EXISTS model_versions (
    model_name TEXT NOT NULL,
    version TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    s3_key TEXT NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, version)
)
"""
_SCHEMA_LOCK = 7_286_433  # as champion_history: CREATE TABLE IF NOT EXISTS alone races in the catalog


class ModelIntegrityError(RuntimeError):
    """The object on S3 is not the archive that was registered (size or SHA-256 differ)."""


class AlreadyRegisteredError(ValueError):
    """A second registration of a version: versions are immutable."""


@dataclass(frozen=True)
class VersionRecord:
    model_name: str
    version: str
    sha256: str
    size_bytes: int
    s3_key: str
    registered_at: datetime | None = None

    @property
    def tag(self) -> str:
        return f"{self.model_name}:{self.version}"


def _digest(path: Path) -> tuple[str, int]:
    sha, size = hashlib.sha256(), 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            sha.update(chunk)
            size += len(chunk)
    return sha.hexdigest(), size


def _is_status(exc: Exception, *codes: str) -> bool:
    error = getattr(exc, "response", {}).get("Error", {})
    status = str(getattr(exc, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
    return error.get("Code") in codes or status in codes


class S3ModelVersions:
    """The versions in ``s3`` and the table ``model_versions`` of the database at ``database_url``."""

    def __init__(self, s3: S3Location, database_url: str) -> None:
        self.s3 = s3
        self.database_url = database_url  # holds a password: never logged
        self._client: Any = None
        self._connection = SharedConnection(database_url, _TABLE, _SCHEMA_LOCK)

    def __repr__(self) -> str:
        return f"S3ModelVersions({self.s3.url()!r}, {redact(self.database_url)!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()  # boto3 clients are thread-safe
        return self._client

    def key(self, name: str, version: str) -> str:
        return self.s3.key("models", name, f"{version}{ARCHIVE_SUFFIX}")

    # -- the table ----------------------------------------------------------------------------
    def record(self, name: str, version: str) -> VersionRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT model_name, version, sha256, size_bytes, s3_key, registered_at FROM model_versions "
                "WHERE model_name = %s AND version = %s",
                (name, version),
            ).fetchone()
        return VersionRecord(*row) if row else None

    def require(self, tag: Any) -> VersionRecord:
        """The row of ``tag`` (a BentoML Tag); LookupError if it is not registered."""
        record = self.record(tag.name, tag.version)
        if record is None:
            raise LookupError(
                f"model {tag} is not registered: model_versions of {redact(self.database_url)} has no such "
                f"version (the registered ones: ModelRegistry.list({tag.name!r}))"
            )
        return record

    def versions(self, name: str) -> list[str]:
        """Tags of every registered version of ``name``, oldest first."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT version FROM model_versions WHERE model_name = %s ORDER BY registered_at, version", (name,)
            ).fetchall()
        return [f"{name}:{version}" for (version,) in rows]

    def latest(self, name: str) -> str:
        versions = self.versions(name)
        if not versions:
            raise LookupError(f"model {name!r} has no registered version in model_versions ({self.s3})")
        return versions[-1]

    def stamp(self, name: str) -> tuple[int, ...]:
        """The number of registered versions of ``name``: one index lookup, for watchers."""
        with self._connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM model_versions WHERE model_name = %s", (name,)).fetchone()
        return (int(count),)

    # -- writing ------------------------------------------------------------------------------
    def publish(self, tag: Any, model_store: Any, scratch: Path) -> VersionRecord:
        """Export ``tag`` from ``model_store`` to one archive, upload it and register it.

        The row is inserted first, in a transaction held open over the upload: a second
        registration of the version waits on the primary key and then fails, so only the holder of
        the row ever writes the object. The upload also refuses to replace an object (a leftover of
        a registration cut short after its upload: the bucket is then repaired by hand)."""
        import bentoml

        name, version = tag.name, tag.version
        key = self.key(name, version)
        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            archive = Path(
                bentoml.models.export_model(
                    tag, str(Path(tmp) / f"{version}{ARCHIVE_SUFFIX}"), _model_store=model_store
                )
            )
            sha256, size = _digest(archive)
            record = VersionRecord(name, version, sha256, size, key)
            with connect_postgres(self.database_url) as conn, conn.transaction():
                try:
                    conn.execute(
                        "INSERT INTO model_versions (model_name, version, sha256, size_bytes, s3_key) "
                        "VALUES (%s, %s, %s, %s, %s)",
                        (name, version, sha256, size, key),
                    )
                except psycopg.errors.UniqueViolation as exc:
                    raise AlreadyRegisteredError(
                        f"model {tag} is already registered (model_versions); a version is immutable and is "
                        "never registered again"
                    ) from exc
                self._upload(archive, key, tag)
        log.info(
            "registered %s: %s (%d bytes, sha256 %s)", tag, self.s3.url("models", name, archive.name), size, sha256
        )
        return record

    def _upload(self, archive: Path, key: str, tag: Any) -> None:
        from botocore.exceptions import ClientError

        url = f"s3://{self.s3.bucket}/{key}"
        try:  # for servers that ignore If-None-Match; the row held above is the real guard
            self.client.head_object(Bucket=self.s3.bucket, Key=key)
        except ClientError as exc:
            if not _is_status(exc, "404", "NoSuchKey", "NotFound"):
                raise
        else:
            raise AlreadyRegisteredError(
                f"{url} exists but {tag} has no row in model_versions: the leftover of a registration cut "
                "short; it is never overwritten: delete it by hand after checking"
            )
        try:
            with open(archive, "rb") as fh:
                self.client.put_object(Bucket=self.s3.bucket, Key=key, Body=fh, IfNoneMatch="*")
        except ClientError as exc:
            if _is_status(exc, "PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                raise AlreadyRegisteredError(f"{url} appeared during the registration of {tag}: not replaced") from exc
            raise

    # -- reading ------------------------------------------------------------------------------
    def fetch(self, tag: Any, home: Path, present: Any) -> None:
        """Download ``tag``, verify it against its row and import it into ``home/models``.

        Under a lock file in ``home``, so that threads and processes of one replica fetch a version
        once; ``present()`` is asked again under it. The archive is imported into a staging store and
        moved in with one rename: a version is in the store complete or not at all."""
        import bentoml
        from bentoml._internal.models.model import ModelStore

        record = self.require(tag)
        staging = home / STAGING_DIR
        staging.mkdir(parents=True, exist_ok=True)
        with open(staging / f"fetch-{tag.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if present():
                    return
                with tempfile.TemporaryDirectory(dir=staging) as tmp:
                    archive = Path(tmp) / f"{tag.version}{ARCHIVE_SUFFIX}"
                    self._download(record, archive)
                    store = Path(tmp) / "store"
                    store.mkdir()
                    model = bentoml.models.import_model(str(archive), _model_store=ModelStore(str(store)))
                    if str(model.tag) != str(tag):
                        raise ModelIntegrityError(f"s3://{self.s3.bucket}/{record.s3_key} holds {model.tag}, not {tag}")
                    target = home / "models" / model.tag.path()
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.rename(store / model.tag.path(), target)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        log.info("fetched %s from s3://%s/%s (sha256 %s verified)", tag, self.s3.bucket, record.s3_key, record.sha256)

    def _download(self, record: VersionRecord, archive: Path) -> None:
        """``record``'s object into ``archive``; raises unless its size and SHA-256 are the row's."""
        url = f"s3://{self.s3.bucket}/{record.s3_key}"
        body = self.client.get_object(Bucket=self.s3.bucket, Key=record.s3_key)["Body"]
        sha, size = hashlib.sha256(), 0
        with open(archive, "wb") as fh:
            for chunk in body.iter_chunks(_CHUNK):
                sha.update(chunk)
                size += len(chunk)
                fh.write(chunk)
        actual = sha.hexdigest()
        if size != record.size_bytes or actual != record.sha256:
            raise ModelIntegrityError(
                f"{url} is not the archive registered as {record.tag}: expected sha256 {record.sha256} "
                f"({record.size_bytes} bytes), actual sha256 {actual} ({size} bytes); it is not served"
            )
