"""The service under faults and hostile traffic, each a real server: a stalled and a killed Redis,
an overloaded worker, a handler that waits, a prediction time in the past, TLS with a password,
a bearer token, a challenger with another feature spec.

The stated bounds: an online-store call gives up after ``FLIGHT_DELAY_STORE_TIMEOUT_SECONDS``
(2 s by default; Redis itself after 0.5 s a command unless the URL says otherwise) and the
request gets 503; ``/livez`` answers meanwhile.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from flight_delay.log_reading import read_log
from flight_delay.model import MODEL_NAME
from tests.support.deployments import AS_OF, Deployment, FlightRequest, clone_deployment
from tests.support.servers import RedisServer, ServiceProcess
from tests.support.tcp_proxy import StallingProxy

STORE_TIMEOUT = 2.0  # FLIGHT_DELAY_STORE_TIMEOUT_SECONDS of the servers below


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/")[0].split("?")[0])


@pytest.fixture(scope="module")
def proxied(serve: Any, redis_deployment: Deployment, redis_url: str) -> Iterator[tuple[ServiceProcess, StallingProxy]]:
    """A server reading Redis through a proxy the test can stall and kill; no feature cache, one
    request in progress at a time (so a second one is shed), Redis commands time out after 1 s."""
    proxy = StallingProxy(_port(redis_url))
    deployment = Deployment(
        redis_deployment.data_dir,
        redis_deployment.champion,
        online_store=f"redis://127.0.0.1:{proxy.port}?socket_timeout=1",
    )
    (server,) = serve(
        (
            "proxied",
            deployment,
            {"feature_cache_seconds": "0", "max_concurrency": "1", "store_timeout_seconds": str(STORE_TIMEOUT)},
        )
    )
    try:
        yield server, proxy
    finally:
        proxy.close()


def _timed_post(client: httpx.Client, path: str, body: dict, out: dict) -> None:
    started = time.monotonic()
    response = client.post(path, json=body)
    out.update(
        status=response.status_code, body=response.json(), seconds=time.monotonic() - started, done=time.monotonic()
    )


def test_a_stalled_redis_fails_requests_within_the_timeout_and_the_worker_keeps_answering(
    proxied: tuple[ServiceProcess, StallingProxy], real_requests: list[FlightRequest]
):
    server, proxy = proxied
    flight = {"flight": real_requests[0].body}
    with server.client() as client:
        assert client.post("/predict", json=flight).status_code == 200
        proxy.stall()
        stuck: dict = {}
        waiting = threading.Thread(target=_timed_post, args=(client, "/predict", flight, stuck))
        waiting.start()
        time.sleep(0.2)  # the first request is now waiting on Redis
        started = time.monotonic()
        assert client.get("/livez").status_code == 200
        live_seconds = time.monotonic() - started
        shed = client.post("/predict", json=flight)  # a second request while one is in progress
        waiting.join(timeout=30)
    assert live_seconds < 0.5, "the worker's loop answered its probe while the request waited"
    assert shed.status_code == 503 and "overloaded" in shed.json()["error"], shed.text
    assert shed.headers.get("retry-after") == "1"
    assert stuck["status"] == 503, stuck
    assert "online store" in stuck["body"]["error"], stuck
    assert stuck["seconds"] < STORE_TIMEOUT + 1.0, stuck


def test_the_service_recovers_from_a_killed_redis_without_a_restart(
    proxied: tuple[ServiceProcess, StallingProxy], real_requests: list[FlightRequest], redis_url: str
):
    server, proxy = proxied
    flight = {"flight": real_requests[1].body}
    port = proxy.port
    proxy.close()  # Redis gone: connections refused
    with server.client() as client:
        started = time.monotonic()
        refused = client.post("/predict", json=flight)
        refused_seconds = time.monotonic() - started
        assert refused.status_code == 503 and "online store" in refused.json()["error"], refused.text
        assert refused_seconds < STORE_TIMEOUT + 1.0
        assert client.get("/readyz").status_code == 503, "not ready while the store does not answer"
        assert client.get("/livez").status_code == 200
        back = StallingProxy(_port(redis_url), port=port)  # Redis back on the same address
        try:
            deadline = time.monotonic() + 10
            while (response := client.post("/predict", json=flight)).status_code != 200:
                assert time.monotonic() < deadline, response.text
                time.sleep(0.2)
            assert client.get("/readyz").status_code == 200
        finally:
            back.close()


def test_a_handler_that_waits_does_not_hold_up_the_worker(sqlite_server: ServiceProcess):
    """Feedback for a prediction not logged yet waits for other workers' log flushes; the worker
    answers everything else meanwhile (one worker: a blocked loop would answer /livez last)."""
    feedback = {"feedback": {"flight_key": "2013-01-06:ZZ9999:EWR", "departure_delay_minutes": 5}}
    with sqlite_server.client() as client:
        waited: dict = {}
        waiting = threading.Thread(target=_timed_post, args=(client, "/feedback", feedback, waited))
        waiting.start()
        time.sleep(0.03)
        client.get("/livez")
        live_done = time.monotonic()
        waiting.join(timeout=30)
    assert waited["status"] == 404, waited
    assert live_done < waited["done"], "/livez answered while the feedback was still waiting"


def test_a_past_prediction_time_is_never_served_later_values(
    sqlite_server: ServiceProcess, real_requests: list[FlightRequest]
):
    """The store holds the state at its instant; a request made a day earlier gets none of the
    values stamped after it (the training join would not have them), only counts them."""
    body = {**real_requests[2].body, "prediction_time": (AS_OF - pd.Timedelta(days=1)).isoformat()}
    with sqlite_server.client() as client:
        got = client.post("/predict", json={"flight": body})
        assert got.status_code == 200, got.text
        metrics = ""
        deadline = time.monotonic() + 5
        while "flight_delay_future_values_total{" not in metrics and time.monotonic() < deadline:
            time.sleep(0.2)
            metrics = client.get("/metrics").text
    ages = got.json()["feature_age_seconds"]
    assert ages["origin_hourly_weather"] < 0, ages  # the stored weather is from after the prediction time
    assert "flight_delay_future_values_total{" in metrics and 'view="origin_hourly_weather"' in metrics
    deadline = time.monotonic() + 5
    while (logged := read_log(sqlite_server.deployment.prediction_log)).query(
        "request_id == @got.json()['request_id']"
    ).empty and time.monotonic() < deadline:
        time.sleep(0.1)
    row = logged[logged["request_id"] == got.json()["request_id"]].iloc[0]
    assert pd.isna(row["temp"]) and pd.isna(row["origin_1h_departures"]), row


@pytest.fixture(scope="module")
def secured(
    serve: Any, serving_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A server on a TLS Redis that requires a password, with a bearer token on its API."""
    redis = RedisServer(tmp_path_factory.mktemp("redis_tls"), tls=True, password="s3cret-pw").start()
    deployment = Deployment(serving_deployment.data_dir, serving_deployment.champion, online_store=redis.url)
    try:
        (server,) = serve(("secured", deployment, {"api_token": "t0ken"}))
        yield server
    finally:
        redis.stop()


