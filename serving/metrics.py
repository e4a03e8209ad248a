"""Prometheus metrics of the service. Names are stable; every series carries ``model_version``
and ``variant`` where a model is involved. ``bentoml.metrics`` makes them multiprocess-safe, so
one scrape of ``/metrics`` sums the workers and the monitoring can sum replicas."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import bentoml

LATENCY_BUCKETS = (0.0002, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                   0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
SCORE_BUCKETS = tuple(i / 20 for i in range(1, 21))

REQUESTS = bentoml.metrics.Counter(
    name="flight_delay_requests_total",
    documentation="Requests by endpoint and outcome (ok, client_error, server_error).",
    labelnames=["endpoint", "outcome"],
)
REQUEST_LATENCY = bentoml.metrics.Histogram(
    name="flight_delay_request_latency_seconds",
    documentation="Time inside the API method, by endpoint.",
    labelnames=["endpoint"],
    buckets=LATENCY_BUCKETS,
)
STAGE_LATENCY = bentoml.metrics.Histogram(
    name="flight_delay_stage_latency_seconds",
    documentation="Time per stage: feature_lookup, inference.",
    labelnames=["stage", "endpoint"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = bentoml.metrics.Counter(
    name="flight_delay_predictions_total",
    documentation="Predictions served, by model.",
    labelnames=["model_version", "variant"],
)
SCORE = bentoml.metrics.Histogram(
    name="flight_delay_prediction_score",
    documentation="Predicted probability of a 15-minute delay.",
    labelnames=["model_version", "variant"],
    buckets=SCORE_BUCKETS,
)
FEATURE_BIN = bentoml.metrics.Counter(
    name="flight_delay_feature_value_total",
    documentation="Served feature values by monitoring bin (deciles fixed from the training data; "
    "'missing' for no value). Compare bin shares with the training shares for drift.",
    labelnames=["feature", "bin", "model_version", "variant"],
)
UNKNOWN = bentoml.metrics.Counter(
    name="flight_delay_unknown_entities_total",
    documentation="Requests whose entity the feature store did not know (served with defaults).",
    labelnames=["entity", "model_version", "variant"],
)
ONLINE_ROWS = bentoml.metrics.Counter(
    name="flight_delay_online_rows_total",
    documentation="Online feature rows used, by view and source: 'store' (read from the online "
    "store) or 'cache' (read by this worker less than FLIGHT_DELAY_FEATURE_CACHE_SECONDS ago).",
    labelnames=["view", "source"],
)
MODEL_LOAD_FAILURES = bentoml.metrics.Counter(
    name="flight_delay_model_load_failures_total",
    documentation="Registry changes whose models failed to load (a broken artifact); the models "
    "loaded before keep serving, the service log says why.",
)
FEEDBACK = bentoml.metrics.Counter(
    name="flight_delay_feedback_total",
    documentation="Observed outcomes received, by whether the prediction was right at the threshold.",
    labelnames=["model_version", "variant", "outcome"],
)
# Summaries export `_sum` and `_count`: live mean log loss = rate(_sum) / rate(_count).
FEEDBACK_LOG_LOSS = bentoml.metrics.Summary(
    name="flight_delay_feedback_log_loss",
    documentation="Log loss of each prediction that received feedback.",
    labelnames=["model_version", "variant"],
)
FEEDBACK_BRIER = bentoml.metrics.Summary(
    name="flight_delay_feedback_brier",
    documentation="Squared error of each prediction that received feedback.",
    labelnames=["model_version", "variant"],
)


TALLY_SECONDS = 1.0  # how often summed counter increments reach Prometheus


class CounterTally:
    """Counter increments summed in memory and applied to Prometheus by a thread every
    ``interval`` seconds (and on ``close``).

    A prediction moves ~40 counter series (a monitoring bin per feature, the unknown entities,
    the prediction count); each Prometheus increment costs a label lookup and a write to the
    multiprocess file, more than the prediction itself. Summing first makes it one dict update
    per series on the request path and one increment per series and interval. Scrapes (every
    15 s or more) see the counts at most ``interval`` late.
    """

    def __init__(self, interval: float = TALLY_SECONDS) -> None:
        self.interval = interval
        self._counts: Counter[tuple[Any, tuple[str, ...]]] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-tally", daemon=True)
        self._thread.start()

    def add(self, items: Counter[tuple[Any, tuple[str, ...]]]) -> None:
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
