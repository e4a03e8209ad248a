"""Prometheus metrics of the service. Names are stable; every series carries ``model_version``
and ``variant`` where a model is involved. ``bentoml.metrics`` makes them multiprocess-safe, so
one scrape of ``/metrics`` sums the workers and the monitoring can sum replicas."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import bentoml

from flight_delay.drift import bin_counts

LATENCY_BUCKETS = (
    0.0002,
    0.0005,
    0.00075,
    0.001,
    0.0015,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.02,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))
MODEL_LABELS = ("model_version", "variant")


def _counter(name: str, documentation: str, *labels: str) -> Any:
    return bentoml.metrics.Counter(name=f"flight_delay_{name}", documentation=documentation, labelnames=list(labels))


def _histogram(name: str, documentation: str, buckets: Sequence[float], *labels: str) -> Any:
    return bentoml.metrics.Histogram(
        name=f"flight_delay_{name}", documentation=documentation, labelnames=list(labels), buckets=buckets
    )


def _summary(name: str, documentation: str, *labels: str) -> Any:
    return bentoml.metrics.Summary(name=f"flight_delay_{name}", documentation=documentation, labelnames=list(labels))


REQUESTS = _counter(
    "requests_total", "Requests by endpoint and outcome (ok, client_error, server_error).", "endpoint", "outcome"
)
REQUEST_LATENCY = _histogram(
    "request_latency_seconds", "Time inside the API method, by endpoint.", LATENCY_BUCKETS, "endpoint"
)
STAGE_LATENCY = _histogram(
    "stage_latency_seconds", "Time per stage: feature_lookup, inference.", LATENCY_BUCKETS, "stage", "endpoint"
)
PREDICTIONS = _counter("predictions_total", "Predictions served, by model.", *MODEL_LABELS)
SCORE = _histogram("prediction_score", "Predicted probability of a 15-minute delay.", SCORE_BUCKETS, *MODEL_LABELS)
FEATURE_BIN = _counter(
    "feature_value_total",
    "Served feature values by monitoring bin (deciles fixed from the training data; 'missing' for no "
    "value). Compare bin shares with the training shares for drift.",
    "feature",
    "bin",
    *MODEL_LABELS,
)
UNKNOWN = _counter(
    "unknown_entities_total",
    "Requests whose entity the feature store did not know (served with defaults).",
    "entity",
    *MODEL_LABELS,
)
ONLINE_ROWS = _counter(
    "online_rows_total",
    "Online feature rows used, by view and source: 'store' (read from the online store) or 'cache' "
    "(read by this worker less than FLIGHT_DELAY_FEATURE_CACHE_SECONDS ago).",
    "view",
    "source",
)
FUTURE_VALUES = _counter(
    "future_values_total",
    "Online feature values stamped after their request's prediction time, served as missing (the training "
    "join never sees such a value; a replay against a store that is ahead of it does).",
    "view",
)
MODEL_LOAD_FAILURES = _counter(
    "model_load_failures_total",
    "Attempts at loading a model that failed or were refused, by variant (a broken or incomplete "
    "artifact, features the service cannot build); retried with backoff, the service log says why.",
    "variant",
)
FEEDBACK = _counter(
    "feedback_total",
    "Observed outcomes received, by whether the prediction was right at the threshold.",
    *MODEL_LABELS,
    "outcome",
)
# Summaries export `_sum` and `_count`: live mean log loss = rate(_sum) / rate(_count).
FEEDBACK_LOG_LOSS = _summary("feedback_log_loss", "Log loss of each prediction that received feedback.", *MODEL_LABELS)
FEEDBACK_BRIER = _summary("feedback_brier", "Squared error of each prediction that received feedback.", *MODEL_LABELS)


TALLY_SECONDS = 1.0  # how often summed counter increments reach Prometheus
Counts = Counter[tuple[Any, tuple[str, ...]]]


class CounterTally:
    """Counter increments summed in memory and applied to Prometheus by a thread every
    ``interval`` seconds (and on ``close``).

    A prediction moves dozens of counter series (a monitoring bin per feature, the unknown
    entities, the prediction count); each Prometheus increment costs a label lookup and a write to
    the multiprocess file, more than the prediction itself. Summing first makes it one dict update
    per series on the request path and one increment per series and interval. Scrapes see the
    counts at most ``interval`` late.
    """

    def __init__(self, interval: float = TALLY_SECONDS) -> None:
        self.interval = interval
        self._counts: Counts = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-tally", daemon=True)
        self._thread.start()

    def add(self, items: Counts) -> None:
        """Add ``{(metric, label values): amount}``."""
        with self._lock:
            self._counts.update(items)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        for (metric, labels), amount in counts.items():
            metric.labels(*labels).inc(amount)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


class Telemetry:
    """One worker's metric updates: each series looked up once (``labels()`` validates and locks
    on every call), counters summed by a :class:`CounterTally`."""

    def __init__(self) -> None:
        self.tally = CounterTally()
        self._series: dict[tuple[Any, tuple[str, ...]], Any] = {}

    def series(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels)
        return child

    def request(self, endpoint: str, outcome: str, seconds: float | None = None) -> None:
        self.series(REQUESTS, endpoint, outcome).inc()
        if seconds is not None:
            self.series(REQUEST_LATENCY, endpoint).observe(seconds)

    def stages(self, endpoint: str, lookup_seconds: float, inference_seconds: float) -> None:
        self.series(STAGE_LATENCY, "feature_lookup", endpoint).observe(lookup_seconds)
        self.series(STAGE_LATENCY, "inference", endpoint).observe(inference_seconds)

    def online_reads(self, reads: Counter[tuple[str, str]], future: Counter[str], counts: Counts) -> None:
        for (view, source), n in reads.items():
            counts[(ONLINE_ROWS, (view, source))] += n
        for view, n in future.items():
            counts[(FUTURE_VALUES, (view,))] += n

    def predictions(
        self,
        tag: str,
        variant: str,
        scores: Sequence[float],
        inputs: dict[str, Any],
        bins: dict[str, list[float]],
        unknown: Iterable[Sequence[str]],
        counts: Counts,
    ) -> None:
        """One variant's share of a call: counters summed into ``counts``, scores observed."""
        counts[(PREDICTIONS, (tag, variant))] += len(scores)
        for feature, edges in bins.items():
            values = inputs.get(feature)
            if values is None:
                continue
            for b, n in bin_counts(edges, values).items():
                counts[(FEATURE_BIN, (feature, b, tag, variant))] += n
        for row in unknown:
            for entity in row:
                counts[(UNKNOWN, (entity, tag, variant))] += 1
        score = self.series(SCORE, tag, variant)
        for p in scores:
            score.observe(p)

    def feedback(self, tag: str, variant: str, hit: bool, log_loss: float, brier: float) -> None:
        self.series(FEEDBACK, tag, variant, "hit" if hit else "miss").inc()
        self.series(FEEDBACK_LOG_LOSS, tag, variant).observe(log_loss)
        self.series(FEEDBACK_BRIER, tag, variant).observe(brier)

    def close(self) -> None:
        self.tally.close()