def test_tls_redis_with_a_password_and_a_bearer_token(secured: ServiceProcess, real_requests: list[FlightRequest]):
    flight = {"flight": real_requests[0].body}
    with secured.client() as client:
        assert client.post("/predict", json=flight).status_code == 401
        assert client.post("/predict", json=flight, headers={"Authorization": "Bearer wrong"}).status_code == 401
        feedback = {"feedback": {"flight_key": real_requests[0].key, "departure_delay_minutes": 1}}
        assert client.post("/feedback", json=feedback).status_code == 401
        got = client.post("/predict", json=flight, headers={"Authorization": "Bearer t0ken"})
        assert got.status_code == 200, got.text
        # The TLS store is empty: every entity is unknown, and the service says so.
        assert got.json()["unknown"] == ["carrier", "origin", "route", "tailnum"]
        assert client.get("/livez").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200
    log = Path(secured.log_path).read_text(errors="replace")
    assert "s3cret-pw" not in log and "t0ken" not in log, "no secret in the server's log"


def test_a_challenger_with_another_feature_spec_is_served_with_its_own_features(
    serve: Any, serving_deployment: Deployment, tmp_path: Path, real_requests: list[FlightRequest]
):
    """Each variant is featurized with its own spec: a challenger that reads fewer features, and one
    the champion does not read (the raw time of the aircraft's last departure), serves its share
    without a failed request."""
    from flight_delay import model as model_lib

    deployment = clone_deployment(serving_deployment, tmp_path / "data")
    registry = deployment.registry()
    training = pd.read_parquet(deployment.data_dir / "lake" / "training_set" / "training_set.parquet")
    spec = model_lib.FeatureSpec(
        numeric=("dep_hour", "distance", "origin_1h_departures", "last_dep_unix"), categorical=("carrier", "origin")
    )
    small = model_lib.train(training, "is_late", spec, model_lib.TrainingConfig(hidden_units=(4,), max_epochs=1))
    tag = registry.register(MODEL_NAME, lambda path: model_lib.export(small, path), {}, {})
    registry.challenge(MODEL_NAME, tag, "split", 0.5, "another spec", expected_champion=deployment.champion)
    (server,) = serve(("two_specs", deployment, {}))
    flights = [r.body for r in real_requests[:50]]
    with server.client() as client:
        singles = [client.post("/predict", json={"flight": f}) for f in flights[:20]]
        batch = client.post("/predict_batch", json={"flights": flights})
    assert all(r.status_code == 200 for r in singles), [r.text for r in singles if r.status_code != 200][:2]
    assert batch.status_code == 200, batch.text
    variants = {p["variant"]: p["model_version"] for p in batch.json()["predictions"]}
    assert variants == {"champion": deployment.champion, "challenger": tag}


