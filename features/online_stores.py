"""Feast's SQLite and Redis online stores, made monotone in event time and safe to read while
they are written.

Feast's own stores differ: SQLite upserts whatever comes (a re-run of an older day rewinds the
live store to older values), Redis skips a row whose event time equals the stored one (a
corrected re-run of a day is ignored). Both stores here apply one rule: a row replaces the stored
value of its entity when its event time is the same or later (the same time is a correction) and
never when it is earlier; within a batch, the latest row of an entity wins. The SQLite store also
opens its database in WAL mode with a busy timeout, so the service keeps reading while a
materialization writes, instead of failing with "database is locked".

Selected by ``feature_store.yaml`` (``type: features.online_stores.MonotoneSqliteOnlineStore``) and
by ``features.store.online_store_config`` for a Redis URL. Feast finds each store's config class by
its name plus ``Config``.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from feast import FeatureView, RepoConfig
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore, RedisOnlineStoreConfig, _versioned_fv_name
from feast.infra.online_stores.sqlite import SqliteOnlineStore, SqliteOnlineStoreConfig, _quote_id, _table_id
from feast.utils import make_tzaware

Row = tuple[Any, dict[str, Any], datetime, datetime | None]  # (entity key proto, values, event time, created)

SQLITE_TYPE = "features.online_stores.MonotoneSqliteOnlineStore"
REDIS_TYPE = "features.online_stores.MonotoneRedisOnlineStore"


def latest_rows(data: Sequence[Row], key_of: Callable[[Any], bytes], stored: dict[bytes, datetime]) -> list[Row]:
    """The rows of ``data`` that may be written: per entity, the latest of the batch (the last one
    on a tie), and only when it is not earlier than the stored event time (aware UTC datetimes)."""
    latest: dict[bytes, Row] = {}
    for row in data:
        key = key_of(row[0])
        current = latest.get(key)
        if current is None or make_tzaware(row[2]) >= make_tzaware(current[2]):
            latest[key] = row
    return [row for key, row in latest.items() if key not in stored or make_tzaware(row[2]) >= stored[key]]


def _as_utc(ts: Any) -> datetime:
    """An event time as SQLite gives it back: unix seconds (Feast's adapter), text or datetime."""
    if isinstance(ts, datetime):
        return make_tzaware(ts)
    if isinstance(ts, int | float):
        return datetime.fromtimestamp(ts, UTC)
    return make_tzaware(datetime.fromisoformat(str(ts)))


class MonotoneSqliteOnlineStoreConfig(SqliteOnlineStoreConfig):
    """The SQLite online store, WAL, with a busy timeout and monotone writes."""

    type: Literal["features.online_stores.MonotoneSqliteOnlineStore"] = SQLITE_TYPE  # type: ignore[assignment]
    busy_timeout_seconds: float = 10.0
    """How long a reader or writer waits for the other before "database is locked"."""


class MonotoneSqliteOnlineStore(SqliteOnlineStore):
    def _get_conn(self, config: RepoConfig) -> sqlite3.Connection:
        if not self._conn:
            timeout = getattr(config.online_store, "busy_timeout_seconds", 10.0)
            conn = sqlite3.connect(
                self._get_db_path(config),
                timeout=timeout,
                check_same_thread=False,
                detect_types=sqlite3.PARSE_DECLTYPES | sqlite3.PARSE_COLNAMES,
            )
            deadline = time.monotonic() + timeout
            while True:  # switching to WAL answers "locked" at once, whatever the busy timeout
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or time.monotonic() > deadline:
                        conn.close()
                        raise
                    time.sleep(0.01)
            self._conn = conn
        return self._conn

    def online_write_batch(
        self, config: RepoConfig, table: FeatureView, data: list[Row], progress: Callable[[int], Any] | None
    ) -> None:
        conn = self._get_conn(config)
        version = config.entity_key_serialization_version

        def key_of(entity_key: Any) -> bytes:
            return serialize_entity_key(entity_key, entity_key_serialization_version=version)

        name = _quote_id(_table_id(config.project, table, config.registry.enable_online_feature_view_versioning))
        # The read and the writes in one write transaction: no other writer can slip in between.
        conn.execute("BEGIN IMMEDIATE")
        try:
            keys = list({key_of(row[0]) for row in data})
            stored: dict[bytes, datetime] = {}
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                query = (
                    f"SELECT entity_key, MAX(event_ts) FROM {name} "
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))}) GROUP BY entity_key"
                )
                for key, ts in conn.execute(query, chunk):
                    stored[key] = _as_utc(ts)
            rows = latest_rows(data, key_of, stored)
        except BaseException:
            conn.rollback()
            raise
        # Feast's write commits the transaction opened above (``with conn``).
        super().online_write_batch(config, table, rows, None)
        if progress:
            progress(len(data))


class MonotoneRedisOnlineStoreConfig(RedisOnlineStoreConfig):
    """The Redis online store with monotone writes (corrections at the same event time apply)."""

    type: Literal["features.online_stores.MonotoneRedisOnlineStore"] = REDIS_TYPE  # type: ignore[assignment]


_REDIS_WRITE_LOCK = threading.Lock()


class MonotoneRedisOnlineStore(RedisOnlineStore):
    def online_write_batch(
        self, config: RepoConfig, table: FeatureView, data: list[Row], progress: Callable[[int], Any] | None
    ) -> None:
        from google.protobuf.timestamp_pb2 import Timestamp

        client = self._get_client(config.online_store)
        version = config.entity_key_serialization_version

        def key_of(entity_key: Any) -> bytes:
            return _redis_key(config.project, entity_key, entity_key_serialization_version=version)

        ts_key = f"_ts:{_versioned_fv_name(table, config)}"
        keys = list({key_of(row[0]) for row in data})
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hget(key, ts_key)
            previous = pipe.execute()
        stored: dict[bytes, datetime] = {}
        for key, raw in zip(keys, previous):
            if raw:
                ts = Timestamp()
                ts.ParseFromString(raw)
                stored[key] = make_tzaware(ts.ToDatetime())
        rows = latest_rows(data, key_of, stored)
        # Feast's write without its own timestamp check (which skips a correction at the same time):
        # the switch lives on the store's config object, so it is set around this write only.
        store_config = config.online_store
        with _REDIS_WRITE_LOCK:
            skip = store_config.skip_dedup
            store_config.skip_dedup = True
            try:
                super().online_write_batch(config, table, rows, None)
            finally:
                store_config.skip_dedup = skip
        if progress:
            progress(len(data))
