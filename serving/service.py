"""The prediction service: ``bentoml serve serving.service:FlightDelayService``.

Online features come from Feast through the model's own feature service; champion and challenger
serve side by side behind a sticky split; every prediction is logged durably off the request
path; Prometheus metrics are at ``/metrics``, liveness and readiness at ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import gc
import itertools
import logging
import math
import os
import time
from collections import Counter
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from pydantic import Field
from starlette.responses import JSONResponse
from threadpoolctl import threadpool_limits

from serving import metrics as m
from serving.io import BatchPredictions, Feedback, FeedbackResult, Flight, Prediction
from serving.middleware import install_request_timeout_fix

with bentoml.importing():
    import features as repo
    from features.store import build_store
    from flight_delay.features import LATE_MINUTES
    from flight_delay.model import bin_counts
    from flight_delay.registry import ModelRegistry
    from serving.online import OnlineFeatures
    from serving.prediction_log import PredictionLog
    from serving.routing import ModelRouter, Variant
    from serving.settings import ServingSettings

log = logging.getLogger(__name__)

REQUEST_TIMEOUT_SECONDS = 30.0
install_request_timeout_fix()
UNTRACED_PATHS = [p for p in os.environ.get(
    "FLIGHT_DELAY_UNTRACED_PATHS", "/predict,/predict_batch,/feedback,/livez,/readyz,/metrics").split(",") if p]
MAX_BATCH_SCHEMA = 100_000  # the documented bound; the configured one (default 1,000) is checked per call


class ClientError(bentoml.exceptions.BentoMLException):
    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message, error_code=status)


@bentoml.service(
    name="flight_delay",
    traffic={"timeout": REQUEST_TIMEOUT_SECONDS},
    http={"port": 3000},
    # One process per core scales a pod; on Kubernetes prefer 1 and more replicas.
    workers=int(os.environ.get("FLIGHT_DELAY_WORKERS", "1")),
    # One log line per request costs more CPU than it tells: requests are counted in /metrics.
    logging={"access": {"enabled": False}},
    # A span per request costs ~7% of a prediction's CPU, exported or not; these paths are left
    # out unless FLIGHT_DELAY_UNTRACED_PATHS says otherwise ("" traces everything).
    tracing={"excluded_urls": UNTRACED_PATHS},
)
class FlightDelayService:
    """Departure delay predictions over online features."""

    def __init__(self) -> None:
        # One BLAS thread per worker: workers already take one core each, and a second OpenBLAS
        # thread spinning for the matrix products made a 500-row batch 5x slower, not faster.
        threadpool_limits(1)
        self.settings = ServingSettings.from_env()
        s = self.settings
        self.registry = ModelRegistry(s.bentoml_home)
        self.router = ModelRouter(self.registry, s.model_name, s.challenger, s.challenger_weight,
                                  s.refresh_seconds)
        self.store = build_store(s.repo_path, s.feast_state, s.online_store_url)
        self.online = OnlineFeatures(self.store, repo.FLIGHT_DELAY_SERVICE, s.feature_cache_seconds)
        self.tally = m.CounterTally()
        # Request ids: 64 random bits per worker start, then a counter (uuid4 costs a system call).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        self._series: dict[tuple, Any] = {}
        self.log = PredictionLog(s.prediction_log, s.log_flush_seconds)
        log.info("flight_delay service: data %s, online store %s", s.data_dir, s.online_store_url or "sqlite")
        # Startup leaves ~500k long-lived objects (TF, Feast, pydantic); freezing them keeps full
        # collections (~300 ms each over them) off the request path.
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
        self.tally.close()

    # -- prediction ---------------------------------------------------------------------------
    def _child(self, metric: Any, *labels: str) -> Any:
        """A metric's series, looked up once (``labels()`` validates and locks on every call)."""
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def _score(self, flights: list[Flight], endpoint: str) -> list[Prediction]:
        routing = self.router.routing  # one snapshot for the whole call
        if routing.champion is None:
            raise ClientError("no champion model is promoted yet; run the pipeline (make demo)",
                              HTTPStatus.SERVICE_UNAVAILABLE)
        keys = [f.key for f in flights]
        assigned = [routing.assign(k) for k in keys]
        spec = routing.champion.model.spec
        t0 = time.perf_counter()
        found = self.online.lookup(flights, datetime.now(timezone.utc), spec.numeric, spec.categorical)
        t1 = time.perf_counter()
        probabilities = [0.0] * len(flights)
        groups: dict[str, tuple[Variant, list[int]]] = {}
        for i, v in enumerate(assigned):
            groups.setdefault(v.tag, (v, []))[1].append(i)
        group_inputs = []
        for variant, rows in groups.values():
            if len(rows) == len(flights):
                inputs = found.inputs
            else:
                inputs = {c: [col[i] for i in rows] for c, col in found.inputs.items()}
            group_inputs.append((variant, rows, inputs))
            for i, p in zip(rows, variant.model.predict_inputs(inputs).tolist()):
                probabilities[i] = p
        t2 = time.perf_counter()
        self._child(m.STAGE_LATENCY, "feature_lookup", endpoint).observe(t1 - t0)
        self._child(m.STAGE_LATENCY, "inference", endpoint).observe(t2 - t1)
        counts: Counter[tuple[Any, tuple[str, ...]]] = Counter(
            {(m.ONLINE_ROWS, (view, source)): n for (view, source), n in found.reads.items()})
        for variant, rows, inputs in group_inputs:
            self._observe(variant, [probabilities[i] for i in rows], inputs, [found.unknown[i] for i in rows],
                          counts)
        self.tally.add(counts)
        out = []
        threshold = self.settings.threshold
        columns = list(found.inputs.items())
        for i in range(len(flights)):
            v = assigned[i]
            request_id = f"{self._id_prefix}{next(self._ids):016x}"
            p = probabilities[i]
            self.log.predicted(request_id, keys[i], v.tag, v.name, p, {c: col[i] for c, col in columns})
            # Built from values the service made itself: validating them again buys nothing.
            out.append(Prediction.model_construct(
                request_id=request_id, flight_key=keys[i], probability=p, delayed=p >= threshold,
                threshold=threshold, model_version=v.tag, variant=v.name,
                feature_age_seconds=found.ages[i], unknown=found.unknown[i],
            ))
        return out

    def _observe(self, v: Variant, scores: list[float], inputs: dict, unknown: list[list[str]],
                 counts: Counter) -> None:
        """One variant's share of a call: counters summed into ``counts``, scores observed."""
        tag, name = v.tag, v.name
        counts[(m.PREDICTIONS, (tag, name))] += len(scores)
        for feature, edges in v.model.bins.items():
            values = inputs.get(feature)
            if values is None:
                continue
            for b, n in bin_counts(edges, values).items():
                counts[(m.FEATURE_BIN, (feature, b, tag, name))] += n
        for row in unknown:
            for entity in row:
                counts[(m.UNKNOWN, (entity, tag, name))] += 1
        score = self._child(m.SCORE, tag, name)
        for p in scores:
            score.observe(p)

    def _timed(self, endpoint: str, fn, *args):
        started = time.perf_counter()
        try:
            result = fn(*args)
        except ClientError as exc:
            self._child(m.REQUESTS, endpoint, "client_error").inc()
            # Answered here: BentoML would wrap a 4xx body in a list and replace a 503's message
            # ("no champion yet") with a generic one.
            return JSONResponse({"error": exc.message}, status_code=exc.error_code.value)
        except Exception:
            self._child(m.REQUESTS, endpoint, "server_error").inc()
            raise
        self._child(m.REQUESTS, endpoint, "ok").inc()
        self._child(m.REQUEST_LATENCY, endpoint).observe(time.perf_counter() - started)
        return result

    @bentoml.api
    async def predict(self, flight: Flight) -> Prediction:
        """Probability that one flight leaves 15 minutes late or more."""
        return self._timed("predict", lambda: self._score([flight], "predict")[0])

    @bentoml.api
    async def predict_batch(
        self, flights: Annotated[list[Flight], Field(min_length=1, max_length=MAX_BATCH_SCHEMA)]
    ) -> BatchPredictions:
        """Many flights: one online-feature lookup and one model call per variant."""
        def run() -> BatchPredictions:
            if len(flights) > self.settings.max_batch:
                raise ClientError(
                    f"batch of {len(flights)} flights exceeds the limit of {self.settings.max_batch}; "
                    "split it (FLIGHT_DELAY_MAX_BATCH sets the limit)", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return BatchPredictions(predictions=self._score(flights, "predict_batch"))
        return self._timed("predict_batch", run)

    @bentoml.api
    async def feedback(self, feedback: Feedback) -> FeedbackResult:
        """Record the observed delay of a predicted flight; updates live quality metrics."""
        def run() -> FeedbackResult:
            # The prediction may still be queued: in this worker (flush now) or, one flush
            # interval later, in another.
            self.log.flush()
            found = self.log.lookup(feedback.request_id, feedback.flight_key)
            if found is None:
                time.sleep(self.settings.log_flush_seconds * 1.5)
                found = self.log.lookup(feedback.request_id, feedback.flight_key)
            if found is None:
                which = (f"request_id {feedback.request_id}" if feedback.request_id
                         else f"flight_key {feedback.flight_key}")
                raise ClientError(f"no logged prediction for {which}", HTTPStatus.NOT_FOUND)
            late = feedback.departure_delay_minutes >= LATE_MINUTES
            p = min(max(found["probability"], 1e-7), 1 - 1e-7)
            loss = -math.log(p) if late else -math.log(1 - p)
            brier = (p - float(late)) ** 2
            labels = {"model_version": found["model_version"], "variant": found["variant"]}
            hit = (p >= self.settings.threshold) == late
            m.FEEDBACK.labels(**labels, outcome="hit" if hit else "miss").inc()
            m.FEEDBACK_LOG_LOSS.labels(**labels).observe(loss)
            m.FEEDBACK_BRIER.labels(**labels).observe(brier)
            self.log.feedback(found["request_id"], found["flight_key"], feedback.departure_delay_minutes, late)
            return FeedbackResult(request_id=found["request_id"], flight_key=found["flight_key"],
                                  model_version=found["model_version"], variant=found["variant"],
                                  probability=found["probability"], late=late, log_loss=loss, brier=brier)
        return self._timed("feedback", run)

