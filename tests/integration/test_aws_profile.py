"""The aws profile end to end on loopback servers: SeaweedFS for S3, a real redis-server for the
online store, PostgreSQL for the shared state. Three real days go through ingestion, validation,
the feature tables, the Feast registry and the online store, then the training set and the model
artifact; everything the pipeline shares lands in the bucket, nothing in the data folder's lake or
offline store, and the service's way of building its Feast store reads the features back.

Model registration itself (BentoML's store) is not checked here: moving it to S3 is separate work.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from features import BATCH_TABLES, STREAM_TABLES
from flight_delay.paths import DataLayout
from pipeline.resources import S3TableStore
from tests.support.graph import DAILY, REFERENCE, Graph
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY
from tests.support.servers import RedisServer

DAYS = ("2013-01-01", "2013-01-03")
PREFIX = "flight-delay"


@dataclass
class AwsRun:
    env: dict[str, str]
    bucket: str
    data_dir: Path
    graph: Graph
    keys: set[str]
    s3_client: object

    def key(self, *parts: str) -> str:
        return "/".join((PREFIX, *parts))

    def lake(self) -> S3TableStore:
        """The lake as the pipeline's resource reads it (whose settings are EnvVars, resolved in runs only)."""
        return S3TableStore(s3=S3Resource(), bucket=self.bucket, prefix=self.key("lake"))


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def aws_run(tmp_path_factory, source_dir, s3_server, postgres_server, redis_url) -> Iterator[AwsRun]:
    data_dir = tmp_path_factory.mktemp("aws") / "data"
    bucket = s3_server.create_bucket()
    env = {
        "FLIGHT_DELAY_PROFILE": "aws",
        "FLIGHT_DELAY_DATA_DIR": str(data_dir),
        "FLIGHT_DELAY_S3_BUCKET": bucket,
        "FLIGHT_DELAY_S3_PREFIX": PREFIX,
        "FLIGHT_DELAY_ONLINE_STORE": redis_url,
        "FLIGHT_DELAY_DATABASE_URL": postgres_server.create_database(),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FEAST_S3_ENDPOINT_URL", raising=False)  # the registry finds the endpoint as boto3 does
        for name, value in env.items():
            mp.setenv(name, value)
        graph = Graph(data_dir, source_dir, dg.DagsterInstance.ephemeral())
        for selection, days in ((REFERENCE, None), (DAILY, DAYS)):
            result = graph.run(selection, days)
            assert result.success, [e for e in result.all_events if e.is_failure]
        config = graph.training_config("2013-01-02", "2013-01-03", "2013-01-03", epochs=1)
        config["ops"]["training_set"]["config"]["train_start"] = "2013-01-01"
        result = graph.run(["training_set", "delay_model"], run_config=config)
        assert result.success, [e for e in result.all_events if e.is_failure]
    client = s3_server.client()
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = {o["Key"] for page in pages for o in page.get("Contents", [])}
    yield AwsRun(env, bucket, data_dir, graph, keys, client)


@pytest.fixture()
def aws_env(aws_run: AwsRun, monkeypatch: pytest.MonkeyPatch) -> AwsRun:
    for name, value in aws_run.env.items():
        monkeypatch.setenv(name, value)
    return aws_run


def test_the_definitions_use_the_s3_stores(aws_run: AwsRun):
    resources = aws_run.graph.defs.resources
    assert type(resources["lake"]).__name__ == "S3TableStore"
    assert type(resources["offline_tables"]).__name__ == "S3TableStore"
    assert type(resources["artifact_io_manager"]).__name__ == "S3PickleIOManager"
    assert resources["feature_store"].offline_root == f"s3://{aws_run.bucket}/{PREFIX}/offline"


def test_tables_offline_files_artifacts_and_registry_are_in_the_bucket(aws_run: AwsRun):
    days = ["2013-01-01", "2013-01-02", "2013-01-03"]
    keys = aws_run.keys
    for table in ("raw_flights", "raw_weather", "departures"):
        assert {aws_run.key("lake", table, f"{d}.parquet") for d in days} <= keys, table
    for table in ("raw_airlines", "raw_airports", "raw_planes"):
        assert aws_run.key("lake", table, f"{table}.parquet") in keys
    assert aws_run.key("lake", "training_set", "training_set.parquet") in keys
    for table in (*BATCH_TABLES, *STREAM_TABLES):
        if table != "aircraft_profile":
            assert {aws_run.key("offline", table, f"{d}.parquet") for d in days} <= keys, table
    assert aws_run.key("offline", "aircraft_profile", "aircraft_profile.parquet") in keys
    assert aws_run.key("feast", "registry.pb") in keys
    artifact = aws_run.s3_client.get_object(Bucket=aws_run.bucket, Key=aws_run.key("artifacts", "delay_model"))
    model = pickle.loads(artifact["Body"].read())
    assert {"tag", "metrics", "baseline_metrics"} <= set(model)


def test_nothing_is_written_to_the_local_lake_offline_or_artifacts(aws_run: AwsRun):
    data_dir = aws_run.data_dir
    for folder in ("lake", "offline", "artifacts"):
        assert not (data_dir / folder).exists(), f"{folder} was written locally"
    assert not list(data_dir.rglob("*.parquet")) if data_dir.exists() else []
    assert not (data_dir / "feast" / "registry.db").exists()
    assert not (data_dir / "feast" / "online.db").exists()


def test_the_training_set_comes_from_the_s3_offline_store(aws_env: AwsRun):
    frame = aws_env.lake().read("training_set")
    assert len(frame) > 1000
    assert set(frame["split"]) == {"train", "evaluation"}
    # The point-in-time join found values in the S3 offline files.
    assert frame["last_dep_delay"].notna().mean() > 0.3
    assert frame["temp"].notna().mean() > 0.9


def test_the_service_store_reads_online_features_from_redis_and_the_s3_registry(aws_env: AwsRun):
    import redis

    from features.store import build_store
    from serving.settings import ServingSettings

    settings = ServingSettings.from_env()
    assert settings.layout.s3 is not None and settings.layout.root == aws_env.data_dir
    # As serving/service.py builds it.
    store = build_store(settings.repo_path, settings.layout.feast_state, settings.online_store_url, settings.layout.s3)
    assert store.config.registry.path == f"s3://{aws_env.bucket}/{PREFIX}/feast/registry.pb"
    departures = aws_env.lake().read("departures", ["2013-01-03"])
    tails = departures["tailnum"].dropna().drop_duplicates().head(20).tolist()
    got = store.get_online_features(
        features=["aircraft_last_departure:last_dep_delay", "origin_hourly_weather:temp"],
        entity_rows=[{"tailnum": t, "origin": "EWR"} for t in tails],
    ).to_df()
    assert got["last_dep_delay"].notna().sum() >= len(tails) // 2
    assert got["temp"].notna().all()
    assert redis.Redis.from_url(aws_env.env["FLIGHT_DELAY_ONLINE_STORE"]).dbsize() > 100


def test_the_aws_profile_without_a_database_url_refuses_to_load(aws_env: AwsRun, monkeypatch: pytest.MonkeyPatch):
    from pipeline.definitions import build_definitions

    monkeypatch.delenv("FLIGHT_DELAY_DATABASE_URL")
    with pytest.raises(ValueError) as raised:
        build_definitions()
    message = str(raised.value)
    assert "FLIGHT_DELAY_PROFILE=aws" in message and "FLIGHT_DELAY_DATABASE_URL" in message
    assert "prediction log and champion history" in message
    assert "FLIGHT_DELAY_ONLINE_STORE" not in message  # only what is missing
    monkeypatch.delenv("FLIGHT_DELAY_ONLINE_STORE")
    with pytest.raises(
        ValueError, match="(?s)FLIGHT_DELAY_ONLINE_STORE: the Redis online store.*FLIGHT_DELAY_DATABASE_URL"
    ):
        build_definitions()


def test_a_missing_day_in_s3_is_named(aws_env: AwsRun):
    with pytest.raises(
        FileNotFoundError, match=r"table departures lacks 1 of the 2 days asked for \(first: 2013-01-04\)"
    ):
        aws_env.lake().read("departures", ["2013-01-03", "2013-01-04"])


def test_the_local_profile_is_unchanged(source_dir, tmp_path: Path):
    defs = Graph(tmp_path / "data", source_dir, dg.DagsterInstance.ephemeral()).defs
    assert type(defs.resources["lake"]).__name__ == "LocalTableStore"
    assert isinstance(defs.resources["artifact_io_manager"], dg.FilesystemIOManager)
    assert DataLayout.resolve(tmp_path).s3 is None
