"""Latency and throughput of the prediction service: ``python -m bench`` (``make bench``).

What it does, in one run (``--quick`` for a smoke run):

0. Runs the generator against a trivial server that answers instantly: the latency floor the
   generator itself adds, printed first.
1. Starts ``bentoml serve serving.service:FlightDelayService`` on a free loopback port (own process
   group, stopped at the end), over a scratch data folder that links the real one's model registry
   and Feast state, so the benchmark's logged predictions go to a throwaway prediction log and not
   to ``data/prediction_log``. Waits for ``/readyz``, warms up (sequential single and batch calls,
   then a few seconds of load).
2. ``/predict`` at 300 requests/s, open loop: latency percentiles.
3. The highest single-row rate the service sustains with p99 <= 50 ms and no errors: open-loop
   steps of rising rate (x1.25 until a step fails, then two bisection steps).
4. ``/predict_batch`` with batches of 500 flights, closed loop (four connections): predictions
   per second at saturation, and per core of server CPU.
5. Closed-loop saturation of ``/predict`` (16 connections): requests/s with no latency bound.
6. A sustained phase at 1,000 requests/s (``--sustain-seconds``, ``--sustain-rate``): p99.9
   latency, and the RSS of every BentoML worker process after the phase's warm-up and at its end,
   sampled between. If the service cannot keep up, requests that waited 5 s unsent are dropped
   (the server stays saturated for the whole soak, the generator's backlog stays bounded); they
   count as unanswered, so the phase's percentiles are infinite (``null`` in the JSON).
7. The floor (:mod:`bench.floor`): a BentoML service with the same API, workers and server
   settings that parses a flight and answers without features or model. Steps 2-4 again. The
   service's figures are reported beside the floor's and as ratios, which compare across
   machines where milliseconds do not.
8. The same service with Keras ``model.predict`` per request (:mod:`bench.naive`), the same rate
   steps and the same closed-loop saturation. When even one request at a time misses
   p99 <= 50 ms, no rate can pass: ``naive_max_rps`` is 0 and ``ratio_vs_naive`` compares
   closed-loop saturation throughputs instead (``ratio_basis`` says which).

Each server runs alone, after the previous one stopped, so no two share the CPU. Then a table per
phase, the server's own stage latencies from ``/metrics`` (deltas over the phase), worker RSS, the
targets met or missed, errors, and as the last line one JSON object with the headline figures.
Exit status 1 when any request got a non-2xx answer or a broken connection; missed targets and
overload are reported, not failed.

How latency is measured, and why this generator: see :mod:`bench.loadgen`. The load is open loop
(request *i* is due at ``t0 + i/rate`` whether or not earlier requests were answered, and its
latency runs from that scheduled time), so the time a request would have waited behind a slow one
is counted. ``wrk`` is closed loop and under-reports the tail exactly when the server stalls;
``h2load``'s ``--rate`` paces connections, not requests; ``wrk2`` is not packaged by Debian. The
machine's cores are shared by server and generator: the table shows the CPU each used and what
everything else on the machine used meanwhile (``other``; the run warns when it is not small).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import loadgen as lg
from bench.flights import batch_requests, predict_requests, sample_flights, store_instant
from bench.harness import (
    HOST,
    ServerProcess,
    histogram_delta,
    other_load,
    scratch_data_folder,
    service_env,
    unwind_on_sigterm,
)
from bench.phases import SLO_P99_MS, Phase, Run, find_max_rate, generator_floor, measure, warm_up
from bench.report import (
    HEADER,
    finite,
    fmt_ms,
    print_floor_comparison,
    print_row,
    print_stage_table,
    print_targets,
)
from flight_delay.model import MODEL_NAME
from flight_delay.monitoring import Scrape, metric_total
from flight_delay.paths import DataLayout

SERVICE = "serving.service:FlightDelayService"
FLOOR_SERVICE = "bench.floor:FloorService"
NAIVE_SERVICE = "bench.naive:NaiveFlightDelayService"
# What the service is expected to reach: ratios to the floor of the same run hold on any machine
# (guards below the level measured when the floor was introduced, which later changes must keep);
# the absolute figures are those of the service issue on the reference machine (2 cores).
TARGETS = {
    "ratio_p50_at_300rps": ("<=", 3.0),
    "ratio_max_rps": (">=", 0.4),
    "ratio_batch_per_core": (">=", 0.25),
    "p50_ms_at_300rps": ("<=", 2.0),
    "p99_ms_at_300rps": ("<=", 10.0),
    "max_rps": (">=", 1500.0),
    "ratio_vs_naive": (">=", 10.0),
    "batch_predictions_per_s": (">=", 20000.0),
    "p999_ms_sustained": ("<=", 50.0),
    "rss_growth_mb": ("<=", 50.0),
}


@dataclass(frozen=True)
class Plan:
    warmup_seconds: float
    fixed_seconds: float  # the 300 req/s phase
    step_seconds: float  # each rate step of the max-rate search
    batch_seconds: float
    saturation_seconds: float
    sustain_seconds: float
    sustain_warmup_seconds: float
    naive_step_seconds: float


# The sustained phase keeps the server saturated without an ever-growing backlog here.
SUSTAIN_OPTIONS: dict[str, Any] = {"connections": 64, "max_backlog_seconds": 5.0, "drop_late": True}
# fmt: off
FULL = Plan(warmup_seconds=10, fixed_seconds=20, step_seconds=8, batch_seconds=20, saturation_seconds=10,
            sustain_seconds=300, sustain_warmup_seconds=15, naive_step_seconds=8)
QUICK = Plan(warmup_seconds=5, fixed_seconds=5, step_seconds=3, batch_seconds=5, saturation_seconds=4,
             sustain_seconds=20, sustain_warmup_seconds=3, naive_step_seconds=4)
# fmt: on


@dataclass
class Profile:
    """The phases every server goes through: 300 req/s, the max-rate search, batches."""

    fixed: Phase
    best: Phase | None
    batch: Phase
    scrapes: tuple[Scrape, Scrape, Scrape, Scrape]  # before and after fixed, after the search, after batch

    @property
    def max_rps(self) -> float:
        return self.best.result.rate if self.best else 0.0

    def batch_per_s(self, size: int) -> float:
        return self.batch.result.throughput * size

    def batch_per_core(self, size: int) -> float | None:
        return self.batch_per_s(size) / self.batch.server_cpu if self.batch.server_cpu > 0 else None


@dataclass
class Sustained:
    phase: Phase
    rss_start: dict[int, float]
    rss_end: dict[int, float]
    samples: list[tuple[float, dict[int, float]]]
    scrapes: tuple[Scrape, Scrape]


class Bench:
    """One benchmark run: its settings, its scratch data folder and every phase so far."""

    def __init__(self, args: argparse.Namespace, layout: DataLayout) -> None:
        self.args = args
        self.plan = QUICK if args.quick else FULL
        self.sustain_seconds = args.sustain_seconds if args.sustain_seconds is not None else self.plan.sustain_seconds
        self.run = Run(print_row)
        self.workers = int(os.environ.get("FLIGHT_DELAY_WORKERS", "1"))
        self.servers: list[ServerProcess] = []
        self.instant = store_instant(layout)
        self.flights = sample_flights(self.instant)
        self.scratch = scratch_data_folder(layout, "flight-delay-bench-")

    def server(self, target: str, name: str, **extra_env: str) -> ServerProcess:
        env = service_env(self.scratch, self.scratch / f"bentoml-home-{name}") | extra_env
        server = ServerProcess(target, env, self.scratch / f"{name}.log", name=name, workers=self.workers)
        self.servers.append(server)
        return server

    def open_phase(
        self,
        server: ServerProcess,
        requests: list[bytes],
        rate: float,
        seconds: float,
        name: str,
        note: str = "",
        counted: bool = True,
        **options: Any,
    ) -> Phase:
        """An open-loop phase (``options`` go to :func:`bench.loadgen.open_loop`), measured and printed."""
        return self.run.add(
            measure(
                server,
                lambda: lg.open_loop(HOST, server.port, requests, rate, seconds, name=name, **options),
                note=note,
                counted=counted,
            )
        )

    def closed_phase(
        self, server: ServerProcess, requests: list[bytes], seconds: float, name: str, connections: int
    ) -> Phase:
        """A closed-loop phase over ``connections``, measured and printed."""
        return self.run.add(
            measure(
                server, lambda: lg.closed_loop(HOST, server.port, requests, seconds, name=name, connections=connections)
            )
        )

    def profile(self, server: ServerProcess, label: str) -> Profile:
        single = predict_requests(server.port, self.flights)
        batch = batch_requests(server.port, self.flights, self.args.batch_size)
        warm_up(server, single, batch, self.plan.warmup_seconds, self.run)
        m0 = server.metrics()
        fixed = self.open_phase(server, single, 300, self.plan.fixed_seconds, f"{label} 300/s (open loop)")
        m1 = server.metrics()
        best = find_max_rate(server, single, self.run, f"{label} step", 500, self.plan.step_seconds)
        m2 = server.metrics()
        # Two connections per worker: the kernel hands each connection to whichever worker accepts
        # it first, so with one per worker both can land on the same one.
        batch_phase = self.closed_phase(
            server, batch, self.plan.batch_seconds, f"{label} batch x{self.args.batch_size} (closed)", connections=4
        )
        return Profile(fixed, best, batch_phase, (m0, m1, m2, server.metrics()))

    def sustained(self, server: ServerProcess) -> Sustained:
        single = predict_requests(server.port, self.flights)
        rate, seconds = self.args.sustain_rate, self.sustain_seconds
        self.open_phase(
            server,
            single,
            rate,
            self.plan.sustain_warmup_seconds,
            "sustain warm-up",
            note="(not measured)",
            counted=False,
            **SUSTAIN_OPTIONS,
        )
        gc.collect()
        rss_start = server.rss()
        samples: list[tuple[float, dict[int, float]]] = []

        async def phase() -> lg.Result:
            async def sample() -> None:
                t0 = time.monotonic()
                while True:
                    await asyncio.sleep(min(30.0, max(1.0, seconds / 10)))
                    samples.append((time.monotonic() - t0, server.rss()))

            sampler = asyncio.ensure_future(sample())
            try:
                return await lg.open_loop(
                    HOST,
                    server.port,
                    single,
                    rate,
                    seconds,
                    name=f"sustained {rate:g}/s {seconds:g} s",
                    **SUSTAIN_OPTIONS,
                )
            finally:
                sampler.cancel()

        m4 = server.metrics()
        result = self.run.add(measure(server, phase))
        return Sustained(result, rss_start, server.rss(), samples, (m4, server.metrics()))

    def naive(self) -> tuple[Phase | None, Phase, Phase]:
        """The naive baseline: one request at a time, the rate search when that passes, saturation."""
        print(f"\nstarting {NAIVE_SERVICE} (Keras model.predict per request) ...", flush=True)
        with self.server(NAIVE_SERVICE, "naive") as naive:
            single = predict_requests(naive.port, self.flights)
            print(f"ready on {HOST}:{naive.port}; worker pids {naive.worker_pids}\n{HEADER}", flush=True)

            async def warm() -> None:
                for data in single[:20]:
                    status, body = await lg.fetch(HOST, naive.port, data, timeout=60)
                    if status != 200:
                        raise RuntimeError(f"naive warm-up answered {status}: {body[:500]!r}")

            asyncio.run(warm())
            probe = self.closed_phase(naive, single, self.plan.naive_step_seconds, "naive sequential (closed)", 1)
            best = None
            if probe.result.percentile(99) > SLO_P99_MS:
                print(
                    f"naive: p99 of single requests one at a time is {fmt_ms(probe.result.percentile(99))} ms "
                    f"> {SLO_P99_MS:g} ms: no rate meets the latency bound; naive_max_rps = 0",
                    flush=True,
                )
            else:
                best = find_max_rate(
                    naive,
                    single,
                    self.run,
                    "naive step",
                    max(0.5, 0.5 * probe.result.throughput),
                    self.plan.naive_step_seconds,
                    factor=1.5,
                )
            saturation = self.closed_phase(
                naive, single, self.plan.saturation_seconds * 2, "naive saturation (closed)", 16
            )
        return best, probe, saturation

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


def cache_hit_rate(before: Scrape, after: Scrape) -> float | None:
    """Share of online-feature rows the workers took from their short-lived cache (the rest were
    read from the online store) between two scrapes."""

    def rows(m: Scrape, source: str) -> float:
        return metric_total(m, "flight_delay_online_rows_total", source=source)

    cached = rows(after, "cache") - rows(before, "cache")
    read = rows(after, "store") - rows(before, "store")
    return cached / (cached + read) if cached + read else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def floor_summary(service: Profile, floor: Profile, size: int) -> dict[str, Any]:
    """The floor's figures and the service's as ratios to them (latency: service / floor, the
    lower the better; throughput: service / floor, the higher the better)."""
    s_p50, f_p50 = service.fixed.result.percentile(50), floor.fixed.result.percentile(50)
    s_p99, f_p99 = service.fixed.result.percentile(99), floor.fixed.result.percentile(99)
    rows = [
        ("p50 ms at 300 req/s", s_p50, f_p50, _ratio(s_p50, f_p50)),
        ("p99 ms at 300 req/s", s_p99, f_p99, _ratio(s_p99, f_p99)),
        ("max req/s with p99 <= 50 ms", service.max_rps, floor.max_rps, _ratio(service.max_rps, floor.max_rps)),
        (
            "batch predictions/s per server core",
            service.batch_per_core(size),
            floor.batch_per_core(size),
            _ratio(service.batch_per_core(size), floor.batch_per_core(size)),
        ),
    ]
    print_floor_comparison(rows)
    return {
        "floor_p50_ms_at_300rps": f_p50,
        "floor_p99_ms_at_300rps": f_p99,
        "floor_max_rps": floor.max_rps,
        "floor_batch_predictions_per_s": floor.batch_per_s(size),
        "floor_batch_predictions_per_core_s": floor.batch_per_core(size),
        "ratio_p50_at_300rps": rows[0][3],
        "ratio_p99_at_300rps": rows[1][3],
        "ratio_max_rps": rows[2][3],
        "ratio_batch_per_core": rows[3][3],
    }


def naive_summary(
    saturation: Phase, service: Profile, naive: tuple[Phase | None, Phase, Phase] | None
) -> dict[str, Any]:
    if naive is None:
        return {"naive_max_rps": None, "ratio_vs_naive": None, "ratio_basis": "naive baseline not measured"}
    best, probe, nsat = naive
    naive_max = best.result.rate if best else 0.0
    if naive_max > 0:
        ratio, basis = service.max_rps / naive_max, "max_rps / naive_max_rps (both at p99 <= 50 ms)"
    else:
        ratio = saturation.result.throughput / nsat.result.throughput if nsat.result.throughput else None
        basis = "saturation_rps / naive_saturation_rps (the naive service meets p99 <= 50 ms at no rate)"
    return {
        "naive_max_rps": naive_max,
        "naive_saturation_rps": nsat.result.throughput,
        "naive_p50_ms_sequential": probe.result.percentile(50),
        "ratio_vs_naive": ratio,
        "ratio_basis": basis,
    }


def print_service_details(
    bench: Bench, service: Profile, sustained: Sustained, rss_after_warmup: dict[int, float]
) -> dict[str, Any]:
    """The server's own stage timings, batch breakdown and worker memory."""
    m0, m1, m2, m3 = service.scrapes
    stages = {
        "predict_300rps": print_stage_table("predict at 300/s, server side", m0, m1),
        "sustained": print_stage_table(f"sustained {bench.args.sustain_rate:g}/s, server side", *sustained.scrapes),
    }
    stage = "flight_delay_stage_latency_seconds"
    b = histogram_delta(m2, m3, stage, stage="feature_lookup", endpoint="predict_batch")
    bi = histogram_delta(m2, m3, stage, stage="inference", endpoint="predict_batch")
    br = histogram_delta(m2, m3, "flight_delay_request_latency_seconds", endpoint="predict_batch")
    if b and bi and br:
        print(
            f"\npredict_batch x{bench.args.batch_size}, server side: in method {br['mean_ms']:.1f} ms "
            f"(feature_lookup {b['mean_ms']:.1f} ms, inference {bi['mean_ms']:.1f} ms, the rest "
            f"{br['mean_ms'] - b['mean_ms'] - bi['mean_ms']:.1f} ms: per-row responses, metrics, log) per call; "
            f"client-side p50 {fmt_ms(service.batch.result.percentile(50))} ms"
        )
        stages["predict_batch"] = {
            "in_method_ms": br["mean_ms"],
            "feature_lookup_ms": b["mean_ms"],
            "inference_ms": bi["mean_ms"],
        }
    print(
        "\nworker RSS (MB): "
        + "; ".join(
            f"pid {p}: after warm-up {rss_after_warmup.get(p, float('nan')):.0f}, sustain start "
            f"{sustained.rss_start.get(p, float('nan')):.0f}, end {sustained.rss_end.get(p, float('nan')):.0f}"
            for p in sustained.rss_start
        )
    )
    if sustained.samples:
        print("  during sustained phase: " + ", ".join(f"{t:.0f}s {max(v.values()):.0f}" for t, v in sustained.samples))
    return stages


