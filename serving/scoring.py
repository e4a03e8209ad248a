"""From flights to predictions, and from outcomes to live quality: what the service does between
parsing a request and answering it, without the HTTP layer."""

from __future__ import annotations

import itertools
import math
import os
import time
from collections import Counter
from datetime import UTC, datetime
from http import HTTPStatus

from flight_delay.flights import is_late
from serving.api_models import FeedbackResult, Flight, Prediction
from serving.log_writer import PredictionLogWriter
from serving.online import OnlineFeatures, model_inputs
from serving.routing import ModelRouter, Variant
from serving.telemetry import Counts, Telemetry


class ClientError(Exception):
    """A request the service cannot answer, with the HTTP status that says why."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def _clip(p: float) -> float:
    return min(max(p, 1e-7), 1 - 1e-7)


class Scorer:
    """Routes flights to champion or challenger, reads their online features, runs each variant's
    model once per call, counts what it saw and logs every prediction."""

    def __init__(
        self,
        router: ModelRouter,
        online: OnlineFeatures,
        telemetry: Telemetry,
        log: PredictionLogWriter,
        threshold: float,
    ) -> None:
        self.router, self.online, self.telemetry, self.log = router, online, telemetry, log
        self.threshold = threshold
        # Request ids: 64 random bits per worker start, then a counter (uuid4 costs a system call).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()

    def score(self, flights: list[Flight], endpoint: str) -> list[Prediction]:
        routing = self.router.routing  # one snapshot for the whole call
        if routing.champion is None:
            raise ClientError(
                "no champion model is promoted yet; run the pipeline (make demo)", HTTPStatus.SERVICE_UNAVAILABLE
            )
        keys = [f.key for f in flights]
        assigned = [routing.assign(k) for k in keys]
        t0 = time.perf_counter()
        rows = self.online.read(flights, datetime.now(UTC))
        t1 = time.perf_counter()
        probabilities = [0.0] * len(flights)
        scored = []
        for variant, members in _by_variant(assigned):
            spec = variant.model.spec
            whole = len(members) == len(flights)
            inputs = model_inputs(
                flights if whole else [flights[i] for i in members],
                rows if whole else rows.subset(members),
                spec.numeric,
                spec.categorical,
            )
            scores = variant.model.predict_inputs(inputs).tolist()
            for j, i in enumerate(members):
                probabilities[i] = scores[j]
            scored.append((variant, members, inputs, scores))
        t2 = time.perf_counter()
        self.telemetry.stages(endpoint, t1 - t0, t2 - t1)
        counts: Counts = Counter()
        features: list[dict] = [{}] * len(flights)
        for variant, members, inputs, scores in scored:
            for j, i in enumerate(members):
                features[i] = {c: col[j] for c, col in inputs.items()}
            unknown = (rows.unknown[i] for i in members)
            self.telemetry.predictions(variant.tag, variant.name, scores, inputs, variant.model.bins, unknown, counts)
        self.telemetry.online_reads(rows.reads, counts)
        self.telemetry.tally.add(counts)
        return [
            self._respond(keys[i], assigned[i], probabilities[i], features[i], rows.ages[i], rows.unknown[i])
            for i in range(len(flights))
        ]

    def _respond(
        self, key: str, variant: Variant, p: float, features: dict, ages: dict, unknown: list[str]
    ) -> Prediction:
        request_id = f"{self._id_prefix}{next(self._ids):016x}"
        self.log.predicted(request_id, key, variant.tag, variant.name, p, features)
        # Built from values the service made itself: validating them again buys nothing.
        return Prediction.model_construct(
            request_id=request_id,
            flight_key=key,
            probability=p,
            delayed=p >= self.threshold,
            threshold=self.threshold,
            model_version=variant.tag,
            variant=variant.name,
            feature_age_seconds=ages,
            unknown=unknown,
        )

    def feedback(
        self, request_id: str | None, flight_key: str | None, delay_minutes: float, wait_seconds: float
    ) -> FeedbackResult:
        """Record an observed delay against its logged prediction; updates live quality metrics."""
        # The prediction may still be queued: in this worker (flush now) or, one flush interval
        # later, in another.
        self.log.flush()
        found = self.log.lookup(request_id, flight_key)
        if found is None:
            time.sleep(wait_seconds)
            found = self.log.lookup(request_id, flight_key)
        if found is None:
            which = f"request_id {request_id}" if request_id else f"flight_key {flight_key}"
            raise ClientError(f"no logged prediction for {which}", HTTPStatus.NOT_FOUND)
        late = is_late(delay_minutes)
        p = _clip(found["probability"])
        loss = -math.log(p) if late else -math.log(1 - p)
        brier = (p - float(late)) ** 2
        hit = (p >= self.threshold) == late
        self.telemetry.feedback(found["model_version"], found["variant"], hit, loss, brier)
        self.log.feedback(found["request_id"], found["flight_key"], delay_minutes, late)
        return FeedbackResult(
            request_id=found["request_id"],
            flight_key=found["flight_key"],
            model_version=found["model_version"],
            variant=found["variant"],
            probability=found["probability"],
            late=late,
            log_loss=loss,
            brier=brier,
        )


def _by_variant(assigned: list[Variant]) -> list[tuple[Variant, list[int]]]:
    """The variants of a call, each with the positions of its flights."""
    groups: dict[str, tuple[Variant, list[int]]] = {}
    for i, v in enumerate(assigned):
        groups.setdefault(v.tag, (v, []))[1].append(i)
    return list(groups.values())
