"""From flights to predictions, and from outcomes to live quality: what the service does between
parsing a request and answering it, without the HTTP layer.

Nothing here blocks the worker's event loop: online-store reads that the cache cannot answer and
the prediction log's lookups and writes run on a few threads of the worker (:class:`Blocking`),
each with a deadline, so a slow or stalled store or log delays only the requests that need it,
never health probes or the requests the cache answers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, TypeVar

import numpy as np

from flight_delay.flights import is_late
from flight_delay.prediction_log import FeedbackConflict, RecordedFeedback
from serving.api_models import Answer, FeedbackResult, Flight
from serving.log_writer import LogUnavailable, PredictionLogWriter
from serving.online import OnlineFeatures, model_inputs
from serving.routing import ModelRouter, Routing, Variant
from serving.telemetry import Counts, Telemetry

T = TypeVar("T")
log = logging.getLogger(__name__)


class ServiceError(Exception):
    """A request the service answers with an error status and a message that says why."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class Blocking:
    """Blocking work (store reads, log I/O) on ``threads`` threads of this worker, each call with a
    deadline: past it the request gets 503 and the loop moves on (the thread finishes in its own
    time; the store's own timeouts bound that).

    ``inline`` runs the calls on the loop instead, for work that never waits: a read of the local
    SQLite online store in WAL mode (a reader never waits for a writer; the read costs CPU as
    inference does). A thread hop costs more than such a read, and a second thread holding the GIL
    delays the loop by up to a switch interval each time: measured here, inline SQLite reads
    doubled the highest rate with p99 under 50 ms."""

    def __init__(self, threads: int, timeout: float, inline: bool = False) -> None:
        self.timeout = timeout
        self.inline = inline
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="blocking-io")

    async def run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        if self.inline:
            return fn(*args)
        future = asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        try:
            return await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise ServiceError(
                f"{what} did not answer within {self.timeout:g} s", HTTPStatus.SERVICE_UNAVAILABLE
            ) from None

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


FEEDBACK_POLL_SECONDS = 0.02  # how often feedback looks again for a prediction another worker logs
# Backpressure: while the prediction log's writer is behind (half its bound waits), a call waits
# on the loop, polling this often, for at most LOG_WAIT_SECONDS before it is scored: the writer
# thread gets the CPU the loop would have spent, and saturating clients slow down instead of
# meeting the bound's 503.
LOG_POLL_SECONDS = 0.005
LOG_WAIT_SECONDS = 2.0
SHADOW_WARN_SECONDS = 60.0  # a failing shadow is counted on every call, written to the log this often


def _clip(p: float) -> float:
    return min(max(p, 1e-7), 1 - 1e-7)


