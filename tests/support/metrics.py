"""Reading a service's ``/metrics`` in tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from flight_delay.monitoring import metric_total, parse_metrics
from serving.telemetry import TALLY_SECONDS


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus exposition whose labels include ``labels``."""
    return metric_total(parse_metrics(text), name, **labels)


def metric_samples(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every sample of ``name``."""
    return [dict(labels) for (sample, labels) in parse_metrics(text) if sample == name]


def settled_metrics(client: Any, condition: Callable[[str], bool], timeout: float = 5.0) -> str:
    """``/metrics`` once ``condition`` holds on it (or the timeout passed): the service applies
    counter increments to Prometheus once a second (``serving.telemetry.CounterTally``)."""
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if condition(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def quiet_metrics(client: Any) -> str:
    """``/metrics`` after the service applied every counter increment of requests already answered."""
    time.sleep(TALLY_SECONDS + 0.3)
    return client.get("/metrics").text
