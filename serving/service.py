"""The prediction service: ``bentoml serve serving.service:FlightDelayService``.

Online features come from Feast through the model's own feature service; champion and challenger
serve side by side behind a sticky split; every prediction is logged durably off the request
path; Prometheus metrics are at ``/metrics``, liveness and readiness at ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Annotated, Any, TypeVar

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from serving.api_models import BatchPredictions, Feedback, FeedbackResult, Flight, Prediction
from serving.middleware import install_request_timeout_fix

with bentoml.importing():
    from features import FLIGHT_DELAY_SERVICE
    from features.store import build_store
    from flight_delay.registry import ModelRegistry
    from serving.log_writer import PredictionLogWriter
    from serving.online import OnlineFeatures
    from serving.routing import ModelRouter
    from serving.scoring import ClientError, Scorer
    from serving.settings import ServingSettings
    from serving.telemetry import Telemetry

log = logging.getLogger(__name__)
T = TypeVar("T")

REQUEST_TIMEOUT_SECONDS = 30.0
install_request_timeout_fix()
UNTRACED_PATHS = [
    p
    for p in os.environ.get(
        "FLIGHT_DELAY_UNTRACED_PATHS", "/predict,/predict_batch,/feedback,/livez,/readyz,/metrics"
    ).split(",")
    if p
]
MAX_BATCH_SCHEMA = 100_000  # the documented bound; the configured one is checked per call
# Server settings shared with the benchmark's floor service, so both are measured alike.
SERVICE_CONFIG: dict[str, Any] = {
    "traffic": {"timeout": REQUEST_TIMEOUT_SECONDS},
    "http": {"port": 3000},
    # One process per core scales a pod; on Kubernetes prefer 1 and more replicas.
    "workers": int(os.environ.get("FLIGHT_DELAY_WORKERS", "1")),
    # One log line per request costs more CPU than it tells: requests are counted in /metrics.
    "logging": {"access": {"enabled": False}},
    # A span per request costs a noticeable share of a prediction's CPU, exported or not; these
    # paths are left out unless FLIGHT_DELAY_UNTRACED_PATHS says otherwise ("" traces everything).
    "tracing": {"excluded_urls": UNTRACED_PATHS},
}


@bentoml.service(name="flight_delay", **SERVICE_CONFIG)
class FlightDelayService:
    """Departure delay predictions over online features."""

    def __init__(self) -> None:
        # One BLAS thread per worker: workers already take one core each, and a second OpenBLAS
        # thread spinning for the matrix products made a batch slower, not faster.
        threadpool_limits(1)
        s = self.settings = ServingSettings.from_env()
        self.registry = ModelRegistry(s.layout.bentoml_home)
        self.router = ModelRouter(self.registry, s.model_name, s.refresh_seconds, can_serve=lambda spec: None)
        self.online = OnlineFeatures(
            build_store(s.repo_path, s.layout.feast_state, s.online_store_url),
            FLIGHT_DELAY_SERVICE,
            s.feature_cache_seconds,
        )
        self.telemetry = Telemetry()
        self.log = PredictionLogWriter(s.layout.prediction_log, s.log_flush_seconds)
        self.scorer = Scorer(self.router, self.online, self.telemetry, self.log, s.threshold)
        log.info("flight_delay service: data %s, online store %s", s.layout.root, s.online_store_url or "sqlite")
        # Startup leaves long-lived objects by the hundred thousand (TF, Feast, pydantic); freezing
        # them keeps full collections over them off the request path.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        if self.router.routing.champion is None:
            return False
        try:
            self.online.check()
        except Exception:
            log.exception("online store not answering")
            return False
        return True

    @bentoml.on_shutdown
    def _drain(self) -> None:
        self.router.close()
        self.log.close()
        self.telemetry.close()

    def _answer(self, endpoint: str, fn: Callable[[], T]) -> T | JSONResponse:
        started = time.perf_counter()
        try:
            result = fn()
        except ClientError as exc:
            self.telemetry.request(endpoint, "client_error")
            # Answered here: BentoML would wrap a 4xx body in a list and replace a 503's message
            # ("no champion yet") with a generic one.
            return JSONResponse({"error": exc.message}, status_code=exc.status.value)
        except Exception:
            self.telemetry.request(endpoint, "server_error")
            raise
        self.telemetry.request(endpoint, "ok", time.perf_counter() - started)
        return result

    @bentoml.api
    async def predict(self, flight: Flight) -> Prediction:
        """Probability that one flight leaves 15 minutes late or more."""
        return self._answer("predict", lambda: self.scorer.score([flight], "predict")[0])

    @bentoml.api
    async def predict_batch(
        self, flights: Annotated[list[Flight], Field(min_length=1, max_length=MAX_BATCH_SCHEMA)]
    ) -> BatchPredictions:
        """Many flights: one online-feature lookup and one model call per variant."""

        def run() -> BatchPredictions:
            if len(flights) > self.settings.max_batch:
                raise ClientError(
                    f"batch of {len(flights)} flights exceeds the limit of {self.settings.max_batch}; "
                    "split it (FLIGHT_DELAY_MAX_BATCH sets the limit)",
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                )
            return BatchPredictions(predictions=self.scorer.score(flights, "predict_batch"))

        return self._answer("predict_batch", run)

    @bentoml.api
    async def feedback(self, feedback: Feedback) -> FeedbackResult:
        """Record the observed delay of a predicted flight; updates live quality metrics."""
        return self._answer(
            "feedback",
            lambda: self.scorer.feedback(
                feedback.request_id,
                feedback.flight_key,
                feedback.departure_delay_minutes,
                wait_seconds=self.settings.log_flush_seconds * 1.5,
            ),
        )
