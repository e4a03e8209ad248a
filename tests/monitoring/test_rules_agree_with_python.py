"""The recording rules and the Python monitoring compute the same drift and live quality.

Two stand-in replicas expose the service's monitoring counters (two model versions, a numeric and
a categorical feature and the score, empty bins on both sides) to a real Prometheus that scrapes
them and evaluates deploy/prometheus/rules/recording.yml every second. The counters start at 0,
grow in three steps and then disappear from the scrapes (the reference shares stay), so that no
sample arrives after the evaluation the test reads. At one evaluation timestamp of each group the
test reads the recorded figures and, at the same timestamp, the increases Prometheus itself
reports; ``flight_delay.monitoring`` (``drift_rows``, ``quality_rows``) computes the figures
from those increases, and both must agree to 1e-9 relative.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from deploy.prometheus.rules import DRIFT_WINDOWS, QUALITY_WINDOWS, RECORDING_FILE
from flight_delay.drift import SCORE_EDGES, SCORE_FEATURE, Binning, Reference
from flight_delay.monitoring import CounterWindow, drift_rows, quality_rows
from tests.support.prometheus import Exposition, Prometheus, counter_window, prometheus_binary

REL = 1e-9
THRESHOLD = 0.3  # the service's default decision threshold: what a "hit" is
SERVED = (("m1", "champion"), ("m2", "challenger"))  # (model_version, variant), on both replicas
SCORE_BINS = [str(b) for b in range(len(SCORE_EDGES) + 1)]


def _score_shares(weights: list[float]) -> dict[str, float]:
    total = sum(weights)
    shares = {b: w / total for b, w in zip(SCORE_BINS, weights + [0.0] * (len(SCORE_BINS) - len(weights)))}
    return {**shares, "missing": 0.0}  # the score's binning has a "missing" bin too, never used


def _reference(distance: list[float], carrier: list[float], score: dict[str, float]) -> Reference:
    binnings = {
        "distance": Binning("distance", edges=(500.0, 1000.0)),
        "carrier": Binning("carrier", categories=("AA", "DL", "UA")),
        SCORE_FEATURE: Binning(SCORE_FEATURE, edges=SCORE_EDGES),
    }
    fractions = {
        "distance": dict(zip(binnings["distance"].labels, distance)),
        "carrier": dict(zip(binnings["carrier"].labels, carrier)),
        SCORE_FEATURE: score,
    }
    return Reference(binnings, fractions)


# Reference shares with empty bins: no missing distance in training, no score above 0.5 (m1) or
# 0.75 (m2). Live traffic never has a missing distance either (floored on both sides), never
# carrier UA (floored live only) and scores up to 0.7.
REFERENCES = {
    "m1": _reference([0.3, 0.4, 0.3, 0.0], [0.3, 0.3, 0.2, 0.15, 0.05], _score_shares([10 - b for b in range(10)])),
    "m2": _reference([0.5, 0.3, 0.2, 0.0], [0.5, 0.2, 0.1, 0.1, 0.1], _score_shares([1.0] * 15)),
}


class Replica:
    """One replica's cumulative counters, grown by simulated traffic, as Prometheus text."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.counters: Counter[tuple[str, tuple[tuple[str, str], ...]]] = Counter()
        for model, variant in SERVED:  # every series of a served model exists from its load, at 0
            for feature, binning in REFERENCES[model].binnings.items():
                for b in binning.labels:
                    self._add(
                        "flight_delay_feature_value_total", 0, feature=feature, bin=b, model=model, variant=variant
                    )
            for late in ("true", "false"):
                for b in SCORE_BINS:
                    self._add(
                        "flight_delay_feedback_score_bin_total", 0, model=model, variant=variant, late=late, bin=b
                    )
            for outcome in ("hit", "miss"):
                self._add("flight_delay_feedback_total", 0, model=model, variant=variant, outcome=outcome)
            for summary in ("log_loss", "brier", "probability"):
                for suffix in ("sum", "count"):
                    self._add(f"flight_delay_feedback_{summary}_{suffix}", 0, model=model, variant=variant)

    def _add(self, name: str, amount: float, model: str, **labels: str) -> None:
        self.counters[(name, tuple(sorted({**labels, "model_version": model}.items())))] += amount

    def serve(self, predictions: int) -> None:
        """``predictions`` per served model, a share of them with feedback."""
        for model, variant in SERVED:
            binnings = REFERENCES[model].binnings
            distance = self.rng.choice([150.0, 480.0, 500.0, 760.0, 1000.0, 2475.0], size=predictions)
            carrier = self.rng.choice(["AA", "DL", "B6", "", "AA"], size=predictions)
            score = self.rng.uniform(0.01, 0.7, size=predictions)
            for feature, values in (("distance", distance), ("carrier", list(carrier)), (SCORE_FEATURE, score)):
                for b, n in binnings[feature].count(values).items():
                    self._add(
                        "flight_delay_feature_value_total", n, feature=feature, bin=b, model=model, variant=variant
                    )
            for p in score[self.rng.random(predictions) < 0.6]:
                late = bool(self.rng.random() < p + 0.1)
                clipped = min(max(p, 1e-7), 1 - 1e-7)
                loss = -math.log(clipped) if late else -math.log(1 - clipped)
                labels = {"model": model, "variant": variant}
                self._add(
                    "flight_delay_feedback_total", 1, **labels, outcome="hit" if (p >= THRESHOLD) == late else "miss"
                )
                self._add("flight_delay_feedback_log_loss_sum", loss, **labels)
                self._add("flight_delay_feedback_brier_sum", (p - late) ** 2, **labels)
                self._add("flight_delay_feedback_probability_sum", p, **labels)
                for summary in ("log_loss", "brier", "probability"):
                    self._add(f"flight_delay_feedback_{summary}_count", 1, **labels)
                score_bin = str(bisect_right(SCORE_EDGES, p))
                self._add("flight_delay_feedback_score_bin_total", 1, **labels, late=str(late).lower(), bin=score_bin)

    def text(self, counters: bool = True) -> str:
        lines = []
        for model, _ in SERVED:
            for feature, shares in REFERENCES[model].fractions.items():
                for b, share in shares.items():
                    labels = f'feature="{feature}",bin="{b}",model_version="{model}"'
                    lines.append(f"flight_delay_reference_fraction{{{labels}}} {share!r}")
        if counters:
            for (name, labels), value in sorted(self.counters.items()):
                rendered = ",".join(f'{k}="{v}"' for k, v in labels)
                lines.append(f"{name}{{{rendered}}} {float(value)!r}")
        return "\n".join(lines) + "\n"