def test_feedback_is_recorded_once_per_prediction(sqlite_server: ServiceProcess, real_requests: list[FlightRequest]):
    """The same outcome twice is answered twice and counted once; a different outcome is 409."""
    from tests.support.metrics import metric, quiet_metrics

    with sqlite_server.client() as client:
        made = client.post("/predict", json={"flight": real_requests[40].body}).json()
        before = metric(
            quiet_metrics(client), "flight_delay_feedback_log_loss_count", model_version=made["model_version"]
        )
        body = {"feedback": {"request_id": made["request_id"], "departure_delay_minutes": 30}}
        first, again = client.post("/feedback", json=body), client.post("/feedback", json=body)
        other = client.post(
            "/feedback", json={"feedback": {"request_id": made["request_id"], "departure_delay_minutes": 0}}
        )
        after = metric(
            quiet_metrics(client), "flight_delay_feedback_log_loss_count", model_version=made["model_version"]
        )
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    assert first.json() == again.json()
    assert other.status_code == 409 and "30" in other.json()["error"], other.text
    assert after - before == 1


def test_a_log_that_cannot_be_written_stops_acknowledging_and_loses_nothing(
    serve: Any, serving_deployment: Deployment, tmp_path: Path, real_requests: list[FlightRequest]
):
    """The log is locked by another process: predictions are acknowledged until the backlog
    bound, then refused (503, not ready); once the lock goes, every acknowledged one is on disk."""
    import sqlite3

    deployment = clone_deployment(serving_deployment, tmp_path / "data")
    (server,) = serve(("locked_log", deployment, {"log_max_backlog": "20"}))
    with server.client() as client:
        assert client.post("/predict", json={"flight": real_requests[0].body}).status_code == 200
        time.sleep(0.5)  # committed
        holder = sqlite3.connect(deployment.prediction_log, timeout=1)
        holder.execute("BEGIN EXCLUSIVE")
        answers = [client.post("/predict", json={"flight": r.body}) for r in real_requests[1:40]]
        acknowledged = [a.json()["request_id"] for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code != 200]
        ready_while_locked = client.get("/readyz").status_code
        holder.rollback()
        holder.close()
        deadline = time.monotonic() + 15
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "ready again once the log can be written"
            time.sleep(0.2)
        assert client.post("/predict", json={"flight": real_requests[41].body}).status_code == 200
    assert 0 < len(acknowledged) <= 20 and refused, (len(acknowledged), [r.text for r in refused[:1]])
    assert all(r.status_code == 503 and "FLIGHT_DELAY_LOG_MAX_BACKLOG" in r.json()["error"] for r in refused)
    assert ready_while_locked == 503
    deadline = time.monotonic() + 10
    while not set(acknowledged) <= set(read_log(deployment.prediction_log)["request_id"]):
        assert time.monotonic() < deadline, "every acknowledged prediction reaches the log"
        time.sleep(0.2)
