"""The aws profile's storage against a real S3-compatible server (SeaweedFS): the pipeline's table
store, and Feast's offline store reading ``s3://`` sources the way it reads local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dagster_aws.s3 import S3Resource

import features
from features.store import build_store
from flight_delay.feature_tables import AIRCRAFT_LAST_DEPARTURE_COLUMNS, WEATHER_COLUMNS
from flight_delay.object_store import S3Location
from flight_delay.paths import PROJECT_ROOT
from pipeline.resources import LocalTableStore, S3TableStore


def _frame(day: str, n: int = 5) -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC")
    return pd.DataFrame(
        {
            "tailnum": [f"N{i}" for i in range(n)],
            "event_timestamp": [start + pd.Timedelta(hours=i) for i in range(n)],
            "value": np.arange(n, dtype=float),
            "day": day,
        }
    )


@pytest.fixture()
def s3_store(s3_env: str, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> S3TableStore:
    monkeypatch.chdir(tmp_path)  # anything written to a relative local path would land here
    location = S3Location.parse(s3_env)
    return S3TableStore(s3=S3Resource(), bucket=location.bucket, prefix=location.key("lake"))


def _keys(s3_server, bucket: str) -> set[str]:
    return {o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}


def test_s3_table_store_round_trips_by_day_and_whole(s3_store: S3TableStore, s3_server, tmp_path: Path):
    days = ["2013-01-01", "2013-01-02"]
    for day in days:
        url = s3_store.write("departures", _frame(day), day)
        assert url == f"s3://{s3_store.bucket}/flight-delay/lake/departures/{day}.parquet"
    s3_store.write("departures", _frame("2013-01-03").iloc[:0], "2013-01-03")  # an empty day
    whole = _frame("2013-02-01", 3)
    s3_store.write("model_monitoring", whole)

    got = s3_store.read("departures", [*days, "2013-01-03"])
    expected = pd.concat([_frame(d) for d in days], ignore_index=True)
    pd.testing.assert_frame_equal(got, expected)
    pd.testing.assert_frame_equal(s3_store.read("model_monitoring"), whole)
    assert _keys(s3_server, s3_store.bucket) == {
        "flight-delay/lake/departures/2013-01-01.parquet",
        "flight-delay/lake/departures/2013-01-02.parquet",
        "flight-delay/lake/departures/2013-01-03.parquet",
        "flight-delay/lake/model_monitoring/model_monitoring.parquet",
    }
    assert list(tmp_path.iterdir()) == [], "the S3 store wrote local files"


def test_s3_table_store_reads_the_same_frames_as_the_local_store(s3_store: S3TableStore, tmp_path: Path):
    local = LocalTableStore(root=str(tmp_path.parent / f"{tmp_path.name}-local"))
    for store in (local, s3_store):
        for day in ("2013-01-01", "2013-01-02"):
            store.write("t", _frame(day), day)
    pd.testing.assert_frame_equal(s3_store.read("t", ["2013-01-02"]), local.read("t", ["2013-01-02"]))


def test_s3_table_store_names_what_is_missing(s3_store: S3TableStore):
    s3_store.write("departures", _frame("2013-01-01"), "2013-01-01")
    with pytest.raises(
        FileNotFoundError, match=r"table departures lacks 2 of the 3 days asked for \(first: 2013-01-02\)"
    ):
        s3_store.read("departures", ["2013-01-01", "2013-01-02", "2013-01-03"])
    with pytest.raises(
        FileNotFoundError, match=r"table training_set has not been materialized: s3://.*/lake/training_set/"
    ):
        s3_store.read("training_set")
    # A folder of days is not the whole table.
    with pytest.raises(FileNotFoundError, match="table departures has not been materialized"):
        s3_store.read("departures")


# -- Feast's offline store over s3:// sources ---------------------------------------------------
def _aircraft(day: str, rng: np.random.Generator) -> pd.DataFrame:
    start = pd.Timestamp(day, tz="UTC")
    n = 40
    return pd.DataFrame(
        {
            "tailnum": [f"N{i % 8}" for i in range(n)],
            "event_timestamp": [start + pd.Timedelta(minutes=35 * i) for i in range(n)],
            "last_dep_delay": rng.normal(10, 20, n),
            "last_dep_unix": rng.uniform(0, 1e9, n),
            "flight_date": day,
        }
    )


def _weather(day: str, rng: np.random.Generator) -> pd.DataFrame:
    hours = pd.date_range(pd.Timestamp(day, tz="UTC"), periods=24, freq="h")
    frames = []
    for origin in ("EWR", "JFK", "LGA"):
        frame = pd.DataFrame({"origin": origin, "event_timestamp": hours})
        for column in WEATHER_COLUMNS:
            frame[column] = rng.normal(0, 1, len(hours))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _historical(store, entity: pd.DataFrame, refs: list[str]) -> pd.DataFrame:
    got = store.get_historical_features(entity, refs).to_df()
    return got.sort_values(["tailnum", "event_timestamp"], kind="stable").reset_index(drop=True)


def test_offline_store_reads_s3_sources_as_it_reads_local_files(s3_env: str, s3_server, tmp_path: Path):
    """The same Parquet files, local and in the bucket: get_historical_features answers the same
    frame, through the registry on S3 and the pyarrow reader (no DuckDB httpfs)."""
    rng = np.random.default_rng(7)
    location = S3Location.parse(s3_env)
    client = s3_server.client()
    local_root = tmp_path / "offline"
    for day in ("2013-01-01", "2013-01-02", "2013-01-03"):
        for table, frame in (
            ("aircraft_last_departure", _aircraft(day, rng)),
            ("origin_hourly_weather", _weather(day, rng)),
        ):
            folder = local_root / table
            folder.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(folder / f"{day}.parquet", index=False)
            key = location.key("offline", table, f"{day}.parquet")
            client.put_object(Bucket=location.bucket, Key=key, Body=(folder / f"{day}.parquet").read_bytes())

    local = build_store(PROJECT_ROOT, tmp_path / "feast-local")
    local.apply(features.definitions(str(local_root)))
    remote = build_store(PROJECT_ROOT, tmp_path / "feast-s3", s3=location)
    assert type(remote._get_provider().offline_store).__name__ == "S3DuckDBOfflineStore"
    remote.apply(features.definitions(location.url("offline")))
    assert location.key("feast", "registry.pb") in _keys(s3_server, location.bucket)
    assert not (tmp_path / "feast-s3" / "registry.db").exists()

    entity = pd.DataFrame(
        {
            "tailnum": [f"N{i % 9}" for i in range(60)],  # N8 is unknown
            "origin": [("EWR", "JFK", "LGA")[i % 3] for i in range(60)],
            "event_timestamp": [
                pd.Timestamp("2013-01-01 06:00", tz="UTC") + pd.Timedelta(minutes=61 * i) for i in range(60)
            ],
        }
    )
    refs = [
        *(f"aircraft_last_departure:{c}" for c in AIRCRAFT_LAST_DEPARTURE_COLUMNS),
        *(f"origin_hourly_weather:{c}" for c in WEATHER_COLUMNS[:3]),
    ]
    expected = _historical(local, entity, refs)
    got = _historical(remote, entity, refs)
    assert expected["last_dep_delay"].notna().sum() > 30 and expected[WEATHER_COLUMNS[0]].notna().sum() > 30
    pd.testing.assert_frame_equal(got, expected)

    # A store built afresh (as the service builds it) finds the views in the S3 registry.
    again = build_store(PROJECT_ROOT, tmp_path / "feast-other", s3=location)
    assert {v.name for v in again.list_feature_views()} >= {"aircraft_last_departure", "origin_hourly_weather"}


def test_a_glob_with_no_objects_is_an_error(s3_env: str):
    from features.offline_stores import read_s3_parquet

    with pytest.raises(FileNotFoundError, match="no files match"):
        read_s3_parquet(S3Location.parse(s3_env).url("offline", "nothing", "*.parquet"))


def test_repo_config_under_s3_puts_the_registry_in_the_bucket_and_reads_sources_there(tmp_path: Path):
    from features.store import repo_config

    location = S3Location("a-bucket", "some/prefix")
    config = repo_config(PROJECT_ROOT, tmp_path, "redis://127.0.0.1:6379/0", location)
    assert config.registry.path == "s3://a-bucket/some/prefix/feast/registry.pb"
    assert config.offline_store.type == "features.offline_stores.S3DuckDBOfflineStore"
    assert config.online_store.type == "features.online_stores.MonotoneRedisOnlineStore"
    local = repo_config(PROJECT_ROOT, tmp_path)
    assert local.registry.path == str(tmp_path.resolve() / "registry.db")
    assert local.offline_store.type == "duckdb"
