"""The online store brought forward step by step through data time holds, at each instant, what the
pipeline's own materialization to that instant holds: the replay and drift scenarios serve the
state a live deployment would have served."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from features import BATCH_TABLES, STREAM_TABLES, definitions
from features.feeder import OnlineFeeder
from features.store import build_store
from flight_delay.paths import PROJECT_ROOT
from tests.support.deployments import AS_OF, DAYS, Deployment


def online_rows(db: Path) -> dict[str, set[tuple]]:
    """Every online row of every feature table: (entity key, feature, value, event time)."""
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {
            t: set(conn.execute(f'SELECT entity_key, feature_name, value, event_ts FROM "{t}"'))
            for t in tables
            if any(t.endswith(name) for name in (*BATCH_TABLES, *STREAM_TABLES))
        }


@pytest.fixture()
def empty_store(serving_deployment: Deployment, tmp_path: Path):
    """The deployment's Feast registry with an empty online store of its own."""
    state = tmp_path / "feast"
    shutil.copytree(serving_deployment.layout.feast_state, state)
    (state / "online.db").unlink()
    store = build_store(PROJECT_ROOT, state)
    store.apply(definitions(str(serving_deployment.layout.offline)))
    return store, state / "online.db"


def test_stepping_to_an_instant_equals_the_materialization_to_it(serving_deployment: Deployment, empty_store):
    store, db = empty_store
    feeder = OnlineFeeder.from_offline(store, serving_deployment.layout.offline, *DAYS)
    steps = [pd.Timestamp(f"{DAYS[0]}T06:00", tz=AS_OF.tz) + pd.Timedelta(hours=h) for h in range(0, 120, 7)]
    for at in [*steps, AS_OF]:
        feeder.advance(at)
    expected = online_rows(serving_deployment.layout.feast_state / "online.db")
    got = online_rows(db)
    assert set(got) == set(expected) and len(expected) == len(BATCH_TABLES) + len(STREAM_TABLES)
    for table, rows in expected.items():
        assert got[table] == rows, f"{table}: {len(got[table] ^ rows)} rows differ"


def test_an_earlier_instant_holds_earlier_values_and_time_does_not_go_back(serving_deployment: Deployment, empty_store):
    store, db = empty_store
    feeder = OnlineFeeder.from_offline(store, serving_deployment.layout.offline, *DAYS)
    feeder.advance(AS_OF - pd.Timedelta(hours=6))
    earlier = online_rows(db)
    expected = online_rows(serving_deployment.layout.feast_state / "online.db")
    weather = next(t for t in expected if t.endswith("origin_hourly_weather"))
    assert earlier[weather] != expected[weather]
    stamps = [r[3] for r in earlier[weather]]
    latest = pd.to_datetime(max(stamps), unit="s", utc=True) if isinstance(stamps[0], int | float) else None
    latest = latest if latest is not None else pd.Timestamp(max(stamps), tz="UTC")
    assert latest <= AS_OF - pd.Timedelta(hours=6), "a value stamped after the instant reached the store"
    with pytest.raises(ValueError, match="cannot go back"):
        feeder.advance(AS_OF - pd.Timedelta(hours=7))
