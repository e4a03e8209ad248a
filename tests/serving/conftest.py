"""Serving fixtures: one tiny real deployment, the service as a real ``bentoml serve`` process
(and in-process as an ASGI app), Redis as a second online store, and real flights to score.

The deployment is the Dagster graph on the six real days of ``tests.support.deployments.DAYS``;
every server of the session starts from it or from a copy of it. Each server runs in its own
process group and is stopped in teardown by stopping that group and whatever it spawned.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from tests.support.deployments import (
    DAYS,
    ONLINE_AS_OF,
    SERVE_DAY,
    Deployment,
    FlightRequest,
    flight_requests,
    run_ok,
)
from tests.support.servers import MAX_BATCH, RedisServer, ServiceProcess
from tests.support.source import slice_days


@pytest.fixture(scope="session")
def serving_deployment(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> Deployment:
    """ONE tiny real deployment (SQLite online store, one promoted model) for the session."""
    import dagster as dg

    from tests.support.graph import DAILY, REFERENCE, TRAINING, Graph

    data_dir = tmp_path_factory.mktemp("serving") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FLIGHT_DELAY_ONLINE_STORE", raising=False)
        graph = Graph(data_dir, source_dir, dg.DagsterInstance.ephemeral())
        run_ok(graph, REFERENCE)
        run_ok(graph, DAILY, DAYS, run_config=ONLINE_AS_OF)
        run_ok(graph, TRAINING, run_config=graph.training_config("2013-01-04", "2013-01-05", "2013-01-06"))
    champion = Deployment(data_dir, champion="").registry().champion("flight_delay")
    assert champion, "the training run promoted no champion"
    return Deployment(data_dir, champion)


@pytest.fixture(scope="session")
def serving_data_dir(serving_deployment: Deployment) -> Path:
    return serving_deployment.data_dir


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, throwaway redis-server; killed in teardown."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_deployment(
    tmp_path_factory: pytest.TempPathFactory, source_dir: Path, redis_url: str, serving_deployment: Deployment
) -> Deployment:
    """The same days with Redis as the online store: the definitions are built with
    FLIGHT_DELAY_ONLINE_STORE set, so online_features pushes and materializes into Redis. It serves
    the SQLite deployment's registry (same model), so both stores must give the same predictions."""
    import dagster as dg

    from tests.support.graph import DAILY, REFERENCE, Graph

    data_dir = tmp_path_factory.mktemp("serving_redis") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLIGHT_DELAY_ONLINE_STORE", redis_url)
        graph = Graph(data_dir, source_dir, dg.DagsterInstance.ephemeral())
        assert graph.resource("feature_store").online_store_url is not None
        run_ok(graph, REFERENCE)
        run_ok(graph, DAILY, DAYS, run_config=ONLINE_AS_OF)
    shutil.copytree(serving_deployment.layout.bentoml_home, data_dir / "bentoml")
    return Deployment(data_dir, serving_deployment.champion, online_store=redis_url)


@pytest.fixture(scope="session")
def server_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def serve(server_workdir: Path) -> Iterator[Any]:
    """Factory: ``serve((name, deployment, settings), ...)`` starts servers (all at once, then
    waits, so start-ups overlap) and stops every one of them at the end of the session."""
    started: list[ServiceProcess] = []

    def start(*specs: tuple[str, Deployment, dict[str, str]]) -> list[ServiceProcess]:
        servers = [ServiceProcess(name, dep, server_workdir, **settings) for name, dep, settings in specs]
        for s in servers:
            started.append(s.start())
        return [s.wait_ready() for s in servers]

    yield start
    for s in reversed(started):
        s.stop()


@pytest.fixture(scope="session")
def sqlite_server(serve: Any, serving_deployment: Deployment) -> ServiceProcess:
    """The service over the SQLite deployment, default settings but FLIGHT_DELAY_MAX_BATCH=50."""
    (server,) = serve(("sqlite", serving_deployment, {}))
    return server


@pytest.fixture(scope="session")
def redis_server(serve: Any, redis_deployment: Deployment) -> ServiceProcess:
    """The service over the Redis deployment, same settings."""
    (server,) = serve(("redis", redis_deployment, {}))
    return server


@pytest.fixture(scope="session", params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest) -> ServiceProcess:
    """The shared serving assertions run once per online store."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture()
def http(served: ServiceProcess) -> Iterator[httpx.Client]:
    with served.client() as client:
        yield client


@pytest.fixture(scope="session")
def inprocess_client(serving_deployment: Deployment) -> Iterator[httpx.Client]:
    """``FlightDelayService.to_asgi()`` behind Starlette's TestClient (an httpx.Client), whose
    context runs the ASGI lifespan: startup builds the service instance (its ``__init__``).

    One per test process: each ``to_asgi()`` registers BentoML's own request metrics in the
    global Prometheus registry, and a second app fails with "Duplicated timeseries"."""
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:  # settings are read once, in __init__, at startup
        for key in [k for k in os.environ if k.startswith("FLIGHT_DELAY_")]:
            mp.delenv(key)
        mp.setenv("FLIGHT_DELAY_DATA_DIR", str(serving_deployment.data_dir))
        mp.setenv("FLIGHT_DELAY_MAX_BATCH", str(MAX_BATCH))
        from serving.service import FlightDelayService

        client = TestClient(FlightDelayService.to_asgi(), base_url="http://inprocess", raise_server_exceptions=False)
        client.__enter__()
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


@pytest.fixture(scope="session")
def real_requests(real_flights: pd.DataFrame) -> list[FlightRequest]:
    """Every flight of SERVE_DAY after the online store's instant, one per flight key, as requests
    made at that instant."""
    requests = flight_requests(slice_days(real_flights, [SERVE_DAY]))
    assert len(requests) > 400
    return requests
