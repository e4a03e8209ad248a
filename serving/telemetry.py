"""Prometheus metrics of the service. Names are stable; every series carries ``model_version``
and ``variant`` where a model is involved. ``bentoml.metrics`` makes them multiprocess-safe, so
one scrape of ``/metrics`` sums the workers and the monitoring can sum replicas."""

from __future__ import annotations

import os
import threading
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import bentoml
import numpy as np

from flight_delay.drift import SCORE_EDGES, SCORE_FEATURE, Reference

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
    "stage_latency_seconds",
    "Time per stage: feature_lookup, inference, shadow (the shadow challenger's inference, when one runs).",
    LATENCY_BUCKETS,
    "stage",
    "endpoint",
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
SHADOW_ERRORS = _counter(
    "shadow_errors_total",
    "Flights the shadow challenger could not score (it raised, or gave a non-finite probability): served by the "
    "champion as always, logged without a shadow figure; the service log says why.",
    "model_version",
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
FEEDBACK_PROBABILITY = _summary(
    "feedback_probability",
    "Predicted probability of each prediction that received feedback (calibration).",
    *MODEL_LABELS,
)
FEEDBACK_SCORE_BIN = _counter(
    "feedback_score_bin_total",
    "Predictions that received feedback, by outcome (late) and score bin (twenty of width 0.05): the live "
    "ROC AUC and the observed late rate.",
    *MODEL_LABELS,
    "late",
    "bin",
)


def _gauge(name: str, documentation: str, mode: str, *labels: str) -> Any:
    return bentoml.metrics.Gauge(
        name=f"flight_delay_{name}", documentation=documentation, labelnames=list(labels), multiprocess_mode=mode
    )


REFERENCE_FRACTION = _gauge(
    "reference_fraction",
    "A served model's reference share of each monitoring bin (training window; evaluation window for "
    "prediction_score): the distribution feature_value_total is compared with for drift.",
    "max",
    "feature",
    "bin",
    "model_version",
)
OFFLINE_LOG_LOSS = _gauge(
    "model_offline_log_loss", "A served model's log loss on its evaluation window.", "max", "model_version"
)
OFFLINE_AUC = _gauge("model_offline_auc", "A served model's ROC AUC on its evaluation window.", "max", "model_version")
MODEL_SERVING = _gauge(
    "model_serving", "1 while some worker serves the model as this variant, else 0.", "livemax", *MODEL_LABELS
)
CHAMPION_LOADED = _gauge("champion_loaded", "1 when every live worker has a champion loaded (the minimum).", "livemin")
FEATURE_TTL = _gauge(
    "feature_ttl_seconds", "Each online view's TTL (0: none): older values are served as missing.", "max", "view"
)
FEATURE_AGE_BUCKETS = (60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
FEATURE_AGE = _counter(
    "feature_age_seconds_le_total",
    "Online feature values served, by view and by an upper bound of their age at prediction time (cumulative "
    "buckets, as a histogram's): histogram_quantile reads it.",
    "view",
    "le",
)
AGE_LABELS = (*(str(b) for b in FEATURE_AGE_BUCKETS), "+Inf")
_AGE_BIN = object()  # the tally's key for an age's bucket index (see CounterTally.flush)
_SCORES, _SCORED, _AGES = "scores", "scored", "ages"  # kinds of gathered values (see Telemetry._expand)
WORKER_MEMORY = _gauge("worker_resident_bytes", "Resident memory of each worker process.", "liveall")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _resident_bytes() -> float:
    with open("/proc/self/statm") as statm:
        return float(statm.read().split()[1]) * _PAGE_SIZE


TALLY_SECONDS = 1.0  # how often summed counter increments reach Prometheus
Counts = Counter[tuple[Any, tuple[str, ...]]]


def observe_many(child: Any, values: Sequence[float]) -> None:
    """``child.observe(v)`` for every value of ``values``, in one write per bucket.

    A prometheus_client histogram child keeps one (multiprocess) value per bucket, not
    cumulative, plus the sum, and ``observe`` adds 1 to the first bucket whose upper bound is at
    least the value. Counting the values per bucket first gives the same samples at one write per
    bucket instead of two per value (tests/unit/test_counter_tally.py compares the two). Any other
    kind of metric is observed value by value."""
    bounds = getattr(child, "_upper_bounds", None)
    if bounds is None:
        for v in values:
            child.observe(v)
        return
    amounts = np.asarray(values, dtype="float64")
    per_bucket = np.bincount(np.searchsorted(bounds, amounts, side="left"), minlength=len(bounds))
    child._sum.inc(float(amounts.sum()))
    for bucket, n in zip(child._buckets, per_bucket.tolist()):
        if n:
            bucket.inc(n)


class CounterTally:
    """Counter increments and histogram observations gathered in memory and applied to
    Prometheus by a thread every ``interval`` seconds (and on ``close``).

    A prediction moves dozens of series (a monitoring bin per feature, the score, the feature
    ages, the stage times); each Prometheus update costs a label lookup and a write to the
    multiprocess file, more than the prediction itself. The request path only appends what it
    saw (:meth:`add`, :meth:`observe`, :meth:`extend`); the thread sums it, bins the values
    gathered under each key with numpy over every call of the interval at once (``expand``), and
    makes one update per series. Scrapes see the figures at most ``interval`` late.

    Values are gathered into one list per key, never kept per call: a second of calls' own lists
    and dicts would outlive the young garbage collections and make the full ones (measured: six in
    15 s at 1,000 calls/s, up to 54 ms each) the service's tail latency.
    """

    def __init__(
        self,
        interval: float = TALLY_SECONDS,
        expand: Callable[[dict[Any, list[Any]], Counts, dict[Any, list[float]]], None] | None = None,
    ) -> None:
        self.interval = interval
        self._expand = expand  # turns gathered values into counts and observations, on the thread
        self._counts: Counts = Counter()
        self._observed: dict[Any, list[float]] = {}
        self._values: dict[Any, list[Any]] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}  # flush's thread only
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="metrics-tally", daemon=True)
        self._thread.start()

    def add(self, items: Counts) -> None:
        """Add ``{(metric, label values): amount}``."""
        with self._lock:
            self._counts.update(items)

    def observe(self, child: Any, value: float) -> None:
        """``child.observe(value)`` at the next flush."""
        with self._lock:
            observed = self._observed.get(child)
            if observed is None:
                self._observed[child] = [value]
            else:
                observed.append(value)

    def extend(self, key: Any, values: Iterable[Any]) -> None:
        """Gather ``values`` under ``key`` for ``expand`` at the next flush."""
        with self._lock:
            gathered = self._values.get(key)
            if gathered is None:
                self._values[key] = list(values)
            else:
                gathered.extend(values)

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            observed, self._observed = self._observed, {}
            values, self._values = self._values, {}
        if values and self._expand is not None:
            self._expand(values, counts, observed)
        ages: dict[str, list[int]] = {}
        for (metric, labels), amount in counts.items():
            if metric is _AGE_BIN:  # a bucket index, made cumulative below
                view, index = labels
                ages.setdefault(view, [0] * (len(FEATURE_AGE_BUCKETS) + 1))[index] += amount
                continue
            self._child(metric, labels).inc(amount)
        for view, per_bucket in ages.items():
            running = 0
            for le, n in zip(AGE_LABELS, per_bucket):
                running += n
                if running:
                    self._child(FEATURE_AGE, (view, le)).inc(running)
        for child, values in observed.items():
            observe_many(child, values)
        WORKER_MEMORY.set(_resident_bytes())

    def _child(self, metric: Any, labels: tuple[str, ...]) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` validates and locks on every call,
        and a flush makes hundreds of updates while it holds the GIL beside the event loop."""
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()


class Telemetry:
    """One worker's metric updates: each series looked up once (``labels()`` validates and locks
    on every call); the request path hands counts, observations and values gathered per series
    to a :class:`CounterTally`, whose thread bins and applies them."""

    def __init__(self) -> None:
        self.tally = CounterTally(expand=self._expand)
        self._series: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._references: dict[tuple[str, str], Reference] = {}  # (model, variant) -> its reference

    def series(self, metric: Any, *labels: str) -> Any:
        key = (metric, labels)
        child = self._series.get(key)
        if child is None:
            child = self._series[key] = metric.labels(*labels) if labels else metric
        return child

    def request(self, endpoint: str, outcome: str, seconds: float | None = None) -> None:
        self.tally.add({(REQUESTS, (endpoint, outcome)): 1})
        if seconds is not None:
            self.tally.observe(self.series(REQUEST_LATENCY, endpoint), seconds)

    def stages(
        self, endpoint: str, lookup_seconds: float, inference_seconds: float, shadow_seconds: float | None = None
    ) -> None:
        self.tally.observe(self.series(STAGE_LATENCY, "feature_lookup", endpoint), lookup_seconds)
        self.tally.observe(self.series(STAGE_LATENCY, "inference", endpoint), inference_seconds)
        if shadow_seconds is not None:
            self.tally.observe(self.series(STAGE_LATENCY, "shadow", endpoint), shadow_seconds)

    def shadow_errors(self, tag: str, flights: int, counts: Counts) -> None:
        counts[(SHADOW_ERRORS, (tag,))] += flights

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
        reference: Reference,
        unknown: Iterable[Sequence[str]],
        counts: Counts,
    ) -> None:
        """One variant's share of a call: predictions and unknown entities counted into
        ``counts``; the scores and each monitored input's values gathered for the tally's thread,
        which bins them."""
        counts[(PREDICTIONS, (tag, variant))] += len(scores)
        for row in unknown:
            for entity in row:
                counts[(UNKNOWN, (entity, tag, variant))] += 1
        self._references[(tag, variant)] = reference
        self.tally.extend((_SCORES, tag, variant), scores)
        for feature in reference.binnings:
            values = inputs.get(feature)
            if values is not None and feature != SCORE_FEATURE:
                self.tally.extend((_SCORED, tag, variant, feature), values)

    def ages(self, ages: dict[str, list[float | None]]) -> None:
        """Each served value's age (per view, one per flight), counted later into the cumulative
        buckets of FEATURE_AGE (a missing value and a value from after the prediction time have no
        age to count)."""
        for view, values in ages.items():
            self.tally.extend((_AGES, view), values)

    def _expand(self, values: dict[Any, list[Any]], counts: Counts, observed: dict[Any, list[float]]) -> None:
        """The tally thread's half of :meth:`predictions` and :meth:`ages`: every call of the
        interval binned at once, per model, variant and feature."""
        for key, gathered in values.items():
            if key[0] == _AGES:
                ages = [a for a in gathered if a is not None and a >= 0]
                if ages:
                    index, n = np.unique(np.searchsorted(FEATURE_AGE_BUCKETS, ages, side="left"), return_counts=True)
                    for i, c in zip(index.tolist(), n.tolist()):
                        counts[(_AGE_BIN, (key[1], i))] += c
                continue
            if key[0] == _SCORES:  # the score histogram, and the score's bins when it has a reference
                _, tag, variant = key
                observed.setdefault(self.series(SCORE, tag, variant), []).extend(gathered)
                feature = SCORE_FEATURE
            else:
                _, tag, variant, feature = key
            binning = self._references[(tag, variant)].binnings.get(feature)
            if binning is not None:
                for b, n in binning.count(gathered).items():
                    counts[(FEATURE_BIN, (feature, b, tag, variant))] += n

    def feedback(
        self, tag: str, variant: str, probability: float, late: bool, hit: bool, log_loss: float, brier: float
    ) -> None:
        self.series(FEEDBACK, tag, variant, "hit" if hit else "miss").inc()
        self.series(FEEDBACK_LOG_LOSS, tag, variant).observe(log_loss)
        self.series(FEEDBACK_BRIER, tag, variant).observe(brier)
        self.series(FEEDBACK_PROBABILITY, tag, variant).observe(probability)
        score_bin = bisect_right(SCORE_EDGES, probability)
        self.series(FEEDBACK_SCORE_BIN, tag, variant, "true" if late else "false", str(score_bin)).inc()

    def serving(self, previous: Any, routing: Any) -> None:
        """A new routing (``serving.routing.Routing``) took over: the gauges of what it serves, and
        every series of its models at 0, so that PromQL sees empty bins and first failures."""
        old = (
            {(v.tag, v.name) for v in (previous.champion, previous.challenger) if v is not None} if previous else set()
        )
        new = {(v.tag, v.name): v for v in (routing.champion, routing.challenger) if v is not None}
        for tag, name in old - set(new):
            self.series(MODEL_SERVING, tag, name).set(0)
        for (tag, name), variant in new.items():
            self.series(MODEL_SERVING, tag, name).set(1)
            self._create_model_series(tag, name, variant.model)
        if routing.shadow is not None:  # at 0 from the start, so that an alert sees the first error
            self.series(SHADOW_ERRORS, routing.shadow.tag).inc(0)
        self.series(CHAMPION_LOADED).set(1 if routing.champion is not None else 0)

    def _create_model_series(self, tag: str, variant: str, model: Any) -> None:
        reference: Reference = model.reference
        for feature, binning in reference.binnings.items():
            shares = reference.fractions.get(feature, {})
            for b in binning.labels:
                self.series(FEATURE_BIN, feature, b, tag, variant).inc(0)
                if shares:
                    self.series(REFERENCE_FRACTION, feature, b, tag).set(shares.get(b, 0.0))
        for late in ("true", "false"):
            for b in range(len(SCORE_EDGES) + 1):
                self.series(FEEDBACK_SCORE_BIN, tag, variant, late, str(b)).inc(0)
        # Feedback series exist from the load, at 0: increase() over a window misses a series' first
        # sample, so one created at its first feedback would lose that feedback from every rate.
        for outcome in ("hit", "miss"):
            self.series(FEEDBACK, tag, variant, outcome).inc(0)
        for summary in (FEEDBACK_LOG_LOSS, FEEDBACK_BRIER, FEEDBACK_PROBABILITY):
            self.series(summary, tag, variant)
        offline = getattr(model, "offline_metrics", None) or {}
        if "log_loss" in offline:
            self.series(OFFLINE_LOG_LOSS, tag).set(offline["log_loss"])
        if "auc" in offline:
            self.series(OFFLINE_AUC, tag).set(offline["auc"])

    def views(self, ttl: dict[str, float]) -> None:
        """The online views' TTLs, and their age buckets at 0."""
        for view, seconds in ttl.items():
            self.series(FEATURE_TTL, view).set(seconds)
            for le in AGE_LABELS:
                self.series(FEATURE_AGE, view, le).inc(0)

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
