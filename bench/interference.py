"""Does waiting work hold up predictions? ``python -m bench.interference`` (``make bench-interference``).

Feedback for a prediction that is not logged (yet) waits for other workers' log commits before it
answers 404: work that used to sleep on the worker's event loop, stalling every request of that
worker. This measures ``/predict`` (open loop) alone and then with such feedback alongside, on
the same server: one worker at 100 predictions/s with 5 feedback/s, two workers at 300/s with
50/s. It prints the four p99 figures and, as its last line, one JSON object; a ratio (with / without)
near 1 means the feedback does not hold predictions up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import loadgen as lg
from bench.flights import predict_requests, sample_flights, store_instant
from bench.harness import HOST, ServerProcess, service_env, unwind_on_sigterm
from bench.phases import Phase, Run, measure
from bench.report import HEADER, finite, print_row
from flight_delay.paths import DataLayout

SERVICE = "serving.service:FlightDelayService"
SCENARIOS = ((1, 100.0, 5.0), (2, 300.0, 50.0))  # (workers, predict/s, feedback/s)


def feedback_requests(port: int, n: int = 5000) -> list[bytes]:
    """Outcomes for flights nobody predicted: each waits for the log, then is answered 404."""
    bodies = [
        {"feedback": {"flight_key": f"2013-01-01:ZZ{i % 9999 + 1}:EWR", "departure_delay_minutes": 5}} for i in range(n)
    ]
    return [lg.encode_post(HOST, port, "/feedback", json.dumps(b).encode()) for b in bodies]


def scenario(
    layout: DataLayout, scratch: Path, workers: int, rate: float, feedback_rate: float, seconds: float, run: Run
) -> dict[str, Any]:
    flights = sample_flights(store_instant(layout))
    env = service_env(scratch, scratch / f"home-{workers}", workers=workers)
    with ServerProcess(SERVICE, env, scratch / f"service-{workers}.log", workers=workers) as server:
        single = predict_requests(server.port, flights)
        feedback = feedback_requests(server.port)
        run.add(
            measure(
                server,
                lambda: lg.open_loop(HOST, server.port, single, rate, 5, name="warm-up"),
                note="(not measured)",
                counted=False,
            )
        )
        alone = run.add(
            measure(
                server,
                lambda: lg.open_loop(
                    HOST, server.port, single, rate, seconds, name=f"{workers}w predict {rate:g}/s alone"
                ),
            )
        )

        async def both() -> tuple[lg.Result, lg.Result]:
            return await asyncio.gather(
                lg.open_loop(
                    HOST, server.port, single, rate, seconds, name=f"{workers}w predict {rate:g}/s + feedback"
                ),
                lg.open_loop(
                    HOST,
                    server.port,
                    feedback,
                    feedback_rate,
                    seconds,
                    connections=16,
                    name=f"{workers}w feedback {feedback_rate:g}/s (404)",
                ),
            )

        results: dict[str, lg.Result] = {}

        async def measured() -> lg.Result:
            results["predict"], results["feedback"] = await both()
            return results["predict"]

        together = run.add(measure(server, measured))
        print_row(Phase(results["feedback"], 0.0, 0.0, 0.0, "answered 404, as expected"))
    p99_alone, p99_together = alone.result.percentile(99), together.result.percentile(99)
    return {
        "workers": workers,
        "predict_rps": rate,
        "feedback_rps": feedback_rate,
        "p99_ms_alone": p99_alone,
        "p99_ms_with_feedback": p99_together,
        "ratio": p99_together / p99_alone if p99_alone else None,
        "feedback_answered": sum(results["feedback"].statuses.values()),
        "feedback_statuses": {str(k): v for k, v in results["feedback"].statuses.items()},
        "predict_failed": together.result.failed + alone.result.failed,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.interference", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each measured phase")
    parser.add_argument("--data-dir", type=Path, default=None, help="data folder of `make demo` (default: data/)")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    layout = DataLayout.resolve(args.data_dir)
    scratch = Path(tempfile.mkdtemp(prefix="flight-delay-interference-"))
    for name in ("bentoml", "feast"):
        (scratch / name).symlink_to(layout.root / name, target_is_directory=True)
    run = Run(print_row)
    print(HEADER, flush=True)
    try:
        figures = [scenario(layout, scratch, w, r, f, args.seconds, run) for w, r, f in SCENARIOS]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for f in figures:
        print(
            f"{f['workers']} worker(s), {f['predict_rps']:g} predictions/s: p99 {f['p99_ms_alone']:.2f} ms alone, "
            f"{f['p99_ms_with_feedback']:.2f} ms with {f['feedback_rps']:g} feedback/s alongside "
            f"({f['ratio']:.2f}x; the bound is 2x)"
        )
    print(json.dumps([{k: finite(v) for k, v in f.items()} for f in figures]))
    return 1 if any(f["predict_failed"] for f in figures) else 0


if __name__ == "__main__":
    sys.exit(main())
