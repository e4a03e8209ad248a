"""Table storage: one Parquet file per table, or per table and day for daily partitioned ones."""

import io
import os
import tempfile
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource
from pydantic import Field

from flight_delay.data import local_day
from flight_delay.flights import LOCAL_TZ

# mkstemp creates files readable by their owner only; a published table is read by other users
# (a service, a notebook) as a file written the ordinary way would be.
PUBLISHED_MODE = 0o644


def partition_days(frame: pd.DataFrame, column: str) -> pd.Series:
    """The local day (``YYYY-MM-DD``) of each row, from ``column``: timestamps, dates as text, or
    ``"year/month/day"`` for the source's three integer columns."""
    if column == "year/month/day":
        return local_day(frame)
    values = frame[column]
    if pd.api.types.is_datetime64_any_dtype(values):
        return values.dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d")
    return values.astype(str)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TableStore(dg.ConfigurableResource, ABC):
    """Reads and writes tables, whole or by day."""

    @abstractmethod
    def write(self, table: str, frame: pd.DataFrame, day: str | None = None) -> str: ...

    @abstractmethod
    def read(self, table: str, days: list[str] | None = None) -> pd.DataFrame: ...


class LocalTableStore(TableStore):
    """Parquet files under a local folder: ``<root>/<table>/<day>.parquet`` per day, or
    ``<root>/<table>/<table>.parquet`` for a whole table."""

    root: str = Field(description="Folder holding the tables.")

    def _path(self, table: str, day: str | None) -> Path:
        # Unpartitioned tables get a folder too, so every table is read the same way (Feast
        # sources glob `<table>/*.parquet`).
        return Path(self.root) / table / f"{day or table}.parquet"

    def write(self, table: str, frame: pd.DataFrame, day: str | None = None) -> str:
        """Write atomically: readers (Feast's ``<table>/*.parquet`` glob, other runs) see the
        previous file or the whole new one, never half of one, even when runs write the same day
        at once; and the new file is on disk before its name is."""
        path = self._path(table, day)
        path.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per write (two runs may write the same day), in the same folder (so
        # that the rename is atomic), hidden and ending in .tmp (never matched by *.parquet).
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as file:
                os.fchmod(file.fileno(), PUBLISHED_MODE)
                frame.to_parquet(file, index=False)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)  # the rename itself survives a crash
        return str(path)

    def read(self, table: str, days: list[str] | None = None) -> pd.DataFrame:
        if days is None:
            path = self._path(table, None)
            if not path.exists():
                raise FileNotFoundError(f"table {table} has not been materialized: {path} is missing")
            return pd.read_parquet(path)
        missing = [d for d in days if not self._path(table, d).exists()]
        if missing:
            raise FileNotFoundError(
                f"table {table} lacks {len(missing)} of the {len(days)} days asked for "
                f"(first: {missing[0]}); materialize those partitions first"
            )
        frames = [pd.read_parquet(self._path(table, d)) for d in days]
        frames = [f for f in frames if not f.empty] or frames[:1]
        return pd.concat(frames, ignore_index=True)


class S3TableStore(TableStore):
    """Parquet objects in an S3 bucket, laid out as :class:`LocalTableStore` lays out files:
    ``<prefix>/<table>/<day>.parquet`` per day, ``<prefix>/<table>/<table>.parquet`` for a whole
    table. Endpoint and credentials are the ``S3Resource``'s (the standard AWS environment)."""

    s3: dg.ResourceDependency[S3Resource]
    bucket: str = Field(description="Bucket holding the tables.")
    prefix: str = Field(default="", description="Key prefix of the tables (no leading or trailing slash).")

    def _key(self, table: str, day: str | None) -> str:
        return "/".join(p for p in (self.prefix.strip("/"), table, f"{day or table}.parquet") if p)

    def _url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def write(self, table: str, frame: pd.DataFrame, day: str | None = None) -> str:
        """One PUT of the whole file: S3 replaces an object atomically, so readers (Feast's
        ``<table>/*.parquet`` glob, other runs) see the previous object or the new one."""
        key = self._key(table, day)
        body = io.BytesIO()
        frame.to_parquet(body, index=False)
        self.s3.get_client().put_object(Bucket=self.bucket, Key=key, Body=body.getvalue())
        return self._url(key)

    def _existing(self, client, table: str) -> set[str]:
        folder = self._key(table, "x").rsplit("/", 1)[0] + "/"
        keys: set[str] = set()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            keys.update(o["Key"] for o in page.get("Contents", []))
        return keys

    def _get(self, client, key: str) -> pd.DataFrame:
        body = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return pd.read_parquet(io.BytesIO(body))

    def read(self, table: str, days: list[str] | None = None) -> pd.DataFrame:
        client = self.s3.get_client()
        existing = self._existing(client, table)
        if days is None:
            key = self._key(table, None)
            if key not in existing:
                raise FileNotFoundError(f"table {table} has not been materialized: {self._url(key)} is missing")
            return self._get(client, key)
        missing = [d for d in days if self._key(table, d) not in existing]
        if missing:
            raise FileNotFoundError(
                f"table {table} lacks {len(missing)} of the {len(days)} days asked for "
                f"(first: {missing[0]}); materialize those partitions first"
            )
        # A year of days is a few hundred small GETs: several at once (boto3 clients are thread-safe).
        with ThreadPoolExecutor(max_workers=min(16, max(1, len(days)))) as pool:
            frames = list(pool.map(lambda d: self._get(client, self._key(table, d)), days))
        frames = [f for f in frames if not f.empty] or frames[:1]
        return pd.concat(frames, ignore_index=True)


class ParquetIOManager(dg.ConfigurableIOManager):
    """Asset values as Parquet through a :class:`TableStore`.

    A daily partitioned asset declares ``partition_column`` in its definition metadata; its frame
    may cover a range of days (one backfill run) and is written as one file per day, empty days
    included, so each partition is materialized or not as a whole.
    """

    store: dg.ResourceDependency[TableStore]

    def _table(self, context: dg.OutputContext | dg.InputContext) -> str:
        return "/".join(context.asset_key.path)

    def handle_output(self, context: dg.OutputContext, obj: pd.DataFrame) -> None:
        if not isinstance(obj, pd.DataFrame):
            raise TypeError(f"{context.asset_key.to_user_string()} returned {type(obj).__name__}; expected a DataFrame")
        table = self._table(context)
        if not context.has_asset_partitions:
            self.store.write(table, obj)
            return
        column = (context.definition_metadata or {}).get("partition_column")
        if column is None:
            raise ValueError(f"{table} is partitioned but declares no 'partition_column' metadata")
        keys = partition_days(obj, column)
        partitions = list(context.asset_partition_keys)
        stray = sorted(set(keys) - set(partitions))
        if stray:
            raise ValueError(f"{table}: rows for days outside the run's partitions: {stray[:5]}")
        for day in partitions:
            self.store.write(table, obj[keys == day], day)

    def load_input(self, context: dg.InputContext) -> pd.DataFrame:
        table = self._table(context)
        if not context.has_asset_partitions:
            return self.store.read(table)
        return self.store.read(table, list(context.asset_partition_keys))