class Scorer:
    """Routes flights to champion or challenger, reads their online features, runs each variant's
    model once per call, counts what it saw and logs every prediction.

    A challenger in shadow mode scores every flight of the call beside the champion, from the same
    rows read for it but with its own feature spec, in one batch; its probability is logged with
    the champion's prediction and counted as the challenger's. It never changes or fails an
    answer: a shadow that raises or gives a non-finite probability is counted
    (``flight_delay_shadow_errors_total``) and those flights are logged without a shadow figure.
    """

    def __init__(
        self,
        router: ModelRouter,
        online: OnlineFeatures,
        telemetry: Telemetry,
        log: PredictionLogWriter,
        threshold: float,
        store_calls: Blocking,
        log_calls: Blocking,
    ) -> None:
        self.router, self.online, self.telemetry, self.log = router, online, telemetry, log
        self.threshold = threshold
        # Separate threads for the two, so that feedback waiting for the log never delays a
        # prediction's store read.
        self.store_calls, self.log_calls = store_calls, log_calls
        self._routing: Any = None  # the routing the telemetry last saw
        # Request ids: 64 random bits per worker start, then a counter (uuid4 costs a system call).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count()
        self._shadow_warned: dict[str, float] = {}  # tag -> when its last failure was written to the log

    def follow_routing(self) -> Routing:
        """The router's current routing; when it changed (a promotion, a rollback, a challenger),
        the telemetry of what it serves first."""
        routing = self.router.routing
        if routing is not self._routing:
            self.telemetry.serving(self._routing, routing)
            self._routing = routing
        return routing

    async def _read_features(self, flights: list[Flight]) -> Any:
        lookup = self.online.begin(flights, datetime.now(UTC))
        if lookup.needs_store:
            try:
                await self.store_calls.run("the online store", lookup.fetch)
            except ServiceError:
                raise
            except Exception as exc:  # the store's own error: connection refused, timeout, locked
                raise ServiceError(
                    f"the online store is unavailable: {type(exc).__name__}: {exc}", HTTPStatus.SERVICE_UNAVAILABLE
                ) from exc
        return lookup.finish()

    async def score(self, flights: list[Flight], endpoint: str) -> list[Answer]:
        routing = self.follow_routing()  # one snapshot for the whole call
        if routing.champion is None:
            raise ServiceError(
                "no champion model is promoted yet; run the pipeline (make demo)", HTTPStatus.SERVICE_UNAVAILABLE
            )
        if self.log.crowded():
            await self._log_room()
        keys = [f.key for f in flights]
        assigned = [routing.assign(k) for k in keys]
        t0 = time.perf_counter()
        rows = await self._read_features(flights)
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
                if not math.isfinite(scores[j]):
                    raise ServiceError(
                        f"model {variant.tag} gave a non-finite probability ({scores[j]}) for "
                        f"{keys[i]}; expected a number in [0, 1]",
                        HTTPStatus.INTERNAL_SERVER_ERROR,
                    )
                probabilities[i] = scores[j]
            scored.append((variant, members, inputs, scores))
        t2 = time.perf_counter()
        counts: Counts = Counter()
        shadow = routing.shadow
        shadow_scores: list[float | None] = [None] * len(flights)
        if shadow is not None:
            shadow_scores = self._shadow(shadow, flights, rows, counts)
            self.telemetry.stages(endpoint, t1 - t0, t2 - t1, time.perf_counter() - t2)
        else:
            self.telemetry.stages(endpoint, t1 - t0, t2 - t1)
        features: list[dict] = [{}] * len(flights)
        for variant, members, inputs, scores in scored:
            names = list(inputs)
            for i, values in zip(members, zip(*inputs.values())):
                features[i] = dict(zip(names, values))
            unknown = (rows.unknown[i] for i in members)
            self.telemetry.predictions(
                variant.tag, variant.name, scores, inputs, variant.model.reference, unknown, counts
            )
        self.telemetry.online_reads(rows.reads, rows.future, counts)
        self.telemetry.ages(rows.ages)
        self.telemetry.tally.add(counts)
        shadow_tag = shadow.tag if shadow is not None else None
        ids = [f"{self._id_prefix}{next(self._ids):016x}" for _ in flights]
        try:
            self.log.predicted_many(
                [
                    (
                        ids[i],
                        keys[i],
                        assigned[i].tag,
                        assigned[i].name,
                        probabilities[i],
                        features[i],
                        rows.times[i],
                        shadow_tag if shadow_scores[i] is not None else None,
                        shadow_scores[i],
                    )
                    for i in range(len(flights))
                ]
            )
        except LogUnavailable as exc:  # a prediction the log cannot keep is not served
            raise ServiceError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE) from exc
        # Built from values the service made itself: validating them again buys nothing.
        threshold = self.threshold
        return [
            Answer(
                ids[i],
                keys[i],
                probabilities[i],
                probabilities[i] >= threshold,
                threshold,
                assigned[i].tag,
                assigned[i].name,
                rows.ages_of(i),
                rows.unknown[i],
            )
            for i in range(len(flights))
        ]

    async def _log_room(self) -> None:
        """Wait, without holding the loop, until the log's writer catches up or LOG_WAIT_SECONDS
        pass (then the log's own bound decides)."""
        deadline = time.monotonic() + LOG_WAIT_SECONDS
        while self.log.crowded() and time.monotonic() < deadline:
            await asyncio.sleep(LOG_POLL_SECONDS)

    def _shadow(self, shadow: Variant, flights: list[Flight], rows: Any, counts: Counts) -> list[float | None]:
        """The shadow's probability for each flight (None where it failed), one batch call; its
        predictions and feature bins counted as the challenger's, its failures as errors."""
        spec = shadow.model.spec
        try:
            inputs = model_inputs(flights, rows, spec.numeric, spec.categorical)
            scores = np.asarray(shadow.model.predict_inputs(inputs), dtype="float64").reshape(-1)
            if len(scores) != len(flights):
                raise ValueError(f"expected {len(flights)} probabilities, got {len(scores)}")
        except Exception as exc:  # the shadow's own failure is never the request's
            self._shadow_failed(shadow.tag, len(flights), f"{type(exc).__name__}: {exc}", counts)
            return [None] * len(flights)
        finite = np.isfinite(scores)
        if not finite.all():
            bad = int((~finite).sum())
            self._shadow_failed(shadow.tag, bad, f"{bad} non-finite probabilities of {len(flights)}", counts)
            kept = np.flatnonzero(finite).tolist()
            inputs = {c: [col[i] for i in kept] for c, col in inputs.items()}
        else:
            kept = range(len(flights))
        good = scores[finite].tolist()
        unknown = (rows.unknown[i] for i in kept)
        self.telemetry.predictions(shadow.tag, shadow.name, good, inputs, shadow.model.reference, unknown, counts)
        return [float(p) if ok else None for p, ok in zip(scores.tolist(), finite.tolist())]

    def _shadow_failed(self, tag: str, flights: int, why: str, counts: Counts) -> None:
        self.telemetry.shadow_errors(tag, flights, counts)
        now = time.monotonic()
        if now - self._shadow_warned.get(tag, -math.inf) >= SHADOW_WARN_SECONDS:
            self._shadow_warned[tag] = now
            log.warning(
                "shadow challenger %s could not score %d flights (%s); the champion answered them "
                "(counted in flight_delay_shadow_errors_total, logged at most every %g s)",
                tag,
                flights,
                why,
                SHADOW_WARN_SECONDS,
            )

    async def feedback(
        self, request_id: str | None, flight_key: str | None, delay_minutes: float, wait_seconds: float
    ) -> FeedbackResult:
        """Record an observed delay against its logged prediction, once: the same outcome again is
        answered without being counted twice, a different one is a conflict (409)."""
        late = is_late(delay_minutes)

        def record() -> RecordedFeedback:
            return self.log.record_feedback(
                request_id, flight_key, departure_delay_minutes=delay_minutes, late=late, wait_seconds=0.0
            )

        # A prediction not logged yet may be in another worker's queue: look again until
        # ``wait_seconds`` have passed, waiting on the loop between looks, not on a thread.
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                found = await self.log_calls.run("the prediction log", record)
                break
            except FeedbackConflict as exc:
                raise ServiceError(str(exc), HTTPStatus.CONFLICT) from exc
            except LookupError as exc:
                if time.monotonic() >= deadline:
                    raise ServiceError(str(exc), HTTPStatus.NOT_FOUND) from exc
                await asyncio.sleep(FEEDBACK_POLL_SECONDS)
            except LogUnavailable as exc:
                raise ServiceError(str(exc), HTTPStatus.SERVICE_UNAVAILABLE) from exc
        loss, brier = self._quality(found.model_version, found.variant, found.probability, late, found.first)
        if found.shadow_model_version is not None and found.shadow_probability is not None:
            # The shadow's live quality on the same outcome, counted once as well.
            self._quality(found.shadow_model_version, "challenger", found.shadow_probability, late, found.first)
        return FeedbackResult(
            request_id=found.request_id,
            flight_key=found.flight_key,
            model_version=found.model_version,
            variant=found.variant,
            probability=found.probability,
            late=late,
            log_loss=loss,
            brier=brier,
            shadow_model_version=found.shadow_model_version,
            shadow_probability=found.shadow_probability,
        )

    def _quality(self, tag: str, variant: str, probability: float, late: bool, first: bool) -> tuple[float, float]:
        """Log loss and squared error of ``probability`` for the outcome ``late``, counted in the
        live quality of ``tag`` as ``variant`` when ``first`` (each prediction's outcome once)."""
        p = _clip(probability)
        loss = -math.log(p) if late else -math.log(1 - p)
        brier = (p - float(late)) ** 2
        if first:
            hit = (p >= self.threshold) == late
            self.telemetry.feedback(tag, variant, probability, late, hit, loss, brier)
        return loss, brier


def _by_variant(assigned: list[Variant]) -> list[tuple[Variant, list[int]]]:
    """The variants of a call, each with the positions of its flights."""
    groups: dict[str, tuple[Variant, list[int]]] = {}
    for i, v in enumerate(assigned):
        groups.setdefault(v.tag, (v, []))[1].append(i)
    return list(groups.values())