def print_health(run: Run, servers: list[ServerProcess]) -> dict[str, Any]:
    """Errors, overload, worker restarts and other load on the machine, over every phase."""

    def failures(p: Phase) -> dict[str, int]:
        # A rate step past capacity is shed with 503 by design (it finds the limit): not an error.
        shed = {503} if not p.counted else set()
        return {str(s): n for s, n in p.result.statuses.items() if not 200 <= s < 300 and s not in shed}

    errors = {
        p.result.name: {"non_2xx": failures(p), "connection_errors": dict(p.result.errors)}
        for p in run.phases
        if failures(p) or p.result.errors
    }
    shed = {p.result.name: p.result.statuses[503] for p in run.phases if not p.counted and p.result.statuses[503]}
    unanswered = {p.result.name: p.result.unanswered for p in run.phases if p.counted and p.result.unanswered > 0}
    overload = sum(1 for p in run.phases if not p.counted and p.note == "FAIL")
    if errors:
        print(f"\nERRORS: requests answered with a non-2xx status or a broken connection: {errors}")
    else:
        print("\nno request failed (every answer was 2xx, no connection error)")
    if unanswered:
        print(
            f"OVERLOAD: measured phases with requests left unanswered (dropped or not answered in time; "
            f"counted as infinitely slow): {unanswered}"
        )
    busy = [p for p in run.phases if p.other_cpu > 0.2]
    if busy:
        worst = max(busy, key=lambda p: p.other_cpu)
        print(
            f"WARNING: other processes used CPU during {len(busy)} phases (up to {worst.other_cpu:.2f} cores, "
            f"in '{worst.result.name}'): those figures understate the service; rerun on a quiet machine"
        )
    if overload:
        print(f"({overload} rate steps of the max-rate search failed, by design: they find the limit)")
    if shed:
        print(f"(load shed with 503 in rate steps past capacity: {shed})")
    restarted = [s.name for s in servers if s.restarted]
    if restarted:
        print(
            f"WARNING: a worker of {', '.join(restarted)} was restarted during the run (see its log): "
            "its figures were measured on fewer workers for a while"
        )
    return {
        "restarted_workers": restarted,
        "shed_in_search_steps": shed,
        "errors": errors,
        "unanswered": unanswered,
        "failed_overload_steps": overload,
        "other_load_cores_max_phase": max(p.other_cpu for p in run.phases),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="data folder written by `make demo` (default: $FLIGHT_DELAY_DATA_DIR or data/)",
    )
    parser.add_argument(
        "--sustain-seconds",
        type=float,
        default=None,
        help="length of the sustained phase (default 300; 20 with --quick)",
    )
    parser.add_argument("--sustain-rate", type=float, default=1000.0, help="requests/s of the sustained phase")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--skip-naive", action="store_true", help="do not measure the naive baseline")
    parser.add_argument("--skip-floor", action="store_true", help="do not measure the floor service")
    parser.add_argument(
        "--floor-answers",
        choices=("orjson", "pydantic"),
        default="orjson",
        help="how the floor encodes its answers: as the service does (default), or a pydantic model per "
        "prediction as the floor did before the service encoded its own (to compare ratios with runs of that code)",
    )
    parser.add_argument(
        "--service",
        default=SERVICE,
        help=f"import string of the service under test (default {SERVICE}; e.g. a variant to compare)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_sigterm()
    layout = DataLayout.resolve(args.data_dir)
    champions = layout.bentoml_home / "champions" / f"{MODEL_NAME}.jsonl"
    if not champions.exists():
        print(
            f"error: {champions} does not exist: no champion model in {layout.root}; run `make demo` first",
            file=sys.stderr,
        )
        return 2
    started = time.monotonic()
    idle_other = other_load()
    bench = Bench(args, layout)
    champion = json.loads(champions.read_text().splitlines()[-1])["tag"]
    print(
        f"serving benchmark: {platform.node()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; data {layout.root}; champion {champion}; "
        f"{len(bench.flights)} request bodies (the flights of the day after {bench.instant:%Y-%m-%d %H:%M %Z}, "
        f"the online store's instant, predicted at that instant; "
        f"{sum(f['tailnum'].startswith('ZZ') for f in bench.flights)} with unknown tail numbers)"
        f"{'; QUICK run' if args.quick else ''}",
        flush=True,
    )
    if idle_other > 0.2:
        print(
            f"WARNING: other processes keep {idle_other:.2f} of {os.cpu_count()} cores busy before the "
            "benchmark starts; figures will be lower than on a quiet machine (see the 'other' column)",
            flush=True,
        )
    print(HEADER, flush=True)
    generator = generator_floor(
        bench.run,
        lambda port: predict_requests(port, bench.flights),
        bench.scratch / "fixed.log",
        rate=1500,
        seconds=3 if args.quick else 5,
    )
    summary: dict[str, Any] = {
        "quick": args.quick,
        "floor_answers": args.floor_answers,
        "service": args.service,
        "champion": champion,
        "store_instant": bench.instant.isoformat(),
        "request_bodies": len(bench.flights),
        "cpus": os.cpu_count(),
        "workers": os.environ.get("FLIGHT_DELAY_WORKERS", "1"),
    }
    try:
        print(f"\nstarting {args.service} ...", flush=True)
        with bench.server(args.service, "service") as server:
            print(
                f"ready on {HOST}:{server.port}; worker pids {server.worker_pids}; "
                f"started in {time.monotonic() - started:.0f} s\n{HEADER}",
                flush=True,
            )
            service = bench.profile(server, "predict")
            rss_after_warmup = server.rss()
            saturation = bench.closed_phase(
                server,
                predict_requests(server.port, bench.flights),
                bench.plan.saturation_seconds,
                "predict saturation (closed)",
                16,
            )
            sustained = bench.sustained(server)
            stages = print_service_details(bench, service, sustained, rss_after_warmup)
        floor = None
        if not args.skip_floor:
            print(f"\nstarting {FLOOR_SERVICE} (the API over nothing: the floor) ...", flush=True)
            with bench.server(FLOOR_SERVICE, "floor", FLIGHT_DELAY_FLOOR_ANSWERS=args.floor_answers) as floor_server:
                print(
                    f"ready on {HOST}:{floor_server.port}; worker pids {floor_server.worker_pids}\n{HEADER}", flush=True
                )
                floor = bench.profile(floor_server, "floor")
        naive = None if args.skip_naive else bench.naive()
    finally:
        bench.close()

    size = args.batch_size
    growth = {p: sustained.rss_end.get(p, float("nan")) - v for p, v in sustained.rss_start.items()}
    summary |= {
        "p50_ms_at_300rps": service.fixed.result.percentile(50),
        "p99_ms_at_300rps": service.fixed.result.percentile(99),
        "p999_ms_at_300rps": service.fixed.result.percentile(99.9),
        "max_rps": service.max_rps,
        "p99_ms_at_max": service.best.result.percentile(99) if service.best else None,
        "saturation_rps": saturation.result.throughput,
        "batch_size": size,
        "batch_predictions_per_s": service.batch_per_s(size),
        "batch_predictions_per_core_s": service.batch_per_core(size),
        "batch_p50_ms": service.batch.result.percentile(50),
    }
    if floor is not None:
        summary |= floor_summary(service, floor, size)
    summary |= naive_summary(saturation, service, naive)
    summary |= {
        "sustain_rate": args.sustain_rate,
        "sustain_seconds": bench.sustain_seconds,
        "p50_ms_sustained": sustained.phase.result.percentile(50),
        "p99_ms_sustained": sustained.phase.result.percentile(99),
        "p999_ms_sustained": sustained.phase.result.percentile(99.9),
        "rss_growth_mb": max(growth.values()) if growth else None,
        "rss_mb_start": {str(k): round(v, 1) for k, v in sustained.rss_start.items()},
        "rss_mb_end": {str(k): round(v, 1) for k, v in sustained.rss_end.items()},
        "feature_cache_hit_rate": cache_hit_rate(service.scrapes[0], sustained.scrapes[1]),
        "generator_lag_p99_ms": max(p.result.lag_ms(99) for p in bench.run.phases if p.result.rate is not None),
        "sustained_done_rps": sustained.phase.result.throughput,
        "sustained_unanswered": sustained.phase.result.unanswered,
        "other_load_cores_before": idle_other,
        "generator_floor_p50_ms": generator.result.percentile(50),
        "generator_floor_p99_ms": generator.result.percentile(99),
        "future_values": metric_total(sustained.scrapes[1], "flight_delay_future_values_total"),
        "stages": stages,
    }
    summary |= print_health(bench.run, bench.servers)
    summary["targets_met"] = print_targets(summary, TARGETS)
    summary["elapsed_s"] = time.monotonic() - started
    print(json.dumps({k: finite(v) for k, v in summary.items()}, default=str))
    return 1 if summary["errors"] else 0
