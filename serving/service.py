"""The prediction service: ``bentoml serve serving.service:FlightDelayService``.

Online features come from Feast through the model's own feature service; champion and challenger
serve side by side behind a sticky split; every prediction is logged durably off the request
path; Prometheus metrics are at ``/metrics``, liveness and readiness at ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time
from collections.abc import Awaitable
from typing import Annotated, Any, TypeVar

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse, Response
from threadpoolctl import threadpool_limits

from serving.api_models import BatchPredictions, Feedback, FeedbackResult, Flight, Prediction, answer_json, answers_json
from serving.middleware import BearerTokenMiddleware, BodyLimitMiddleware, install_traffic_middleware
from serving.settings import ServingSettings

with bentoml.importing():
    from features import FLIGHT_DELAY_SERVICE
    from features.store import build_store, redact
    from flight_delay.registry import ModelRegistry
    from serving.log_writer import PredictionLogWriter
    from serving.online import OnlineFeatures
    from serving.routing import ModelRouter
    from serving.scoring import Blocking, Scorer, ServiceError
    from serving.telemetry import Telemetry

log = logging.getLogger(__name__)
SWITCH_INTERVAL_SECONDS = 0.0005

T = TypeVar("T")

REQUEST_TIMEOUT_SECONDS = 30.0
install_traffic_middleware()
UNTRACED_PATHS = [
    p
    for p in os.environ.get(
        "FLIGHT_DELAY_UNTRACED_PATHS", "/predict,/predict_batch,/feedback,/livez,/readyz,/metrics"
    ).split(",")
    if p
]
API_PATHS = frozenset({"/predict", "/predict_batch", "/feedback"})
JSON = "application/json"
# Read once, when the service class is defined: its server settings and request limits.
SETTINGS = ServingSettings.from_env()
WORKERS = int(os.environ.get("FLIGHT_DELAY_WORKERS", "1"))
# Server settings shared with the benchmark's floor service, so both are measured alike.
SERVICE_CONFIG: dict[str, Any] = {
    # BentoML divides the service's limit among its workers: the setting is per worker.
    "traffic": {"timeout": REQUEST_TIMEOUT_SECONDS, "max_concurrency": SETTINGS.max_concurrency * WORKERS},
    "http": {"port": 3000},
    # One process per core scales a pod; on Kubernetes prefer 1 and more replicas.
    "workers": WORKERS,
    # One log line per request costs more CPU than it tells: requests are counted in /metrics.
    "logging": {"access": {"enabled": False}},
    # A span per request costs a noticeable share of a prediction's CPU, exported or not; these
    # paths are left out unless FLIGHT_DELAY_UNTRACED_PATHS says otherwise ("" traces everything).
    "tracing": {"excluded_urls": UNTRACED_PATHS},
}


def add_request_limits(service: Any, settings: ServingSettings = SETTINGS) -> Any:
    """The body limit (and the bearer token, when one is set) in front of ``service``'s API."""
    service.add_asgi_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.api_token:
        service.add_asgi_middleware(BearerTokenMiddleware, token=settings.api_token, paths=API_PATHS)
    return service


