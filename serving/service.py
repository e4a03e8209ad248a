"""The prediction service: ``bentoml serve serving.service:FlightDelayService``.

Online features come from Feast through the model's own feature service; champion and challenger
serve side by side behind a sticky split; every prediction is logged durably off the request
path; Prometheus metrics are at ``/metrics``, liveness and readiness at ``/livez`` and ``/readyz``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Annotated

import bentoml
from pydantic import Field

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
)
class FlightDelayService:
    """Departure delay predictions over online features."""

    def __init__(self) -> None:
        self.settings = ServingSettings.from_env()
        s = self.settings
        self.registry = ModelRegistry(s.bentoml_home)
        self.router = ModelRouter(self.registry, s.model_name, s.challenger, s.challenger_weight,
                                  s.refresh_seconds)
        self.store = build_store(s.repo_path, s.feast_state, s.online_store_url)
        self.online = OnlineFeatures(self.store, repo.FLIGHT_DELAY_SERVICE)
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

    # -- prediction ---------------------------------------------------------------------------
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
            for i, p in zip(rows, variant.model.predict_inputs(inputs)):
                probabilities[i] = float(p)
        t2 = time.perf_counter()
        m.STAGE_LATENCY.labels(stage="feature_lookup", endpoint=endpoint).observe(t1 - t0)
        m.STAGE_LATENCY.labels(stage="inference", endpoint=endpoint).observe(t2 - t1)
        for variant, rows, inputs in group_inputs:
            self._observe(variant, [probabilities[i] for i in rows], inputs, [found.unknown[i] for i in rows])
        out = []
        threshold = self.settings.threshold
        for i, flight in enumerate(flights):
            v = assigned[i]
            request_id = uuid.uuid4().hex
            p = probabilities[i]
            row = {c: found.inputs[c][i] for c in found.inputs}
            self.log.predicted(request_id, keys[i], v.tag, v.name, p, row)
            out.append(Prediction(
                request_id=request_id, flight_key=keys[i], probability=p, delayed=p >= threshold,
                threshold=threshold, model_version=v.tag, variant=v.name,
                feature_age_seconds=found.ages[i], unknown=found.unknown[i],
            ))
        return out

    def _observe(self, v: Variant, scores: list[float], inputs: dict, unknown: list[list[str]]) -> None:
        """Metrics of one variant's share of a call, aggregated: one increment per series."""
        m.PREDICTIONS.labels(model_version=v.tag, variant=v.name).inc(len(scores))
        score = m.SCORE.labels(model_version=v.tag, variant=v.name)
        for p in scores:
            score.observe(p)
        for feature, edges in v.model.bins.items():
            if feature in inputs:
                for b, n in bin_counts(edges, inputs[feature]).items():
                    m.FEATURE_BIN.labels(feature=feature, bin=b, model_version=v.tag, variant=v.name).inc(n)
        for entity, n in Counter(e for row in unknown for e in row).items():
            m.UNKNOWN.labels(entity=entity, model_version=v.tag, variant=v.name).inc(n)

    def _timed(self, endpoint: str, fn, *args):
        started = time.perf_counter()
        try:
            result = fn(*args)
        except ClientError:
            m.REQUESTS.labels(endpoint=endpoint, outcome="client_error").inc()
            raise
        except Exception:
            m.REQUESTS.labels(endpoint=endpoint, outcome="server_error").inc()
            raise
        m.REQUESTS.labels(endpoint=endpoint, outcome="ok").inc()
        m.REQUEST_LATENCY.labels(endpoint=endpoint).observe(time.perf_counter() - started)
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

