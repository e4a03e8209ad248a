"""The aws profile end to end, every service real and on loopback: SeaweedFS as S3, a
``redis-server`` as the online store, PostgreSQL for the prediction log and the champion history.

The asset graph materializes a small window into the bucket, trains and registers two models
(their versions uploaded to S3, their digests recorded in PostgreSQL), and two ``bentoml serve``
replicas, each with an empty data folder of its own as on two machines, download, verify and
serve them. Under load on both, a promotion and then a rollback recorded in the shared history
reach both replicas within ``FOLLOW_SECONDS``, and no request fails; feedback sent to one replica
finds the prediction the other made; two promotions racing from the same champion cannot both win.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from flight_delay.model import MODEL_NAME
from flight_delay.object_store import S3Location
from flight_delay.registry import ConflictError, ModelRegistry
from tests.support.deployments import DAYS, ONLINE_AS_OF, SERVE_DAY, Deployment, flight_requests, run_ok
from tests.support.processes import race
from tests.support.servers import RedisServer, ServiceProcess
from tests.support.source import slice_days

pytestmark = pytest.mark.timeout(900)

# A replica follows a decision within its refresh interval plus the download and check of a
# version it has not served before; REFRESH_SECONDS is the replicas' FLIGHT_DELAY_REFRESH_SECONDS.
REFRESH_SECONDS = 0.5
FOLLOW_SECONDS = 10.0


@pytest.fixture()
def aws_env(s3_env: str, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp_path / "redis").mkdir()
    redis = RedisServer(tmp_path / "redis").start()
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "aws")
    monkeypatch.setenv("FLIGHT_DELAY_ONLINE_STORE", redis.url)
    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", postgres_url)
    try:
        yield {"redis": redis.url, "database": postgres_url, "s3": S3Location.from_env()}
    finally:
        redis.stop()


def _registry(home: Path, env: dict[str, Any]) -> ModelRegistry:
    return ModelRegistry(home, env["database"], s3=env["s3"])


class Load:
    """Predictions sent in turn to every replica until stopped; each answer's model version kept."""

    def __init__(self, replicas: list[ServiceProcess], bodies: list[dict[str, Any]]) -> None:
        self.replicas = replicas
        self.bodies = bodies
        self.failures: list[str] = []
        self.sent = 0
        self.latest: dict[str, str] = {}  # replica name → the model version of its last answer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        clients = {r.name: r.client(timeout=10) for r in self.replicas}
        i = 0
        while not self._stop.is_set():
            for replica in self.replicas:
                body = self.bodies[i % len(self.bodies)]
                i += 1
                try:
                    response = clients[replica.name].post("/predict", json={"flight": body})
                except httpx.HTTPError as exc:
                    self.failures.append(f"{replica.name}: {exc!r}")
                    continue
                self.sent += 1
                if response.status_code != 200:
                    self.failures.append(f"{replica.name}: {response.status_code} {response.text[:200]}")
                    continue
                self.latest[replica.name] = response.json()["model_version"]
            time.sleep(0.01)

    def wait_for(self, version: str, timeout: float) -> float:
        """Seconds until every replica's latest answer came from ``version``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if all(self.latest.get(r.name) == version for r in self.replicas):
                return time.monotonic() - start
            time.sleep(0.05)
        pytest.fail(f"after {timeout:.0f} s the replicas answer with {self.latest}, not {version}")


def _promoting(
    home: str, database: str, bucket: str, prefix: str, tag: str, champion: str, barrier: Any, results: Any
) -> None:
    registry = ModelRegistry(home, database, s3=S3Location(bucket, prefix))
    barrier.wait()
    try:
        registry.promote(MODEL_NAME, tag, "race", expected_champion=champion)
        results.put("won")
    except ConflictError:
        results.put("lost")


def test_the_aws_profile_serves_two_replicas_that_follow_every_decision(
    aws_env, tmp_path, source_dir, real_flights, monkeypatch
):
    import dagster as dg

    from tests.support.graph import DAILY, REFERENCE, TRAINING, Graph

    # The pipeline: its data folder holds only caches; the tables, features and models go to S3.
    pipeline_dir = tmp_path / "pipeline"
    graph = Graph(pipeline_dir, source_dir, dg.DagsterInstance.ephemeral())
    run_ok(graph, REFERENCE)
    run_ok(graph, DAILY, DAYS, run_config=ONLINE_AS_OF)
    run_ok(graph, TRAINING, run_config=graph.training_config("2013-01-04", "2013-01-05", "2013-01-06"))
    pipeline_registry = _registry(pipeline_dir / "bentoml", aws_env)
    champion = pipeline_registry.champion(MODEL_NAME)
    assert champion, "the training run promoted no champion"
    candidate_run = graph.run(
        ["delay_model"],
        run_config={"ops": {"delay_model": {"config": {"max_epochs": 1, "hidden_units": [8], "seed": 7}}}},
    )
    assert candidate_run.success
    (candidate,) = set(pipeline_registry.list(MODEL_NAME)) - {champion}
    location = aws_env["s3"]
    keys = {o["Key"] for o in _objects(location)}
    assert any(k.startswith(location.key("lake") + "/") for k in keys), sorted(keys)[:20]
    assert any(k.startswith(location.key("offline") + "/") for k in keys), sorted(keys)[:20]
    assert any(k.startswith(location.key("models", MODEL_NAME) + "/") for k in keys), sorted(keys)[:20]
    assert not list(pipeline_dir.glob("lake/**/*.parquet")) and not list(pipeline_dir.glob("offline/**/*.parquet"))

    # Two replicas, each with an empty data folder: nothing local is shared.
    replicas = [
        ServiceProcess(
            name,
            Deployment(tmp_path / name, champion, online_store=aws_env["redis"]),
            tmp_path,
            profile="aws",
            s3_bucket=location.bucket,
            s3_prefix=location.prefix,
            database_url=aws_env["database"],
            refresh_seconds=str(REFRESH_SECONDS),
        )
        for name in ("replica-a", "replica-b")
    ]
    for replica in replicas:
        replica.start()
    try:
        for replica in replicas:
            replica.wait_ready()
        flights = slice_days(real_flights, (SERVE_DAY, SERVE_DAY))
        bodies = [r.body for r in flight_requests(flights)][:50]
        assert bodies

        with Load(replicas, bodies) as load:
            load.wait_for(champion, FOLLOW_SECONDS)
            pipeline_registry.promote(MODEL_NAME, candidate, "aws end to end: promote", expected_champion=champion)
            promoted_in = load.wait_for(candidate, FOLLOW_SECONDS)
            pipeline_registry.rollback(MODEL_NAME, "aws end to end: roll back", expected_champion=candidate)
            rolled_back_in = load.wait_for(champion, FOLLOW_SECONDS)
            time.sleep(1.0)
        print(f"promotion followed in {promoted_in:.2f} s, rollback in {rolled_back_in:.2f} s; {load.sent} requests")
        assert load.sent > 50
        assert load.failures == []

        # Feedback to replica b finds the prediction replica a made.
        with replicas[0].client() as a, replicas[1].client() as b:
            made = a.post("/predict", json={"flight": bodies[0]})
            assert made.status_code == 200, made.text
            request_id = made.json()["request_id"]
            found = b.post("/feedback", json={"feedback": {"request_id": request_id, "departure_delay_minutes": 42.0}})
            assert found.status_code == 200, found.text
            assert found.json()["request_id"] == request_id
    finally:
        for replica in replicas:
            replica.stop()

    # Two promotions racing from the same champion: one wins, one is refused.
    outcomes = race(
        _promoting,
        [
            (str(tmp_path / f"racer-{i}"), aws_env["database"], location.bucket, location.prefix, candidate, champion)
            for i in range(2)
        ],
    )
    assert Counter(outcomes) == Counter({"won": 1, "lost": 1}), outcomes
    assert pipeline_registry.champion(MODEL_NAME) == pipeline_registry.canonical(MODEL_NAME, candidate)


def _objects(location: S3Location) -> list[dict[str, Any]]:
    from flight_delay.object_store import s3_client

    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=location.prefix)
    return [o for page in pages for o in page.get("Contents", [])]
