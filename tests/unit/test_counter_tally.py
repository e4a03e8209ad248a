"""The service's counter tally: increments summed in memory reach Prometheus on flush and close."""

from __future__ import annotations

from collections import Counter

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter

from serving.telemetry import CounterTally


def test_increments_reach_prometheus_on_flush_and_close():
    registry = CollectorRegistry()
    requests = PromCounter("tally_test_requests", "test", ["variant"], registry=registry)
    value = lambda v: registry.get_sample_value("tally_test_requests_total", {"variant": v}) or 0.0  # noqa: E731

    tally = CounterTally(interval=3600)  # no periodic flush within the test
    tally.add(Counter({(requests, ("champion",)): 3, (requests, ("challenger",)): 1}))
    tally.add(Counter({(requests, ("champion",)): 2}))
    assert value("champion") == 0.0, "nothing reaches Prometheus before a flush"
    tally.flush()
    assert (value("champion"), value("challenger")) == (5.0, 1.0)
    tally.flush()
    assert value("champion") == 5.0, "a flush applies each increment once"
    tally.add(Counter({(requests, ("champion",)): 4}))
    tally.close()
    assert value("champion") == 9.0, "close applies what is left"


def test_the_thread_flushes_on_its_interval():
    import time

    registry = CollectorRegistry()
    requests = PromCounter("tally_test_periodic", "test", ["variant"], registry=registry)
    tally = CounterTally(interval=0.05)
    try:
        tally.add(Counter({(requests, ("champion",)): 7}))
        deadline = time.monotonic() + 5
        while registry.get_sample_value("tally_test_periodic_total", {"variant": "champion"}) != 7.0:
            assert time.monotonic() < deadline, "the tally thread never flushed"
            time.sleep(0.01)
    finally:
        tally.close()
