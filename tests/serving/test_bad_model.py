"""The bad-model scenario of the closed loop, end to end on a real server: a model trained on
shuffled labels is forced into champion by hand (the registry CLI, which guards a promotion with
the replaced champion scored in shadow); the outcomes of its live predictions come back as
feedback; the rollback sensor, ticked as the daemon would tick it, requests a decision run; the
run restores the previous champion; the running service follows; no request fails throughout."""

from __future__ import annotations

import json
import math
import time
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from flight_delay import model as model_lib
from flight_delay.feature_tables import prepare_departures
from flight_delay.loop import RollbackPolicy
from flight_delay.model import MODEL_NAME
from flight_delay.registry import main as registry_cli
from pipeline.assets.decisions import model_decisions
from pipeline.resources import LocalModelRegistry, PredictionLogResource
from pipeline.sensors import build_rollback_sensor
from tests.support.deployments import Deployment, FlightRequest, clone_deployment
from tests.support.servers import MAX_BATCH

POLICY = RollbackPolicy()  # the stated defaults: 0.02 of log loss, 300+ labelled flights, alpha 0.05
MOST_LABELLED = 8_000  # the scenario fails if the rollback needs more labelled predictions than this
FOLLOW_SECONDS = 10.0  # the service answers with the restored champion within this long


def _served_by(client: Any, flight: FlightRequest, tag: str, timeout: float) -> float:
    """Seconds until a prediction of ``flight`` is answered by ``tag``; fails past ``timeout``."""
    started = time.monotonic()
    while True:
        answer = client.post("/predict", json={"flight": flight.body})
        assert answer.status_code == 200, answer.text
        if answer.json()["model_version"] == tag:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, f"still served by {answer.json()['model_version']}, not {tag}"
        time.sleep(0.05)


@pytest.mark.timeout(900)
def test_a_bad_model_forced_into_champion_is_rolled_back_by_the_loop_with_no_failed_request(
    serve: Any,
    serving_deployment: Deployment,
    real_flights: pd.DataFrame,
    real_requests: list[FlightRequest],
    tmp_path_factory: pytest.TempPathFactory,
):
    deployment = clone_deployment(serving_deployment, tmp_path_factory.mktemp("bad-model") / "data")
    good = deployment.champion
    registry = deployment.registry()
    training = pd.read_parquet(deployment.data_dir / "lake" / "training_set" / "training_set.parquet")
    labels = np.random.default_rng(2013).permutation(training["is_late"].to_numpy())
    shuffled = model_lib.train(
        training.assign(is_late=labels),
        "is_late",
        model_lib.FLIGHT_DELAY_FEATURES,
        model_lib.TrainingConfig(hidden_units=(32,), max_epochs=10, seed=5),
    )
    bad = registry.register(MODEL_NAME, lambda path: model_lib.export(shuffled, path), {}, {})
    home = str(deployment.layout.bentoml_home)
    # By hand, as a person would: the CLI's promote guards the new champion with the old one.
    assert registry_cli(["--home", home, "promote", bad, "--expect", good, "--reason", "test: shuffled labels"]) == 0
    state = registry.state(MODEL_NAME)
    assert (state.champion, state.challenger.tag, state.challenger.mode) == (bad, good, "shadow")

    (server,) = serve(("bad_model", deployment, {"refresh_seconds": "0.5"}))
    departures = prepare_departures(real_flights).set_index("flight_id")["dep_delay"]
    flights = [r for r in real_requests if r.key in departures.index and not math.isnan(departures[r.key])]
    assert len(flights) >= MAX_BATCH
    sensor = build_rollback_sensor()
    resources = {
        "model_registry": LocalModelRegistry(bentoml_home=home),
        "prediction_log_db": PredictionLogResource(path=str(deployment.prediction_log)),
    }
    instance = dg.DagsterInstance.ephemeral()
    cursor, request, labelled, failed, calls = None, None, 0, 0, 0
    with server.client() as client:
        _served_by(client, flights[0], bad, timeout=30)
        started = time.monotonic()
        position = 0
        while request is None:
            assert labelled < MOST_LABELLED, f"no rollback after {labelled} labelled predictions"
            batch = [flights[(position + i) % len(flights)] for i in range(MAX_BATCH)]
            position += MAX_BATCH
            answer = client.post("/predict_batch", json={"flights": [f.body for f in batch]})
            calls += 1
            if answer.status_code != 200:
                failed += 1
                continue
            for made, flight in zip(answer.json()["predictions"], batch):
                outcome = {"request_id": made["request_id"], "departure_delay_minutes": float(departures[flight.key])}
                fed = client.post("/feedback", json={"feedback": outcome})
                calls += 1
                failed += fed.status_code != 200
                labelled += fed.status_code == 200 and fed.json()["shadow_model_version"] == good
            context = dg.build_sensor_context(cursor=cursor, resources=resources, instance=instance)
            result = sensor(context)
            cursor = result.cursor
            request = result.run_requests[0] if result.run_requests else None
        decided = time.monotonic() - started
        config = request.run_config["ops"]["model_decisions"]["config"]
        assert (config["action"], config["model_version"], config["expected_champion"]) == ("rollback", good, bad)
        applied = dg.materialize(
            [model_decisions],
            resources={"model_registry": resources["model_registry"]},
            run_config=request.run_config,
            instance=instance,
        )
        assert applied.success
        followed = _served_by(client, flights[1], good, timeout=FOLLOW_SECONDS)
        # The service keeps answering: everything after the rollback is the restored champion's.
        after = client.post("/predict_batch", json={"flights": [f.body for f in flights[:MAX_BATCH]]})
        calls += 1
        assert after.status_code == 200, after.text
        assert {p["model_version"] for p in after.json()["predictions"]} == {good}

    figures = json.loads(config["figures"])
    state = registry.state(MODEL_NAME)
    assert state.champion == good and bad in state.barred and state.challenger is None
    assert failed == 0, f"{failed} of {calls} requests failed"
    assert POLICY.min_samples <= figures["n"] < MOST_LABELLED
    assert figures["evidence_worse"] >= 1 / POLICY.alpha, figures
    print(
        f"\nbad model rolled back after {figures['n']} labelled predictions ({labelled} answered with the guard's "
        f"figure; mean log-loss excess "
        f"{figures['mean_excess']:+.4f}, betting evidence {figures['evidence_worse']:.3g}, lower bound "
        f"{figures['lower']:+.4f}); decided {decided:.1f} s after the "
        f"first prediction, the service followed the rollback in {followed:.2f} s; {calls} requests, {failed} failed"
    )