@add_request_limits
@bentoml.service(name="flight_delay", **SERVICE_CONFIG)
class FlightDelayService:
    """Departure delay predictions over online features."""

    def __init__(self) -> None:
        # One BLAS thread per worker: workers already take one core each, and a second OpenBLAS
        # thread spinning for the matrix products made a batch slower, not faster.
        threadpool_limits(1)
        s = self.settings = ServingSettings.from_env()
        self.registry = ModelRegistry.of(s.layout)
        store = build_store(s.repo_path, s.layout.feast_state, s.online_store_url, s.layout.s3)
        self.online = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, s.feature_cache_seconds, s.feature_cache_entries)
        # A model whose inputs the online features cannot build is refused when it is loaded.
        self.router = ModelRouter(self.registry, s.model_name, s.refresh_seconds, can_serve=self.online.can_serve)
        self.telemetry = Telemetry()
        self.telemetry.views({v.name: v.ttl for v in self.online.views})
        self.log = PredictionLogWriter(
            s.layout.prediction_log,
            s.log_flush_seconds,
            max_backlog=s.log_max_backlog,
            retention_days=s.log_retention_days,
            database_url=s.layout.database_url,
        )
        # The local SQLite store (WAL) is read on the loop; a network store (Redis) on threads.
        self.store_calls = Blocking(s.io_threads, s.store_timeout_seconds, inline=s.online_store_url is None)
        self.log_calls = Blocking(s.io_threads, s.store_timeout_seconds)
        self.scorer = Scorer(
            self.router, self.online, self.telemetry, self.log, s.threshold, self.store_calls, self.log_calls
        )
        store_name = redact(s.online_store_url) if s.online_store_url else "sqlite"
        shared = redact(s.layout.database_url) if s.layout.database_url else "files in the data folder"
        log.info(
            "flight_delay service: data %s, online store %s, prediction log and champion history %s",
            s.layout.root,
            store_name,
            shared,
        )
        # Startup leaves long-lived objects by the hundred thousand (TF, Feast, pydantic); freezing
        # them keeps full collections over them off the request path.
        gc.collect()
        gc.freeze()
        # The prediction log's writer (and a network store's reads) run on threads beside the
        # event loop; when one of them holds the GIL, the loop waits up to a switch interval for
        # it (5 ms by default), which under load became the p99. A shorter interval bounds that wait.
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)

    def __is_ready__(self) -> bool:
        """Ready with a champion loaded, the online store answering and the log writer accepting.
        BentoML calls it on a thread, so a slow store delays the probe, not the worker."""
        reasons = []
        if self.scorer.follow_routing().champion is None:
            reasons.append(f"no champion loaded ({self.router.last_error or 'none promoted'})")
        try:
            self.online.check()
        except Exception as exc:
            reasons.append(f"online store not answering: {type(exc).__name__}: {exc}")
        log_status = self.log.status()
        if not log_status.ready:
            reasons.append(
                f"prediction log not accepting: backlog {log_status.backlog}/{log_status.max_backlog}, "
                f"last error {log_status.last_error}"
            )
        if reasons:
            log.warning("not ready: %s", "; ".join(reasons))
        return not reasons

    @bentoml.on_shutdown
    def _drain(self) -> None:
        self.router.close()
        self.log.close()
        self.telemetry.close()
        self.store_calls.close()
        self.log_calls.close()

    async def _answer(self, endpoint: str, work: Awaitable[T]) -> T | JSONResponse:
        started = time.perf_counter()
        try:
            result = await work
        except ServiceError as exc:
            self.telemetry.request(endpoint, "client_error" if exc.status < 500 else "server_error")
            # Answered here: BentoML would wrap a 4xx body in a list and replace a 5xx message
            # ("no champion yet") with a generic one.
            return JSONResponse({"error": exc.message}, status_code=exc.status.value)
        except Exception:
            self.telemetry.request(endpoint, "server_error")
            raise
        self.telemetry.request(endpoint, "ok", time.perf_counter() - started)
        return result

    # The answers are encoded here (orjson) and returned as a Response, which BentoML passes
    # through: its own path would build and serialize a pydantic model per prediction. The
    # declared return types give the OpenAPI schema, which the encoded bodies match.
    @bentoml.api
    async def predict(self, flight: Flight) -> Prediction:
        """Probability that one flight leaves 15 minutes late or more."""

        async def run() -> Response:
            answers = await self.scorer.score([flight], "predict")
            return Response(answer_json(answers[0]), media_type=JSON)

        return await self._answer("predict", run())

    @bentoml.api
    async def predict_batch(
        self, flights: Annotated[list[Flight], Field(min_length=1, max_length=SETTINGS.max_batch)]
    ) -> BatchPredictions:
        """Many flights (at most FLIGHT_DELAY_MAX_BATCH): one online-feature lookup and one model
        call per variant."""

        async def run() -> Response:
            return Response(answers_json(await self.scorer.score(flights, "predict_batch")), media_type=JSON)

        return await self._answer("predict_batch", run())

    @bentoml.api
    async def feedback(self, feedback: Feedback) -> FeedbackResult:
        """Record the observed delay of a predicted flight; updates live quality metrics."""
        work = self.scorer.feedback(
            feedback.request_id,
            feedback.flight_key,
            feedback.departure_delay_minutes,
            wait_seconds=self.settings.log_flush_seconds * 1.5,
        )
        return await self._answer("feedback", work)
