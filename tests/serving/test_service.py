"""The prediction service as it runs: ``bentoml serve`` over a tiny real deployment.

Core behaviour runs once per online store (SQLite, Redis: the ``served`` fixture); input
validation runs against the real server and the in-process ASGI app; the lifecycle tests (hot
champion switch, sticky challenger split, prediction log across a graceful shutdown) each get a
server over their own copy of the deployment.
"""

from __future__ import annotations

import math
import shutil
import signal
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from flight_delay.model import MODEL_NAME
from tests.support.deployments import Deployment, FlightRequest, clone_deployment, train_candidate
from tests.support.metrics import metric, metric_samples, quiet_metrics, settled_metrics
from tests.support.servers import MAX_BATCH, ServiceProcess

VIEWS = {
    "origin_hourly_weather",
    "origin_1h_departures",
    "origin_carrier_3h_departures",
    "aircraft_last_departure",
    "aircraft_profile",
    "carrier_7d_delays",
    "route_28d_delays",
}


def predict(client: httpx.Client, flight: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/predict", json={"flight": flight})
    assert response.status_code == 200, response.text
    return response.json()


def expected_losses(probability: float, late: bool) -> tuple[float, float]:
    p = min(max(probability, 1e-7), 1 - 1e-7)
    return (-math.log(p) if late else -math.log(1 - p)), (p - float(late)) ** 2


# -- core behaviour, once per online store ------------------------------------------------------
def test_predict_scores_a_real_flight(http, served: ServiceProcess, real_requests: list[FlightRequest]):
    threshold_seen = set()
    for request in real_requests[:5]:
        got = predict(http, request.body)
        assert got["flight_key"] == request.key
        assert 0.0 < got["probability"] < 1.0
        assert got["delayed"] == (got["probability"] >= got["threshold"])
        threshold_seen.add(got["threshold"])
        assert got["model_version"] == served.deployment.champion
        assert got["variant"] == "champion"
        assert len(got["request_id"]) == 32 and int(got["request_id"], 16) >= 0
        assert set(got["feature_age_seconds"]) == VIEWS
        # Every entity of a flight that flew that day is in the online store.
        assert got["unknown"] == []
        ages = got["feature_age_seconds"]
        assert all(a is None or a >= 0.0 for a in ages.values()), ages  # never a value from after prediction time
        # An aircraft missing from the FAA registry extract has no profile, however known its flights.
        assert all(isinstance(ages[v], float) for v in VIEWS - {"aircraft_profile"}), ages
    assert threshold_seen == {0.3}  # the default FLIGHT_DELAY_THRESHOLD


def test_predict_batch_returns_one_prediction_per_flight_in_order(
    http, served: ServiceProcess, real_requests: list[FlightRequest]
):
    batch = real_requests[10 : 10 + 40]
    response = http.post("/predict_batch", json={"flights": [r.body for r in batch]})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert [p["flight_key"] for p in predictions] == [r.key for r in batch]
    assert len({p["request_id"] for p in predictions}) == len(batch)
    assert all(0.0 < p["probability"] < 1.0 for p in predictions)
    assert {p["model_version"] for p in predictions} == {served.deployment.champion}
    # A batch scores each flight exactly as a single request does.
    for request, batched in list(zip(batch, predictions))[:3]:
        single = predict(http, request.body)
        assert single["probability"] == pytest.approx(batched["probability"], rel=1e-5, abs=1e-6)
        assert single["feature_age_seconds"] == batched["feature_age_seconds"]


def test_unknown_tail_and_carrier_are_served_and_counted(http, real_requests: list[FlightRequest]):
    before = quiet_metrics(http)
    known = real_requests[0].body
    unknown_tail = {**known, "tailnum": "N0TREAL"}
    unknown_carrier = {**known, "carrier": "ZZ", "tailnum": None}

    got_tail = predict(http, unknown_tail)
    assert got_tail["unknown"] == ["tailnum"]
    assert got_tail["feature_age_seconds"]["aircraft_profile"] is None
    assert got_tail["feature_age_seconds"]["aircraft_last_departure"] is None
    assert 0.0 < got_tail["probability"] < 1.0

    got_carrier = predict(http, unknown_carrier)
    assert got_carrier["unknown"] == ["carrier", "tailnum"]  # no tail number: the UNKNOWN tail
    assert got_carrier["feature_age_seconds"]["carrier_7d_delays"] is None
    assert 0.0 < got_carrier["probability"] < 1.0

    name = "flight_delay_unknown_entities_total"
    after = settled_metrics(
        http,
        lambda t: (
            metric(t, name, entity="tailnum") - metric(before, name, entity="tailnum") >= 2
            and metric(t, name, entity="carrier") - metric(before, name, entity="carrier") >= 1
        ),
    )
    assert metric(after, name, entity="tailnum") - metric(before, name, entity="tailnum") == 2
    assert metric(after, name, entity="carrier") - metric(before, name, entity="carrier") == 1
    assert {"entity", "model_version", "variant"} <= set(metric_samples(after, name)[0])


def test_feedback_by_request_id_and_by_flight_key(http, served: ServiceProcess, real_requests: list[FlightRequest]):
    first = predict(http, real_requests[60].body)
    response = http.post(
        "/feedback", json={"feedback": {"request_id": first["request_id"], "departure_delay_minutes": 20}}
    )
    assert response.status_code == 200, response.text
    result = response.json()
    log_loss, brier = expected_losses(first["probability"], late=True)
    assert result == {
        "request_id": first["request_id"],
        "flight_key": first["flight_key"],
        "model_version": served.deployment.champion,
        "variant": "champion",
        "probability": first["probability"],
        "late": True,
        "log_loss": pytest.approx(log_loss),
        "brier": pytest.approx(brier),
        "shadow_model_version": None,  # no shadow challenger was scored beside it
        "shadow_probability": None,
    }

    # By flight key: the latest prediction of that flight answers.
    request = real_requests[61]
    predict(http, request.body)
    latest = predict(http, request.body)
    response = http.post("/feedback", json={"feedback": {"flight_key": request.key, "departure_delay_minutes": 3}})
    assert response.status_code == 200, response.text
    result = response.json()
    log_loss, brier = expected_losses(latest["probability"], late=False)
    assert result["request_id"] == latest["request_id"]
    assert result["late"] is False
    assert result["log_loss"] == pytest.approx(log_loss) and result["brier"] == pytest.approx(brier)

    labels = {"model_version": served.deployment.champion, "variant": "champion"}
    metrics = settled_metrics(http, lambda t: metric(t, "flight_delay_feedback_total", **labels) >= 2)
    assert metric(metrics, "flight_delay_feedback_total", **labels) >= 2
    assert metric(metrics, "flight_delay_feedback_log_loss_sum", **labels) > 0
    assert metric(metrics, "flight_delay_feedback_brier_sum", **labels) > 0


def test_feedback_for_an_unknown_prediction_is_404(http):
    response = http.post(
        "/feedback",
        json={"feedback": {"request_id": "0123456789abcdef0123456789abcdef", "departure_delay_minutes": 20}},
    )
    assert response.status_code == 404
    assert response.json() == {"error": "no logged prediction for request_id 0123456789abcdef0123456789abcdef"}
    response = http.post(
        "/feedback", json={"feedback": {"flight_key": "2013-01-06:ZZ9999:EWR", "departure_delay_minutes": 20}}
    )
    assert response.status_code == 404
    assert "no logged prediction for flight_key 2013-01-06:ZZ9999:EWR" in response.text


def test_health_and_metrics(http, served: ServiceProcess, real_requests: list[FlightRequest]):
    assert http.get("/livez").status_code == 200
    assert http.get("/readyz").status_code == 200
    champion = served.deployment.champion
    before = quiet_metrics(http)
    predict(http, real_requests[3].body)
    http.post("/predict_batch", json={"flights": [r.body for r in real_requests[:2]]})
    served_rows = lambda t: metric(t, "flight_delay_predictions_total", model_version=champion)  # noqa: E731
    text = settled_metrics(http, lambda t: served_rows(t) - served_rows(before) >= 3)
    assert served_rows(text) - served_rows(before) == 3
    assert metric(text, "flight_delay_requests_total", endpoint="predict", outcome="ok") >= 1
    assert metric(text, "flight_delay_requests_total", endpoint="predict_batch", outcome="ok") >= 1
    assert metric(text, "flight_delay_request_latency_seconds_count", endpoint="predict") >= 1
    for stage in ("feature_lookup", "inference"):
        assert metric(text, "flight_delay_stage_latency_seconds_count", stage=stage, endpoint="predict") >= 1
    assert metric(text, "flight_delay_prediction_score_count", model_version=champion, variant="champion") >= 3
    assert metric(text, "flight_delay_predictions_total", model_version=champion, variant="champion") >= 3
    bins = metric_samples(text, "flight_delay_feature_value_total")
    assert bins and all(s["model_version"] == champion for s in bins)
    assert {s["feature"] for s in bins} >= {"dep_hour", "distance", "temp"}
    assert metric(text, "flight_delay_requests_total", outcome="server_error") == 0
    # Every served row read each of the 7 views, from the online store or this worker's cache.
    rows = lambda t: metric(t, "flight_delay_online_rows_total")  # noqa: E731
    assert rows(text) - rows(before) == 3 * 7
    assert {s["view"] for s in metric_samples(text, "flight_delay_online_rows_total")} == VIEWS


# -- bad input: a 4xx naming the field, never a 500 ---------------------------------------------
@pytest.fixture(params=["server", "inprocess"])
def any_client(request: pytest.FixtureRequest) -> Any:
    if request.param == "inprocess":
        yield request.getfixturevalue("inprocess_client")
    else:
        with request.getfixturevalue("sqlite_server").client() as client:
            yield client


GOOD = {
    "carrier": "UA",
    "flight": 1545,
    "tailnum": "N14228",
    "origin": "EWR",
    "dest": "IAH",
    "scheduled_departure": "2013-01-06T15:15:00+00:00",
    "distance": 1400.0,
    "prediction_time": "2013-01-06T14:15:00+00:00",
}


def _without(d: dict, key: str) -> dict:
    return {k: v for k, v in d.items() if k != key}


BAD_INPUTS = {
    "missing_field": ("/predict", {"flight": _without(GOOD, "dest")}, ["dest"]),
    "missing_body_key": ("/predict", {"flights": [GOOD]}, ["flight"]),
    "wrong_type": ("/predict", {"flight": {**GOOD, "flight": "one"}}, ["flight", "int"]),
    "wrong_type_distance": ("/predict", {"flight": {**GOOD, "distance": [1]}}, ["distance"]),
    "lowercase_carrier": ("/predict", {"flight": {**GOOD, "carrier": "u"}}, ["carrier"]),
    "origin_is_dest": ("/predict", {"flight": {**GOOD, "dest": "EWR"}}, ["origin", "dest"]),
    "negative_distance": ("/predict", {"flight": {**GOOD, "distance": -5}}, ["distance"]),
    "naive_departure": (
        "/predict",
        {"flight": {**GOOD, "scheduled_departure": "2013-01-06T15:15:00"}},
        ["scheduled_departure", "UTC offset"],
    ),
    "naive_prediction_time": (
        "/predict",
        {"flight": {**GOOD, "prediction_time": "2013-01-06T14:15:00"}},
        ["prediction_time", "UTC offset"],
    ),
    "prediction_after_departure": (
        "/predict",
        {"flight": {**GOOD, "prediction_time": "2013-01-06T16:15:00+00:00"}},
        ["prediction_time", "scheduled_departure"],
    ),
    "extra_field": ("/predict", {"flight": {**GOOD, "surprise": 1}}, ["surprise"]),
    "extra_field_in_batch": ("/predict_batch", {"flights": [GOOD, {**GOOD, "surprise": 1}]}, ["surprise"]),
    "bad_flight_in_batch": ("/predict_batch", {"flights": [GOOD, {**GOOD, "carrier": "u"}]}, ["carrier"]),
    "empty_batch": ("/predict_batch", {"flights": []}, ["flights"]),
    "batch_not_a_list": ("/predict_batch", {"flights": GOOD}, ["flights"]),
    "feedback_both_keys": (
        "/feedback",
        {
            "feedback": {
                "request_id": "0123456789abcdef",
                "flight_key": "2013-01-06:UA1545:EWR",
                "departure_delay_minutes": 20,
            }
        },
        ["request_id", "flight_key"],
    ),
    "feedback_neither_key": ("/feedback", {"feedback": {"departure_delay_minutes": 20}}, ["request_id", "flight_key"]),
    "feedback_bad_key": (
        "/feedback",
        {"feedback": {"flight_key": "yesterday", "departure_delay_minutes": 1}},
        ["flight_key"],
    ),
    "feedback_missing_delay": (
        "/feedback",
        {"feedback": {"request_id": "0123456789abcdef"}},
        ["departure_delay_minutes"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_4xx_naming_the_field(any_client, case: str):
    path, body, names = BAD_INPUTS[case]
    response = any_client.post(path, json=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.status_code == 400
    for name in names:
        assert name in response.text, (name, response.text)


def test_malformed_json_is_a_400(any_client):
    for raw in (b'{"flight": {"carrier": "UA",', b"not json", b'{"flight": {"carrier": "UA"}}}'):
        response = any_client.post("/predict", content=raw, headers={"content-type": "application/json"})
        assert response.status_code == 400, (raw, response.status_code, response.text)
        assert "json_invalid" in response.text and "Invalid JSON" in response.text, response.text
    # An empty body reads as an empty object: the missing field is named.
    response = any_client.post("/predict", content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 400 and '"loc":["flight"]' in response.text, response.text


def test_a_batch_over_the_limit_is_refused_naming_it(any_client, real_requests: list[FlightRequest]):
    flights = [r.body for r in real_requests[: MAX_BATCH + 1]]
    response = any_client.post("/predict_batch", json={"flights": flights})
    assert 400 <= response.status_code < 500, response.text
    assert f"at most {MAX_BATCH} items" in response.text and "flights" in response.text
    response = any_client.post("/predict_batch", json={"flights": flights[:MAX_BATCH]})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == MAX_BATCH


def test_a_body_over_the_limit_is_413_before_it_is_parsed(any_client):
    """The limit follows FLIGHT_DELAY_MAX_BATCH (64 KiB at least): a body over it is not even read,
    so a request too large to parse cheaply never is (this body is not JSON at all)."""
    big = b"[" * (65_536 + 1)
    response = any_client.post("/predict_batch", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text
    assert "FLIGHT_DELAY_MAX_BODY_BYTES" in response.json()["error"]

    def chunks():  # no Content-Length: refused once what arrived passes the limit
        for _ in range(40):
            yield b" " * 4096

    response = any_client.post("/predict_batch", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413, response.text


def test_out_of_range_datetimes_are_rejected_not_500(any_client):
    for stamp in ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-12:00", "1900-01-01T00:00:00+00:00"):
        response = any_client.post(
            "/predict", json={"flight": {**GOOD, "scheduled_departure": stamp, "prediction_time": None}}
        )
        assert response.status_code == 400, (stamp, response.status_code, response.text)
        assert "scheduled_departure" in response.text
        response = any_client.post("/predict", json={"flight": {**GOOD, "prediction_time": stamp}})
        assert response.status_code == 400, (stamp, response.status_code, response.text)
        assert "prediction_time" in response.text


def test_in_process_app_ran_the_service_startup(inprocess_client, serving_deployment: Deployment):
    """The lifespan ran ``__init__``: the app is ready and serves the registry's champion."""
    assert inprocess_client.get("/readyz").status_code == 200
    got = predict(inprocess_client, GOOD)
    assert got["model_version"] == serving_deployment.champion
    assert 0.0 < got["probability"] < 1.0


# -- lifecycle: each on its own copy of the deployment ----------------------------------------------
@dataclass
class Lifecycle:
    two_models: Deployment  # champion A and an unpromoted candidate B
    candidate: str
    switch: ServiceProcess
    split: ServiceProcess
    durability: ServiceProcess


@pytest.fixture(scope="module")
def lifecycle(serve, serving_deployment: Deployment, source_dir, tmp_path_factory) -> Lifecycle:
    root = tmp_path_factory.mktemp("lifecycle")
    two = clone_deployment(serving_deployment, root / "two_models")
    candidate = train_candidate(two, source_dir)
    switch = clone_deployment(two, root / "switch")
    split = clone_deployment(two, root / "split")
    split.registry().challenge(
        MODEL_NAME, candidate, "split", 0.5, "test: sticky split", expected_champion=split.champion
    )
    durable = clone_deployment(serving_deployment, root / "durability")
    servers = serve(("switch", switch, {}), ("split", split, {}), ("durability", durable, {}))
    return Lifecycle(two, candidate, *servers)


@dataclass
class Traffic:
    """Clients posting /predict in a loop; every outcome recorded."""

    server: ServiceProcess
    flight: dict[str, Any]
    threads: int = 1
    ok: list[tuple[float, str, str]] = field(default_factory=list)  # (time, model_version, request_id)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        with self.server.client(timeout=10) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/predict", json={"flight": self.flight})
                except httpx.TransportError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if response.status_code == 200:
                    got = response.json()
                    self.ok.append((time.monotonic(), got["model_version"], got["request_id"]))
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:200]}")

    def start(self) -> Traffic:
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for w in self._workers:
            w.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for w in self._workers:
            w.join(timeout=30)

    def wait_for_version(self, version: str, since: float, timeout: float) -> float:
        deadline = since + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, v, _ in list(self.ok) if t >= since and v == version), None)
            if hit is not None:
                return hit - since
            time.sleep(0.02)
        raise AssertionError(f"{version} not served within {timeout} s; failures: {self.failures[:5]}")


def test_champion_switch_without_restart(lifecycle: Lifecycle, real_requests: list[FlightRequest]):
    server = lifecycle.switch
    registry = server.deployment.registry()
    old, new = server.deployment.champion, lifecycle.candidate
    assert registry.champion(MODEL_NAME) == old
    traffic = Traffic(server, real_requests[0].body).start()
    try:
        time.sleep(0.5)
        assert {v for _, v, _ in traffic.ok} == {old}

        promoted_at = time.monotonic()
        registry.promote(MODEL_NAME, new, "test: hot switch", expected_champion=old)
        took = traffic.wait_for_version(new, promoted_at, timeout=5.0)

        rolled_back_at = time.monotonic()
        registry.rollback(MODEL_NAME, "test: hot rollback", expected_champion=new)
        took_back = traffic.wait_for_version(old, rolled_back_at, timeout=5.0)
        time.sleep(0.5)
    finally:
        traffic.stop()
    assert not traffic.failures, traffic.failures[:5]
    assert registry.champion(MODEL_NAME) == old
    assert len(traffic.ok) > 50, len(traffic.ok)
    # Once the rollback was served, the old champion answers every later request.
    first_back = next(t for t, v, _ in traffic.ok if t >= rolled_back_at and v == old)
    assert {v for t, v, _ in traffic.ok if t > first_back} == {old}
    assert took < 5 and took_back < 5


def test_challenger_split_is_sticky(lifecycle: Lifecycle, real_requests: list[FlightRequest]):
    from serving.routing import Routing, Variant

    server = lifecycle.split
    champion, challenger = server.deployment.champion, lifecycle.candidate
    seen: dict[str, str] = {}
    with server.client() as client:
        for start in range(0, len(real_requests), MAX_BATCH):
            chunk = real_requests[start : start + MAX_BATCH]
            response = client.post("/predict_batch", json={"flights": [r.body for r in chunk]})
            assert response.status_code == 200, response.text
            for request, p in zip(chunk, response.json()["predictions"]):
                assert p["flight_key"] == request.key
                assert p["model_version"] == {"champion": champion, "challenger": challenger}[p["variant"]]
                seen[p["flight_key"]] = p["variant"]
        variants = list(seen.values())
        share = variants.count("challenger") / len(variants)
        assert set(variants) == {"champion", "challenger"}
        assert 0.4 < share < 0.6, share

        # The same key lands on the same variant again: other batches, other order, single calls.
        again = list(reversed(real_requests))[:120]
        response = client.post("/predict_batch", json={"flights": [r.body for r in again[:37]]})
        assert response.status_code == 200, response.text
        assert all(seen[p["flight_key"]] == p["variant"] for p in response.json()["predictions"])
        for request in again[37:]:
            assert predict(client, request.body)["variant"] == seen[request.key]
    # Sticky by the key's hash alone, so any replica (or restart) agrees.
    routing = Routing(Variant("champion", champion, None), Variant("challenger", challenger, None), "split", 0.5)
    assert all(routing.assign(k).name == v for k, v in seen.items())


def test_prediction_log_survives_graceful_shutdown(lifecycle: Lifecycle, real_requests: list[FlightRequest]):
    server = lifecycle.durability
    traffic = Traffic(server, real_requests[5].body, threads=2).start()
    time.sleep(3.0)
    server.signal(signal.SIGTERM)  # graceful stop of the whole process group, while requests fly
    try:
        assert server.wait_exit(timeout=30), f"not stopped 30 s after SIGTERM:\n{server.log_tail()}"
    finally:
        traffic.stop()
        server.stop(signal.SIGKILL)
    assert len(server.group.tree) >= 2, server.group.tree  # bentoml serve and its worker, at least
    acknowledged = {rid for _, _, rid in traffic.ok}
    assert len(acknowledged) > 50, (len(acknowledged), traffic.failures[:3])
    with sqlite3.connect(server.deployment.prediction_log) as db:
        logged = {row[0] for row in db.execute("SELECT request_id FROM predictions")}
    lost = acknowledged - logged
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged predictions are not in the log"
    assert "Completed cleanup hook: _drain" in server.log_tail(20000)


def test_without_a_champion_the_service_is_alive_not_ready_and_says_why(
    serve, serving_deployment: Deployment, tmp_path, real_requests: list[FlightRequest]
):
    """A service started before any model is promoted answers 503 with the reason (not BentoML's
    generic message), and serves as soon as a champion is promoted: no restart."""
    empty = clone_deployment(serving_deployment, tmp_path / "data")
    shutil.rmtree(empty.data_dir / "bentoml" / "champions")
    assert empty.registry().champion(MODEL_NAME) is None
    server = ServiceProcess("no-champion", empty, tmp_path).start()
    try:
        with server.client() as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/livez").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, server.log_tail()
                time.sleep(0.25)
            assert client.get("/readyz").status_code == 503
            response = client.post("/predict", json={"flight": real_requests[0].body})
            assert response.status_code == 503
            assert response.json() == {"error": "no champion model is promoted yet; run the pipeline (make demo)"}

            empty.registry().promote(
                MODEL_NAME, serving_deployment.champion, reason="first model", expected_champion=None
            )
            # The first model also imports TensorFlow in the worker (switches between loaded
            # models take well under the 5 s of test_champion_switch_without_restart).
            deadline = time.monotonic() + 60
            while (response := client.post("/predict", json={"flight": real_requests[0].body})).status_code != 200:
                assert time.monotonic() < deadline, (
                    "not serving 60 s after the promotion",
                    response.text,
                    server.log_tail(),
                )
                time.sleep(0.1)
            assert response.json()["model_version"] == serving_deployment.champion
            assert client.get("/readyz").status_code == 200
    finally:
        server.stop()
