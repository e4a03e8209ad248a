"""The service's monitoring counters, and the pipeline's monitoring asset reading them from a real
server's /metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest

from flight_delay.drift import MISSING, OTHER, SCORE_FEATURE
from pipeline.definitions import build_definitions
from pipeline.resources import ServiceMetrics
from tests.support.deployments import Deployment, FlightRequest
from tests.support.metrics import metric, metric_samples, quiet_metrics
from tests.support.servers import ServiceProcess


@pytest.fixture(scope="module")
def traffic(sqlite_server: ServiceProcess, real_requests: list[FlightRequest]) -> str:
    """A batch of predictions with the outcome of each, then the server's /metrics."""
    with sqlite_server.client() as client:
        made = client.post("/predict_batch", json={"flights": [r.body for r in real_requests[200:240]]})
        assert made.status_code == 200, made.text
        for i, p in enumerate(made.json()["predictions"]):
            body = {"feedback": {"request_id": p["request_id"], "departure_delay_minutes": 30 if i % 3 == 0 else 0}}
            assert client.post("/feedback", json=body).status_code == 200
        return quiet_metrics(client)


def test_every_monitored_quantity_is_counted_with_its_reference(traffic: str, sqlite_server: ServiceProcess):
    champion = sqlite_server.deployment.champion
    values = metric_samples(traffic, "flight_delay_feature_value_total")
    features = {s["feature"] for s in values if s["model_version"] == champion}
    assert {"temp", "carrier", "dest", SCORE_FEATURE} <= features
    carrier_bins = {s["bin"] for s in values if s["feature"] == "carrier"}
    assert {OTHER, MISSING} <= carrier_bins, "every bin exists, at 0 when empty"
    shares = [s for s in metric_samples(traffic, "flight_delay_reference_fraction") if s["model_version"] == champion]
    assert {s["feature"] for s in shares} == features
    for feature in ("temp", "carrier", SCORE_FEATURE):
        assert metric(traffic, "flight_delay_reference_fraction", feature=feature) == pytest.approx(1.0)
    assert metric(traffic, "flight_delay_feature_value_total", feature=SCORE_FEATURE, model_version=champion) >= 40


def test_feedback_and_serving_gauges(traffic: str, sqlite_server: ServiceProcess):
    champion = sqlite_server.deployment.champion
    assert metric(traffic, "flight_delay_feedback_score_bin_total", model_version=champion) >= 40
    assert metric(traffic, "flight_delay_feedback_score_bin_total", model_version=champion, late="true") >= 14
    assert len(metric_samples(traffic, "flight_delay_feedback_score_bin_total")) >= 40  # 20 bins x 2 outcomes
    assert metric(traffic, "flight_delay_feedback_probability_count", model_version=champion) >= 40
    assert metric(traffic, "flight_delay_model_serving", model_version=champion, variant="champion") == 1
    assert metric(traffic, "flight_delay_champion_loaded") == 1
    assert metric(traffic, "flight_delay_model_offline_log_loss", model_version=champion) > 0
    assert metric(traffic, "flight_delay_feature_age_seconds_le_total", view="origin_hourly_weather", le="+Inf") >= 40
    assert metric(traffic, "flight_delay_feature_ttl_seconds", view="origin_hourly_weather") == 3 * 3600
    assert metric(traffic, "flight_delay_worker_resident_bytes") > 100e6


def test_the_monitoring_asset_reads_drift_and_quality_from_the_service(
    traffic: str, sqlite_server: ServiceProcess, tmp_path: Path
):
    deployment = sqlite_server.deployment
    defs = build_definitions(data_dir=str(deployment.data_dir))
    source = ServiceMetrics(urls=[sqlite_server.url], state_path=str(tmp_path / "last_read.json"))
    resources = {**defs.resources, "metrics_source": source}
    result = dg.materialize(list(defs.assets or []), selection=["model_monitoring"], resources=resources)
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert any(k.startswith("champion/psi/") for k in metadata), sorted(metadata)
    assert metadata["champion/live_feedback"] >= 40 and 0 < metadata["champion/live_log_loss"] < 2
    history = pd.read_parquet(deployment.data_dir / "lake" / "model_monitoring" / "model_monitoring.parquet")
    assert set(history["kind"]) == {"drift", "quality"}

    # The next run's window is what came since: nothing, so no rows, and the history keeps the first.
    again = dg.materialize(list(defs.assets or []), selection=["model_monitoring"], resources=resources)
    assert again.success
    history2 = pd.read_parquet(deployment.data_dir / "lake" / "model_monitoring" / "model_monitoring.parquet")
    assert len(history2) == len(history)


def test_feedback_series_exist_from_the_models_load(serve: Any, serving_deployment: Deployment):
    """increase() misses a series' first sample: each feedback series of a served model is exported
    at 0 from its load (a server that has had no feedback), so that the first feedback counts in
    every rate."""
    (server,) = serve(("no-feedback", serving_deployment, {}))
    try:
        with server.client() as client:
            text = quiet_metrics(client)
    finally:
        server.stop()
    champion = serving_deployment.champion
    for name in (
        "flight_delay_feedback_log_loss_count",
        "flight_delay_feedback_brier_count",
        "flight_delay_feedback_probability_count",
    ):
        samples = [s for s in metric_samples(text, name) if s.get("model_version") == champion]
        assert samples, f"{name} is not exported for {champion} before any feedback"
        assert metric(text, name, model_version=champion) == 0
    outcomes = {s["outcome"] for s in metric_samples(text, "flight_delay_feedback_total")}
    assert outcomes == {"hit", "miss"}
