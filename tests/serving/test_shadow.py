"""A challenger in shadow mode, each on a real server over its own copy of the deployment: scored
beside the champion on every flight with its own feature spec, it changes no answer, is logged
with the champion's prediction and judged on the same feedback; a shadow that fails never fails a
request and is counted."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from flight_delay import model as model_lib
from flight_delay.forward import EXPORT_CHECK_FILE, ExportCheck
from flight_delay.log_reading import paired_outcomes, read_log
from flight_delay.model import FORWARD_FILE, MODEL_NAME
from tests.support.deployments import Deployment, FlightRequest, clone_deployment
from tests.support.metrics import metric, quiet_metrics, settled_metrics
from tests.support.servers import ServiceProcess

# The shadow reads a feature the champion does not (the raw time of the aircraft's last departure)
# and fewer of the rest: it must be featurized with its own spec from the rows read for the call.
SHADOW_SPEC = model_lib.FeatureSpec(
    numeric=("dep_hour", "distance", "origin_1h_departures", "last_dep_unix"), categorical=("carrier", "origin")
)


@dataclass(frozen=True)
class Shadows:
    working: ServiceProcess  # a shadow that scores
    working_tag: str
    failing: ServiceProcess  # a shadow that loads and serves, and gives NaN for every flight
    failing_tag: str


def _register(deployment: Deployment, export: Any, reason: str) -> str:
    registry = deployment.registry()
    tag = registry.register(MODEL_NAME, export, {}, {})
    registry.challenge(MODEL_NAME, tag, "shadow", 1.0, reason, expected_champion=deployment.champion)
    return tag


@pytest.fixture(scope="module")
def shadows(serve: Any, serving_deployment: Deployment, tmp_path_factory: pytest.TempPathFactory) -> Shadows:
    root = tmp_path_factory.mktemp("shadow")
    training = pd.read_parquet(serving_deployment.data_dir / "lake" / "training_set" / "training_set.parquet")
    config = model_lib.TrainingConfig(hidden_units=(4,), max_epochs=1)
    small = model_lib.train(training, "is_late", SHADOW_SPEC, config)
    working = clone_deployment(serving_deployment, root / "working")
    working_tag = _register(working, lambda path: model_lib.export(small, path), "test: shadow")

    def export_broken(path: Path) -> None:
        model_lib.export(small, path)
        # A model that passed its export check yet answers NaN on live inputs (a probe batch
        # cannot cover every input): the service loads it, can build its features, and every
        # probability is NaN. Rewritten so that +inf meets -inf in the output layer, and its check
        # recorded again for the rewritten file (the service refuses any other).
        with np.load(path / FORWARD_FILE) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["kernel_0"] = np.zeros_like(arrays["kernel_0"])
        arrays["bias_0"] = np.full_like(arrays["bias_0"], 3e38)
        arrays["kernel_1"] = np.where(np.arange(len(arrays["kernel_1"]))[:, None] % 2, -3e38, 3e38).astype(np.float32)
        np.savez(path / FORWARD_FILE, **arrays)
        check = ExportCheck.read(path)
        sha = hashlib.sha256((path / FORWARD_FILE).read_bytes()).hexdigest()
        (path / EXPORT_CHECK_FILE).write_text(dataclasses.replace(check, forward_sha256=sha).to_json())

    failing = clone_deployment(serving_deployment, root / "failing")
    failing_tag = _register(failing, export_broken, "test: a shadow that fails")
    servers = serve(("shadow", working, {}), ("failing_shadow", failing, {}))
    return Shadows(servers[0], working_tag, servers[1], failing_tag)


def _batch(client: Any, requests: list[FlightRequest]) -> list[dict[str, Any]]:
    response = client.post("/predict_batch", json={"flights": [r.body for r in requests]})
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def _logged(deployment: Deployment, request_ids: list[str], timeout: float = 10.0) -> pd.DataFrame:
    deadline = time.monotonic() + timeout
    while True:
        frame = read_log(deployment.prediction_log)
        rows = frame[frame["request_id"].isin(request_ids)]
        if len(rows) == len(request_ids) or time.monotonic() > deadline:
            return rows.set_index("request_id").loc[request_ids]
        time.sleep(0.1)


def test_a_shadow_changes_no_answer_and_is_logged_and_counted_beside_the_champion(
    shadows: Shadows, sqlite_server: ServiceProcess, real_requests: list[FlightRequest]
):
    server, tag = shadows.working, shadows.working_tag
    champion = server.deployment.champion
    flights = real_requests[100:140]
    with sqlite_server.client() as alone:
        expected = _batch(alone, flights)
        expected_single = alone.post("/predict", json={"flight": flights[0].body}).json()
    with server.client() as client:
        before = quiet_metrics(client)
        got = _batch(client, flights)
        single = client.post("/predict", json={"flight": flights[0].body}).json()
        predictions = "flight_delay_predictions_total"
        after = settled_metrics(
            client,
            lambda t: metric(t, predictions, model_version=tag) - metric(before, predictions, model_version=tag) >= 41,
        )
    # Exactly the champion's answers, as if no challenger were there.
    assert [p["probability"] for p in got] == [p["probability"] for p in expected]
    assert single["probability"] == expected_single["probability"]
    assert {(p["model_version"], p["variant"]) for p in [*got, single]} == {(champion, "champion")}
    assert [p["delayed"] for p in got] == [p["delayed"] for p in expected]

    logged = _logged(server.deployment, [p["request_id"] for p in [*got, single]])
    assert list(logged["probability"]) == [p["probability"] for p in [*got, single]]
    assert set(logged["shadow_model_version"]) == {tag}
    shadow_p = logged["shadow_probability"]
    assert shadow_p.between(0, 1, inclusive="neither").all(), shadow_p
    assert (shadow_p != logged["probability"]).all(), "the shadow is another model: other probabilities"
    # The shadow's predictions and feature bins are counted as the challenger's, once per flight;
    # the feature it alone reads is binned under its own version.
    for variant, version, n in (("challenger", tag, 41), ("champion", champion, 41)):
        grew = metric(after, predictions, model_version=version, variant=variant) - metric(
            before, predictions, model_version=version, variant=variant
        )
        assert grew == n, (variant, grew)
    bins = "flight_delay_feature_value_total"
    for feature in ("dep_hour", "last_dep_unix"):  # one bin per flight, by the shadow's own reference
        grew = metric(after, bins, model_version=tag, variant="challenger", feature=feature) - metric(
            before, bins, model_version=tag, variant="challenger", feature=feature
        )
        assert grew == 41, (feature, grew)
    assert metric(after, "flight_delay_shadow_errors_total", model_version=tag) == 0


def test_feedback_counts_the_live_quality_of_champion_and_shadow_once(
    shadows: Shadows, real_requests: list[FlightRequest]
):
    server, tag = shadows.working, shadows.working_tag
    champion = server.deployment.champion
    loss = "flight_delay_feedback_log_loss_count"
    with server.client() as client:
        made = client.post("/predict", json={"flight": real_requests[150].body}).json()
        before = quiet_metrics(client)
        body = {"feedback": {"request_id": made["request_id"], "departure_delay_minutes": 45}}
        first, again = client.post("/feedback", json=body), client.post("/feedback", json=body)
        after = quiet_metrics(client)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    result = first.json()
    assert result["probability"] == made["probability"] and result["shadow_model_version"] == tag
    logged = _logged(server.deployment, [made["request_id"]])
    assert result["shadow_probability"] == logged["shadow_probability"].iloc[0]
    for variant, version in (("champion", champion), ("challenger", tag)):
        grew = metric(after, loss, model_version=version, variant=variant) - metric(
            before, loss, model_version=version, variant=variant
        )
        assert grew == 1, (variant, grew)  # the second, identical outcome is not counted again
    p = min(max(result["shadow_probability"], 1e-7), 1 - 1e-7)
    shadow_sum = "flight_delay_feedback_log_loss_sum"
    assert metric(after, shadow_sum, model_version=tag) - metric(before, shadow_sum, model_version=tag) == (
        pytest.approx(-math.log(p))
    )
    pairs = paired_outcomes(server.deployment.prediction_log, champion, tag).set_index("request_id")
    pair = pairs.loc[made["request_id"]]
    assert bool(pair["late"]) is True
    assert (pair["champion_p"], pair["challenger_p"]) == (made["probability"], result["shadow_probability"])


def test_a_shadow_that_fails_never_fails_a_request_and_is_counted(
    shadows: Shadows, sqlite_server: ServiceProcess, real_requests: list[FlightRequest]
):
    server, tag = shadows.failing, shadows.failing_tag
    flights = real_requests[200:230]
    with sqlite_server.client() as alone:
        expected = _batch(alone, flights)
        expected_singles = [alone.post("/predict", json={"flight": r.body}).json() for r in flights[:5]]
    with server.client() as client:
        got = _batch(client, flights)
        singles = [client.post("/predict", json={"flight": r.body}) for r in flights[:5]]
        errors = "flight_delay_shadow_errors_total"
        after = settled_metrics(client, lambda t: metric(t, errors, model_version=tag) >= 35)
        made = singles[0].json()
        feedback = client.post(
            "/feedback", json={"feedback": {"request_id": made["request_id"], "departure_delay_minutes": 0}}
        )
    assert all(r.status_code == 200 for r in singles), [r.text for r in singles if r.status_code != 200][:2]
    assert [p["probability"] for p in got] == [p["probability"] for p in expected]
    assert [r.json()["probability"] for r in singles] == [p["probability"] for p in expected_singles]
    assert metric(after, errors, model_version=tag) == 35  # one per flight it could not score
    # Nothing of the failed shadow is counted as its predictions, nor logged.
    assert metric(after, "flight_delay_predictions_total", model_version=tag) == 0
    logged = _logged(server.deployment, [p["request_id"] for p in got])
    assert logged["shadow_model_version"].isna().all() and logged["shadow_probability"].isna().all()
    assert feedback.status_code == 200, feedback.text
    assert feedback.json()["shadow_probability"] is None