# -- model loading (serving.routing) ----------------------------------------------------------------
LOAD_VARIANTS = ("champion", "challenger")  # the values of MODEL_LOAD_FAILURES's ``variant`` label


def create_load_failure_series() -> None:
    """Both series of MODEL_LOAD_FAILURES at 0 from the worker's start, so that an alert on their
    increase sees the first failure (a series that appears at 1 has no increase to show)."""
    for variant in LOAD_VARIANTS:
        MODEL_LOAD_FAILURES.labels(variant)


# --- Prediction log writer ----------------------------------------------------------------------
# Updated by the writer thread of each worker (``serving.log_writer``), never on the request path.

LOG_BACKLOG = bentoml.metrics.Gauge(
    name="flight_delay_log_backlog_rows",
    documentation="Prediction and feedback rows acknowledged but not yet committed to the log, summed over the "
    "live workers. Predictions are refused (503) when a worker reaches FLIGHT_DELAY_LOG_MAX_BACKLOG.",
    multiprocess_mode="livesum",
)
LOG_WRITE_ERRORS = _counter(
    "log_write_errors_total",
    "Failed writes to the prediction log (each rolled back and retried with backoff), by SQLite error "
    "(SQLITE_BUSY, SQLITE_FULL, SQLITE_READONLY, ...; the exception type for other errors).",
    "error",
)
LOG_SPILLED = _counter(
    "log_spilled_rows_total",
    "Rows written to a spill file beside the log at shutdown because the log could not be written.",
)
LOG_REPLAYED = _counter("log_replayed_rows_total", "Rows replayed from spill files into the log at start.")
LOG_DROPPED = _counter(
    "log_dropped_rows_total",
    "Acknowledged rows lost: refused by SQLite for their content, not encodable as JSON, or neither written nor "
    "spilled at shutdown (the service log says which). Zero unless something is broken.",
)
