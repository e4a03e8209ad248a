"""The service's counter tally: increments summed in memory reach Prometheus on flush and close."""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client import Counter as PromCounter

from flight_delay.drift import SCORE_FEATURE, Binning, Reference
from serving.telemetry import CounterTally, Telemetry, observe_many


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


@pytest.mark.parametrize(
    "values",
    [
        [0.0, 0.05, 0.0500001, 0.1, 0.99, 1.0, 7.0],  # on a bound goes in that bucket, as observe does
        [-1.0, 0.2, 0.2, 0.2, math.inf],  # below the first bound, repeats, past the last
        [],
    ],
)
def test_observe_many_gives_the_samples_of_observing_one_value_at_a_time(values):
    registry = CollectorRegistry()
    buckets = (0.05, 0.1, 0.5, 1.0)
    one = Histogram("tally_one", "test", ["v"], buckets=buckets, registry=registry).labels("x")
    many = Histogram("tally_many", "test", ["v"], buckets=buckets, registry=registry).labels("x")
    for v in values:
        one.observe(v)
    observe_many(many, values)

    def samples(name: str) -> list[tuple[str, dict, float]]:
        return [
            (s.name.removeprefix(name), s.labels, s.value)
            for family in registry.collect()
            for s in family.samples
            if s.name.startswith(name) and not s.name.endswith("_created")
        ]

    assert samples("tally_many") == samples("tally_one")


def test_deferred_predictions_are_binned_at_the_flush_as_each_call_alone_would_be():
    """Calls binned together at the flush count what binning each call on its own counts."""
    reference = Reference(
        {
            "temp": Binning("temp", edges=(10.0, 20.0)),
            "carrier": Binning("carrier", categories=("UA", "DL")),
            SCORE_FEATURE: Binning(SCORE_FEATURE, edges=(0.5,)),
        },
        {},
    )
    calls = [
        ([0.2, 0.7], {"temp": [5.0, 15.0], "carrier": ["UA", "AA"]}),
        ([0.5], {"temp": [math.nan], "carrier": [""]}),
        ([0.9, 0.1, 0.3], {"temp": [25.0, 20.0, 10.0], "carrier": ["DL", "DL", "UA"]}),
    ]
    expected: Counter = Counter()
    for scores, inputs in calls:
        for feature, binning in reference.binnings.items():
            values = scores if feature == SCORE_FEATURE else inputs[feature]
            for b, n in binning.count(values).items():
                expected[(feature, b)] += n
    telemetry = Telemetry()
    tag = f"flight_delay:tally{time.monotonic_ns()}"  # series of its own in the process registry
    try:
        for scores, inputs in calls:
            counts: Counter = Counter()
            telemetry.predictions(tag, "champion", scores, inputs, reference, [[] for _ in scores], counts)
            telemetry.tally.add(counts)
        telemetry.tally.flush()
    finally:
        telemetry.close()

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, {"model_version": tag, "variant": "champion", **labels}) or 0.0

    counted = {
        (feature, b): sample("flight_delay_feature_value_total", feature=feature, bin=b)
        for feature, binning in reference.binnings.items()
        for b in binning.labels
    }
    assert {k: v for k, v in counted.items() if v} == expected
    assert sample("flight_delay_predictions_total") == 6
    assert sample("flight_delay_prediction_score_count") == 6
    assert sample("flight_delay_prediction_score_bucket", le="0.5") == 4  # 0.1, 0.2, 0.3 and 0.5


def test_a_calls_own_lists_are_not_kept_until_the_flush():
    """The tally gathers values into its own lists: a call's input columns are free as soon as the
    call ends (kept for a second they outlived the young garbage collections, and full collections
    became the service's tail latency), and changing them afterwards changes no count."""
    reference = Reference(
        {"temp": Binning("temp", edges=(10.0,)), "carrier": Binning("carrier", categories=("UA",))}, {}
    )
    telemetry = Telemetry()
    tag = f"flight_delay:own{time.monotonic_ns()}"
    try:
        for _ in range(50):
            inputs = {"temp": [5.0, 15.0], "carrier": ["UA", "AA"]}
            scores = [0.2, 0.7]
            telemetry.predictions(tag, "champion", scores, inputs, reference, [[], []], Counter())
            held = [v for values in telemetry.tally._values.values() for v in [values]]
            assert not any(v is inputs["temp"] or v is inputs["carrier"] or v is scores for v in held)
            inputs["temp"].clear()
            inputs["carrier"].append("DL")
        assert len(telemetry.tally._values) == 3  # the scores, temp and carrier: not one entry per call
        telemetry.tally.flush()
    finally:
        telemetry.close()
    bins = {
        (f, b): REGISTRY.get_sample_value(
            "flight_delay_feature_value_total", {"model_version": tag, "variant": "champion", "feature": f, "bin": b}
        )
        for f, b in (("temp", "0"), ("temp", "1"), ("carrier", "UA"), ("carrier", "other"))
    }
    assert bins == {("temp", "0"): 50, ("temp", "1"): 50, ("carrier", "UA"): 50, ("carrier", "other"): 50}
