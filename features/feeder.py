"""An online store brought forward through data time, step by step: what the streaming jobs (the
push sources) and the batch materializations do to the live store as the hours pass, for a
replay of history or a scenario (``bench.drift_scenario``).

Each :meth:`OnlineFeeder.advance` writes, per feature table, the latest row of each entity stamped
in ``(previous instant, instant]``: the push sources of the streamed tables, Feast's
``write_to_online_store`` for the batch tables (what ``materialize`` writes for that interval).
The project's online stores are monotone in event time, so the store holds at every step the state
a live deployment would have held at that instant, and the service masks nothing it should serve.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from features import BATCH_TABLES, STREAM_TABLES, push_source_name


def read_offline(offline_root: Path, table: str, first_day: str | None = None, last_day: str | None = None):
    """A feature table's rows from its daily Parquet files between two days (inclusive), or its one
    file for an unpartitioned table (the aircraft profiles)."""
    folder = offline_root / table
    single = folder / f"{table}.parquet"
    if single.exists():
        return pd.read_parquet(single)
    files = sorted(
        p
        for p in folder.glob("*.parquet")
        if (first_day is None or p.stem >= first_day) and (last_day is None or p.stem <= last_day)
    )
    if not files:
        raise FileNotFoundError(
            f"feature table {table} has no daily file between {first_day} and {last_day} in {folder}"
        )
    return pd.concat([pd.read_parquet(p) for p in files], ignore_index=True)


class OnlineFeeder:
    """Writes the feature tables (``{table: rows with event_timestamp}``) into ``store`` (a Feast
    ``FeatureStore``) as data time advances."""

    def __init__(self, store: Any, tables: dict[str, pd.DataFrame]) -> None:
        unknown = set(tables) - set(BATCH_TABLES) - set(STREAM_TABLES)
        if unknown:
            raise ValueError(f"not feature tables of the repo: {sorted(unknown)}")
        self.store = store
        self.tables = {
            t: f.sort_values("event_timestamp", kind="stable").reset_index(drop=True) for t, f in tables.items()
        }
        self.keys = {t: list(store.get_feature_view(t).join_keys) for t in self.tables}
        self.instant: pd.Timestamp | None = None

    @classmethod
    def from_offline(cls, store: Any, offline_root: Path, first_day: str, last_day: str) -> OnlineFeeder:
        """Every feature table of the repo between two days (a view with a TTL needs no earlier day
        than its TTL before the first instant: choose ``first_day`` accordingly)."""
        tables = {t: read_offline(offline_root, t, first_day, last_day) for t in (*BATCH_TABLES, *STREAM_TABLES)}
        return cls(store, tables)

    def advance(self, to: pd.Timestamp) -> dict[str, int]:
        """Bring the store to ``to`` (values stamped at ``to`` included, as in the point-in-time
        join); returns the rows written per table. Instants must not go back."""
        to = to.tz_convert("UTC") if to.tzinfo else to.tz_localize("UTC")
        if self.instant is not None and to < self.instant:
            raise ValueError(f"the feeder is at {self.instant}; it cannot go back to {to}")
        from feast.data_source import PushMode

        written: dict[str, int] = {}
        for table, frame in self.tables.items():
            stamps = frame["event_timestamp"]  # sorted: the interval's rows are one slice
            first = 0 if self.instant is None else stamps.searchsorted(self.instant, side="right")
            rows = frame.iloc[first : stamps.searchsorted(to, side="right")]
            if rows.empty:
                continue
            latest = rows.groupby(self.keys[table], as_index=False, sort=False).tail(1)
            if table in STREAM_TABLES:
                self.store.push(push_source_name(table), latest, to=PushMode.ONLINE)
            else:
                self.store.write_to_online_store(table, df=latest)
            written[table] = len(latest)
        self.instant = to
        return written