def evaluation_after(prometheus: Prometheus, record: str, after: float, timeout: float = 30.0) -> float:
    """The timestamp of the first evaluation of ``record``'s group later than ``after``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stamps = [s["value"] for s in prometheus.query(f"timestamp({record})")]
        if stamps and max(stamps) > after:
            return max(stamps)
        time.sleep(0.2)
    raise AssertionError(f"{record} was not evaluated after {after} within {timeout} s")


def recorded(prometheus: Prometheus, record: str, at: float, *keys: str) -> dict[tuple[str, ...], float]:
    return {tuple(s["metric"][k] for k in keys): s["value"] for s in prometheus.query(record, at=at)}


def assert_close(what: str, rule: float, python: float) -> None:
    assert math.isclose(rule, python, rel_tol=REL), f"{what}: rule {rule!r}, Python {python!r}"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Prometheus, float]]:
    """Prometheus after the replicas' traffic, and the wall-clock time after which no counter
    sample can arrive any more."""
    try:
        prometheus_binary()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    replicas = [Replica(seed) for seed in (7, 8)]
    servers = [Exposition() for _ in replicas]
    prometheus = Prometheus(Path(tmp_path_factory.mktemp("prometheus")), [s.target for s in servers], [RECORDING_FILE])
    try:
        for server, replica in zip(servers, replicas):
            server.publish(replica.text())  # every counter at 0: the first sample of each series
        prometheus.start()
        for step in range(3):
            for server in servers:
                server.wait_scrapes(2)
            for i, (server, replica) in enumerate(zip(servers, replicas)):
                replica.serve(predictions=60 + 25 * step + 10 * i)
                server.publish(replica.text())
        for server in servers:
            server.wait_scrapes(2)
        for server, replica in zip(servers, replicas):
            server.publish(replica.text(counters=False))  # the counters go stale; the gauges stay
        for server in servers:
            server.wait_scrapes(2)
        yield prometheus, time.time()
    finally:
        prometheus.stop()
        for server in servers:
            server.close()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("window", DRIFT_WINDOWS)
def test_drift_rules_agree_with_python(scraped, window: str):
    prometheus, quiet = scraped
    at = evaluation_after(prometheus, f"flight_delay:feature_psi:{window}", quiet)
    counts = counter_window(prometheus, at, drift_range=window, quality_range=window)
    assert {m for m, _, _ in counts.feature_bins} == {"m1", "m2"}
    assert 0.0 in counts.feature_bins.values()  # empty live bins, as well as empty reference bins
    assert len(prometheus.query("count by (instance) (flight_delay_reference_fraction)", at=at)) == 2

    rows = {(r.model_version, r.feature): r for r in drift_rows(counts, REFERENCES)}
    assert set(rows) == {(m, f) for m in REFERENCES for f in ("distance", "carrier", SCORE_FEATURE)}
    by = ("model_version", "feature")
    n = recorded(prometheus, f"flight_delay:feature_count:increase{window}", at, *by)
    psi = recorded(prometheus, f"flight_delay:feature_psi:{window}", at, *by)
    js = recorded(prometheus, f"flight_delay:feature_js:{window}", at, *by)
    chi2 = recorded(prometheus, f"flight_delay:feature_chi2:{window}", at, *by)
    assert set(psi) == set(js) == set(chi2) == set(rows)
    for key, row in rows.items():
        assert_close(f"N {key}", n[key], sum(v for (m, f, _), v in counts.feature_bins.items() if (m, f) == key))
        assert_close(f"PSI {key}", psi[key], row.psi)
        assert_close(f"JS {key}", js[key], row.js)
        assert_close(f"chi-square {key}", chi2[key], row.chi2)
    assert max(r.psi for r in rows.values()) > 0.2  # the data drift: the figures are not all near 0


@pytest.mark.timeout(240)
@pytest.mark.parametrize("window", QUALITY_WINDOWS)
def test_live_quality_rules_agree_with_python(scraped, window: str):
    prometheus, quiet = scraped
    at = evaluation_after(prometheus, f"flight_delay:live_auc:{window}", quiet)
    counts: CounterWindow = counter_window(prometheus, at, drift_range=window, quality_range=window)
    rows = {(r.model_version, r.variant): r for r in quality_rows(counts)}
    assert set(rows) == set(SERVED)

    by = ("model_version", "variant")
    figures = {
        name: recorded(prometheus, f"flight_delay:{name}:{window}", at, *by)
        for name in ("feedback_count", "live_log_loss", "live_brier", "live_hit_rate", "live_mean_predicted")
        + ("live_late_rate", "live_auc")
    }
    for key, row in rows.items():
        n = sum(v for (m, var, _, _), v in counts.feedback_bins.items() if (m, var) == key)
        assert_close(f"feedback count {key}", figures["feedback_count"][key], n)
        assert_close(f"log loss {key}", figures["live_log_loss"][key], row.log_loss)
        assert_close(f"Brier {key}", figures["live_brier"][key], row.brier)
        assert_close(f"hit rate {key}", figures["live_hit_rate"][key], row.hit_rate)
        assert_close(f"mean predicted {key}", figures["live_mean_predicted"][key], row.mean_predicted)
        assert_close(f"late rate {key}", figures["live_late_rate"][key], row.observed_late_rate)
        assert_close(f"AUC {key}", figures["live_auc"][key], row.auc)
        assert 0.5 < row.auc < 1 and 0 < row.hit_rate < 1  # both outcomes, pairs below and ties
