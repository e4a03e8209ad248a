"""Redis as the online store. The core serving assertions of test_service.py already run against a
Redis-backed server (the ``served`` fixture is parametrized over both stores); these are the
Redis-specific ones: the features really live in Redis, both stores serve the same predictions,
and readiness follows Redis."""

from __future__ import annotations

import time

import pytest

from tests.support.deployments import Deployment, FlightRequest
from tests.support.servers import MAX_BATCH, ServiceProcess


def test_online_features_live_in_redis(redis_deployment: Deployment, redis_url: str):
    import redis

    assert redis.Redis.from_url(redis_url).dbsize() > 100
    # Nothing went to a SQLite online store: reads can only come from Redis.
    assert not (redis_deployment.data_dir / "feast" / "online.db").exists()


def test_both_stores_serve_the_same_predictions(
    sqlite_server: ServiceProcess, redis_server: ServiceProcess, real_requests: list[FlightRequest]
):
    batch = {"flights": [r.body for r in real_requests[100 : 100 + MAX_BATCH]]}
    answers = []
    for server in (sqlite_server, redis_server):
        with server.client() as client:
            response = client.post("/predict_batch", json=batch)
        assert response.status_code == 200, response.text
        answers.append(response.json()["predictions"])
    sqlite, redis_ = answers
    assert sqlite_server.deployment.champion == redis_server.deployment.champion
    for a, b in zip(sqlite, redis_, strict=True):
        assert a["flight_key"] == b["flight_key"]
        assert a["model_version"] == b["model_version"]
        assert a["unknown"] == b["unknown"]
        assert a["feature_age_seconds"] == b["feature_age_seconds"]
        assert a["probability"] == pytest.approx(b["probability"], rel=1e-6, abs=1e-7)


def test_readiness_follows_redis(redis_server: ServiceProcess, redis_url: str, real_requests: list[FlightRequest]):
    """Redis refuses the service (a password is required and its connections are dropped): the
    service stays alive but is not ready; once Redis accepts it again, it is ready and serves."""
    import redis

    admin = redis.Redis.from_url(redis_url)
    with redis_server.client(timeout=15) as client:
        assert client.get("/readyz").status_code == 200
        try:
            admin.config_set("requirepass", "not-the-service")
            admin.client_kill_filter(_type="normal", skipme=True)
            # redis-py's reconnect retries take a few seconds to give up.
            assert _wait_status(client, "/readyz", 503), "still ready while Redis refuses it"
            assert client.get("/livez").status_code == 200
        finally:
            admin.config_set("requirepass", "")
        assert _wait_status(client, "/readyz", 200), "not ready again after Redis recovered"
        response = client.post("/predict", json={"flight": real_requests[0].body})
        assert response.status_code == 200, response.text
        assert response.json()["unknown"] == []


def _wait_status(client, path: str, status: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get(path).status_code == status:
            return True
        time.sleep(0.2)
    return False
