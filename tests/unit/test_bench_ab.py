"""The interleaved comparison of two checkouts (``python -m bench.ab``): its ratios point the
right way, a batch phase counts until its predictions are logged, and the harness serves another
checkout's code from that checkout."""

from __future__ import annotations

import os
import sys
import textwrap
import urllib.request
from pathlib import Path

import pytest

from bench import loadgen as lg
from bench.ab import FIGURES, Measured, summarize
from bench.harness import ServerProcess, bentoml_command
from bench.phases import Phase


def _figures(p50: float, batch: float) -> dict[str, float]:
    values = {f.name: 1.0 for f in FIGURES}
    values.update(p50_ms_at_300rps=p50, batch_predictions_per_s=batch)
    return values


def test_the_ratios_are_above_one_where_this_checkout_is_better_and_their_median_is_over_rounds():
    """Latency lower is better, throughput higher: a ratio above 1 always favours this checkout,
    for the service's own figures and for its figures against its floor."""
    baseline = [
        {"service": _figures(2.0, 20_000), "floor": _figures(1.0, 80_000)},
        {"service": _figures(3.0, 18_000), "floor": _figures(1.5, 60_000)},
        {"service": _figures(2.0, 22_000), "floor": _figures(1.0, 80_000)},
    ]
    this = [
        {"service": _figures(1.0, 40_000), "floor": _figures(1.0, 80_000)},  # twice as good as round 1's baseline
        {"service": _figures(6.0, 9_000), "floor": _figures(1.5, 60_000)},  # half as good
        {"service": _figures(2.0, 22_000), "floor": _figures(2.0, 88_000)},  # same service, a slower floor
    ]
    out = summarize(this, baseline, with_floor=True)
    p50, batch = out["p50_ms_at_300rps"], out["batch_predictions_per_s"]
    assert (p50["baseline"], p50["this"], p50["ratio"]) == (2.0, 2.0, 1.0)  # ratios 2, 0.5, 1
    assert (batch["baseline"], batch["this"], batch["ratio"]) == (20_000, 22_000, 1.0)  # ratios 2, 0.5, 1
    # Against the floor: baseline's service is 2x its floor's p50 in every round; this one 1x, 4x, 1x.
    floor_p50 = out["p50_ms_at_300rps service/floor"]
    assert floor_p50["baseline"] == pytest.approx(0.5) and floor_p50["this"] == pytest.approx(1.0)
    assert floor_p50["ratio"] == pytest.approx(2.0)  # rounds: 2, 0.5, 2
    floor_batch = out["batch_predictions_per_s service/floor"]
    assert floor_batch["ratio"] == pytest.approx(0.25 / (22_000 / 80_000))  # round 3: same service, floor 10 % faster


def _phase(ok: int, elapsed: float, cores: float) -> Phase:
    result = lg.Result("p", rate=None, duration=elapsed, connections=4)
    result.latencies.extend([0.01] * ok)
    result.elapsed = elapsed
    return Phase(result, server_cpu=cores, gen_cpu=0.0, other_cpu=0.0)


def test_a_batch_phase_counts_until_the_log_holds_its_predictions():
    """A service that answers fast and writes its log after the phase is not credited for it: the
    logged rate counts the time (and the CPU) until the log holds every answered prediction."""
    figures = {f.name: f for f in FIGURES}
    batch = _phase(ok=40, elapsed=20.0, cores=1.8)  # 40 calls of 500: 20,000 predictions in 20 s
    quick = Measured(_phase(1, 1.0, 1.0), batch, _phase(1, 1.0, 1.0), log_seconds=0.0, log_cpu=0.0)
    behind = Measured(_phase(1, 1.0, 1.0), batch, _phase(1, 1.0, 1.0), log_seconds=5.0, log_cpu=4.0)
    assert figures["batch_predictions_per_s"].of(quick) == figures["batch_predictions_per_s"].of(behind) == 1_000
    assert figures["batch_logged_per_s"].of(quick) == 1_000
    assert figures["batch_logged_per_s"].of(behind) == 800  # 20,000 in 25 s
    assert figures["batch_logged_per_core_s"].of(quick) == pytest.approx(20_000 / 36)
    assert figures["batch_logged_per_core_s"].of(behind) == pytest.approx(20_000 / 40)


def test_a_server_of_another_checkout_runs_that_checkouts_code_with_its_environment(tmp_path):
    """``ServerProcess(root=...)`` starts ``root/.venv/bin/bentoml`` in ``root``, with ``root`` on
    the import path: the baseline's own code, not this checkout's."""
    other = tmp_path / "other"
    (other / ".venv" / "bin").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="make setup"):
        bentoml_command(other)
    (other / ".venv" / "bin" / "bentoml").symlink_to(Path(sys.executable).with_name("bentoml"))
    (other / "elsewhere.py").write_text(
        textwrap.dedent(
            """
            import os
            import bentoml

            @bentoml.service(name="elsewhere")
            class Elsewhere:
                @bentoml.api
                def where(self) -> str:
                    return os.getcwd()
            """
        )
    )
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "home"), "BENTOML_DO_NOT_TRACK": "True"}
    with ServerProcess("elsewhere:Elsewhere", env, tmp_path / "other.log", root=other) as server:
        request = urllib.request.Request(
            f"{server.url}/where", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert Path(answer.read().decode()) == other
