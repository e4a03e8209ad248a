"""Latency and throughput of the prediction service: ``python -m serving.bench`` (``make bench``).

What it does, in one run (about 10 minutes by default; ``--quick`` for a smoke run of ~2):

0. Runs the generator against a trivial server that answers instantly (1,500 requests/s): the
   latency floor the generator itself adds, printed first.
1. Starts ``bentoml serve serving.service:FlightDelayService`` itself on a free loopback port
   (own process group, stopped at the end), over a scratch data folder that links the real
   one's model registry and Feast state, so the benchmark's hundreds of thousands of logged
   predictions go to a throwaway prediction log and not to ``data/prediction_log``. Waits for
   ``/readyz``, warms up (sequential single and batch calls, then a few seconds of load).
2. ``/predict`` at 300 requests/s, open loop: latency percentiles.
3. The highest single-row rate the service sustains with p99 <= 50 ms and no errors: open-loop
   steps of rising rate (x1.25 until a step fails, then two bisection steps).
4. ``/predict_batch`` with batches of 500 flights, closed loop (four connections): predictions
   per second at saturation.
5. Closed-loop saturation of ``/predict`` (16 connections): requests/s with no latency bound.
6. A sustained phase at 1,000 requests/s (5 minutes; ``--sustain-seconds``, ``--sustain-rate``):
   p99.9 latency, and the RSS of every BentoML worker process (``VmRSS`` of the serve process's
   ``_bentoml_impl.worker`` children) after the phase's warm-up and at its end, sampled between.
   If the service cannot keep up, requests that waited 5 s unsent are dropped (the server stays
   saturated for the whole soak, the generator's backlog stays bounded); they count as
   unanswered, so the phase's percentiles are infinite (``null`` in the JSON), as they should be.
7. The same service with Keras ``model.predict`` per request (:mod:`serving.naive`), started
   after the first is stopped so the two never share the CPU: the same rate steps and the same
   closed-loop saturation. When even one request at a time misses p99 <= 50 ms, no rate can pass:
   ``naive_max_rps`` is 0 and ``ratio_vs_naive`` compares closed-loop saturation throughputs
   instead (``ratio_basis`` says which).

Then a table per phase, the server's own stage latencies from ``/metrics`` (deltas over the
phase), worker RSS, the targets met or missed (and by how much), errors, and as the last line
one JSON object with the headline figures. Exit status 1 when any request got a non-2xx answer
or a broken connection; missed targets and overload are reported, not failed.

How latency is measured, and why this generator. The load is open loop: request *i* is due at
``t0 + i/rate`` whether or not earlier requests were answered, and its latency runs from that
scheduled time to the last byte of its response, so the time a request would have waited behind
a slow one is counted (no coordinated omission). ``wrk`` is closed loop (each connection waits
for its answer before sending the next) and under-reports the tail exactly when the server
stalls; ``h2load``'s ``--rate`` paces new *connections*, not requests, and it prints min/max/mean/sd
but no percentiles; ``wrk2`` (the open-loop fork) is not packaged by Debian. So the generator is
:mod:`serving.bench_loadgen`: plain asyncio over keep-alive sockets with pre-encoded HTTP/1.1
requests and minimal response parsing, and a ``timerfd`` to wake on each due time (asyncio and
uvloop timers round to whole milliseconds, which alone would add ~0.5 ms to every latency). The
generator's own lateness is recorded and printed (``lag99``): if it is not small compared
with the latencies, the generator, not the service, limits the measurement. The machine's cores
are shared by server and generator; the table shows the CPU each used (``srv cpu``, ``gen cpu``,
in cores) and what everything else on the machine used meanwhile (``other``: with other work
running, the figures are lower than the service can do, and the run warns). Failed or
unanswered requests count as infinitely slow in the percentiles, so a phase
with errors cannot report a flattering tail, and errors are counted and printed per phase.

The closed-loop figures (batch, saturation) are throughput measurements, where the
closed loop is the right tool: they ask how much work gets done, not how long a request waits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from serving import bench_loadgen as lg
from serving.bench_server import (
    machine_busy_seconds,
    other_load,
    Server,
    scratch_data_dir,
    histogram_delta,
    metric_total,
)
from serving.settings import PROJECT_ROOT

HOST = "127.0.0.1"
HORIZON_MINUTES = 60  # the training default (pipeline TrainingSetConfig.horizon_minutes)
SERVICE = "serving.service:FlightDelayService"
NAIVE_SERVICE = "serving.naive:NaiveFlightDelayService"
SLO_P99_MS = 50.0
TARGETS = {  # what the service is expected to reach on the reference machine (2 cores)
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


FULL = Plan(warmup_seconds=10, fixed_seconds=20, step_seconds=8, batch_seconds=20,
            saturation_seconds=10, sustain_seconds=300, sustain_warmup_seconds=15,
            naive_step_seconds=8)
QUICK = Plan(warmup_seconds=5, fixed_seconds=5, step_seconds=3, batch_seconds=5,
             saturation_seconds=4, sustain_seconds=20, sustain_warmup_seconds=3,
             naive_step_seconds=4)


# -- request bodies -----------------------------------------------------------------------------
def sample_flights(n: int = 2000, unknown: int = 40, seed: int = 2013) -> list[dict]:
    """A fixed sample of real March 2013 departures (tail numbers and routes the feature store
    knows), plus ``unknown`` of them with made-up tail numbers the store has never seen. Each is
    predicted 60 minutes before its scheduled departure, as the model was trained: at today's
    date every 2013 feature would be past its view's TTL and served as missing."""
    import numpy as np
    import pandas as pd

    from flight_delay import data
    from flight_delay.features import LOCAL_TZ

    flights = data.read_table("flights")
    local = flights["time_hour"].dt.tz_convert(LOCAL_TZ)
    march = flights[(local.dt.year == 2013) & (local.dt.month == 3) & flights["tailnum"].notna()]
    picked = march.sample(n=n, random_state=seed)
    scheduled = (picked["time_hour"] + pd_minutes(picked["minute"])).dt.tz_convert(LOCAL_TZ)
    out = [
        {"carrier": r.carrier, "flight": int(r.flight), "tailnum": r.tailnum, "origin": r.origin,
         "dest": r.dest, "scheduled_departure": s.isoformat(), "distance": float(r.distance),
         "prediction_time": (s - pd.Timedelta(minutes=HORIZON_MINUTES)).isoformat()}
        for r, s in zip(picked.itertuples(index=False), scheduled)
    ]
    rng = np.random.default_rng(seed)
    for k, i in enumerate(rng.choice(len(out), size=unknown, replace=False)):
        out.append({**out[int(i)], "tailnum": f"ZZ{k:04d}"})
    order = rng.permutation(len(out))
    return [out[int(i)] for i in order]


def pd_minutes(minutes):
    import pandas as pd

    return pd.to_timedelta(minutes.astype("int64"), unit="m")


def predict_requests(port: int, flights: list[dict]) -> list[bytes]:
    return [lg.encode_post(HOST, port, "/predict", json.dumps({"flight": f}).encode()) for f in flights]


def batch_requests(port: int, flights: list[dict], size: int) -> list[bytes]:
    batches = [flights[i:i + size] for i in range(0, len(flights) - size + 1, size)]
    return [lg.encode_post(HOST, port, "/predict_batch", json.dumps({"flights": b}).encode())
            for b in batches]


# -- phases -------------------------------------------------------------------------------------
@dataclass
class Phase:
    result: lg.Result
    server_cpu: float  # cores used by the server processes during the phase
    gen_cpu: float  # cores used by this process
    other_cpu: float  # cores used by everything else on the machine (other work skews the figures)
    note: str = ""
    counted: bool = True  # whether unanswered requests are reported as overload (not search steps, warm-ups)


@dataclass
class Run:
    phases: list[Phase] = field(default_factory=list)

    def add(self, phase: Phase) -> Phase:
        self.phases.append(phase)
        print_row(phase)
        return phase


def measure(server: Server, coro_factory, note: str = "", counted: bool = True) -> Phase:
    gc.collect()
    gc.disable()
    try:
        c0, b0, w0 = server.cpu(), machine_busy_seconds(), time.monotonic()
        loop = lg.new_event_loop()
        try:
            result = loop.run_until_complete(coro_factory())
        finally:
            loop.close()
        c1, b1, w1 = server.cpu(), machine_busy_seconds(), time.monotonic()
    finally:
        gc.enable()
    wall = max(w1 - w0, 1e-9)
    srv, gen = (c1 - c0) / wall, result.gen_cpu_seconds / wall
    return Phase(result, srv, gen, max(0.0, (b1 - b0) / wall - srv - gen), note, counted)


def cache_hit_rate(before: dict, after: dict) -> float | None:
    """Share of online-feature rows the workers took from their short-lived cache (the rest were
    read from the online store) between two scrapes."""
    def rows(m: dict, source: str) -> float:
        return metric_total(m, "flight_delay_online_rows_total", source=source)
    cached = rows(after, "cache") - rows(before, "cache")
    read = rows(after, "store") - rows(before, "store")
    return cached / (cached + read) if cached + read else None


def passes(r: lg.Result) -> bool:
    return r.failed == 0 and r.unanswered == 0 and r.aborted is None and r.percentile(99) <= SLO_P99_MS


def find_max_rate(server: Server, requests: list[bytes], run: Run, label: str, start: float,
                  step_seconds: float, factor: float = 1.25, ceiling: float = 20_000,
                  floor: float = 0.25, refine: int = 2) -> Phase | None:
    """Highest open-loop rate that ``passes``: up by ``factor`` until a step fails (down if the
    first one does), then ``refine`` bisection steps between the last pass and the first fail."""
    def step(rate: float) -> Phase:
        rate = round(rate) if rate >= 20 else round(rate, 2)
        conns = int(min(256, max(16, rate * 0.1)))
        phase = measure(server, lambda: lg.open_loop(HOST, server.port, requests, rate, step_seconds,
                                                     name=f"{label} {rate:g}/s", connections=conns,
                                                     drain_timeout=20.0),
                        counted=False)
        phase.note = "pass" if passes(phase.result) else "FAIL"
        run.add(phase)
        time.sleep(1.0 if phase.note == "pass" else 3.0)  # let a failed step's backlog clear
        return phase

    best = fail = None
    rate = start
    first = step(rate)
    if passes(first.result):
        best = first
        while rate * factor <= ceiling:
            rate *= factor
            p = step(rate)
            if passes(p.result):
                best = p
            else:
                fail = p
                break
    else:
        fail = first
        while rate / factor >= floor:
            rate /= factor
            p = step(rate)
            if passes(p.result):
                best = p
                break
            fail = p
    for _ in range(refine):
        if best is None or fail is None:
            break
        lo, hi = best.result.rate, fail.result.rate
        mid = (lo + hi) / 2
        if mid - lo < 0.04 * lo:
            break
        p = step(mid)
        if passes(p.result):
            best = p
        else:
            fail = p
    return best


# -- output -------------------------------------------------------------------------------------
HEADER = (f"{'phase':<34}{'offered':>9}{'done/s':>9}{'ok':>8}{'non2xx':>7}{'err':>5}{'lost':>6}"
          f"{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>8}{'lag99':>7}{'srv cpu':>8}{'gen cpu':>8}"
          f"{'other':>6}  note")


def fmt_ms(x: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def print_row(p: Phase) -> None:
    r = p.result
    non2xx = sum(n for s, n in r.statuses.items() if not 200 <= s < 300)
    mx = max(r.latencies) * 1e3 if r.ok else math.nan
    offered = f"{r.rate:g}" if r.rate is not None else f"closed{r.connections}"
    print(f"{r.name:<34}{offered:>9}{r.throughput:>9.1f}{r.ok:>8}{non2xx:>7}{sum(r.errors.values()):>5}"
          f"{r.unanswered:>6}{fmt_ms(r.percentile(50)):>8}{fmt_ms(r.percentile(90)):>8}"
          f"{fmt_ms(r.percentile(99)):>8}{fmt_ms(r.percentile(99.9)):>8}{fmt_ms(mx):>8}"
          f"{fmt_ms(r.lag_ms(99)):>7}{p.server_cpu:>8.2f}{p.gen_cpu:>8.2f}{p.other_cpu:>6.2f}  {p.note}"
          + (f" [{r.aborted}]" if r.aborted else "")
          + (f" [{r.dropped} requests dropped unsent after waiting too long: the server could not keep up]"
             if r.dropped else ""), flush=True)
    for sample in r.error_samples:
        print(f"    error sample: {sample}", flush=True)


def finite(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def print_stage_table(title: str, before: dict, after: dict) -> dict:
    """Server-side view of a phase from /metrics deltas: where a request's time goes."""
    stage = "flight_delay_stage_latency_seconds"
    rows = {
        "request (in API method)": histogram_delta(before, after, "flight_delay_request_latency_seconds",
                                                   endpoint="predict"),
        "  feature_lookup (online store)": histogram_delta(before, after, stage, stage="feature_lookup", endpoint="predict"),
        "  inference (model)": histogram_delta(before, after, stage, stage="inference", endpoint="predict"),
        "bentoml request (whole ASGI app)": histogram_delta(before, after, "bentoml_service_request_duration_seconds",
                                                            endpoint="/predict"),
    }
    print(f"\n{title}  (from /metrics; percentiles are histogram bucket bounds)")
    print(f"  {'':<36}{'count':>8}{'mean ms':>10}{'p50<=':>8}{'p99<=':>8}")
    out = {}
    for name, h in rows.items():
        if h is None:
            print(f"  {name:<36}{'-':>8}")
            continue
        print(f"  {name:<36}{h['count']:>8.0f}{h['mean_ms']:>10.3f}{fmt_ms(h['p50_le_ms']):>8}"
              f"{fmt_ms(h['p99_le_ms']):>8}")
        out[name.strip()] = {k: finite(v) for k, v in h.items()}
    return out


# -- the benchmark ------------------------------------------------------------------------------
class _FixedServer(Server):
    """The trivial server of :func:`serving.bench_loadgen.serve_fixed`."""

    def __init__(self, log_path: Path) -> None:
        super().__init__("fixed-response server", Path("."), log_path)

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "serving.bench_loadgen", HOST, str(self.port)],
                                     cwd=PROJECT_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex((HOST, self.port)) == 0:
                    break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the fixed-response server did not start:\n{self.log_tail()}")
            time.sleep(0.1)


def generator_floor(run: Run, flights: list[dict], rate: float, seconds: float) -> Phase:
    """The generator against a server that answers instantly: the latency it adds by itself."""
    with tempfile.NamedTemporaryFile(prefix="flight-delay-bench-fixed-", suffix=".log") as log:
        with _FixedServer(Path(log.name)) as fixed:
            print(HEADER, flush=True)
            return run.add(measure(fixed, lambda: lg.open_loop(HOST, fixed.port, predict_requests(fixed.port, flights),
                                                               rate, seconds, name="generator floor (trivial server)"),
                                   note="the generator's own latency floor", counted=False))


def warm_up(server: Server, single: list[bytes], batch: list[bytes], seconds: float, run: Run) -> None:
    async def sequential() -> None:
        for data in single[:200]:
            status, body = await lg.fetch(HOST, server.port, data, timeout=30)
            if status != 200:
                raise RuntimeError(f"warm-up /predict answered {status}: {body[:500]!r}")
        for data in batch[:4]:
            status, body = await lg.fetch(HOST, server.port, data, timeout=60)
            if status != 200:
                raise RuntimeError(f"warm-up /predict_batch answered {status}: {body[:500]!r}")

    asyncio.run(sequential())
    run.add(measure(server, lambda: lg.open_loop(HOST, server.port, single, 200, seconds,
                                                 name="warm-up"), note="(not measured)", counted=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short phases: a smoke run of ~2 minutes")
    parser.add_argument("--data-dir", type=Path,
                        default=Path(os.environ.get("FLIGHT_DELAY_DATA_DIR") or PROJECT_ROOT / "data"),
                        help="data folder written by `make demo` (default: $FLIGHT_DELAY_DATA_DIR or data/)")
    parser.add_argument("--sustain-seconds", type=float, default=None,
                        help="length of the sustained phase (default 300; 20 with --quick)")
    parser.add_argument("--sustain-rate", type=float, default=1000.0, help="requests/s of the sustained phase")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--skip-naive", action="store_true", help="do not measure the naive baseline")
    parser.add_argument("--service", default=SERVICE,
                        help=f"import string of the service under test (default {SERVICE}; e.g. a variant to compare)")
    args = parser.parse_args(argv)

    plan = QUICK if args.quick else FULL
    sustain_seconds = args.sustain_seconds if args.sustain_seconds is not None else plan.sustain_seconds
    data_dir = args.data_dir.resolve()
    champions = data_dir / "bentoml" / "champions" / "flight_delay.jsonl"
    if not champions.exists():
        print(f"error: {champions} does not exist: no champion model in {data_dir}; run `make demo` first",
              file=sys.stderr)
        return 2

    started = time.monotonic()
    idle_other = other_load()
    flights = sample_flights()
    champion = json.loads(champions.read_text().splitlines()[-1])["tag"]
    print(f"serving benchmark: {platform.node()}, {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; data {data_dir}; champion {champion}; "
          f"{len(flights)} request bodies (March 2013 flights, {sum(f['tailnum'].startswith('ZZ') for f in flights)} "
          f"with unknown tail numbers){'; QUICK run' if args.quick else ''}", flush=True)
    if idle_other > 0.2:
        print(f"WARNING: other processes keep {idle_other:.2f} of {os.cpu_count()} cores busy before the "
              "benchmark starts; figures will be lower than on a quiet machine (see the 'other' column)",
              flush=True)

    run = Run()
    floor = generator_floor(run, flights, rate=1500, seconds=3 if args.quick else 5)
    scratch = scratch_data_dir(data_dir)
    summary: dict = {"quick": args.quick, "service": args.service, "champion": champion, "cpus": os.cpu_count()}
    stages: dict = {}
    try:
        print(f"\nstarting {args.service} ...", flush=True)
        with Server(args.service, scratch, scratch / "service.log") as server:
            print(f"ready on {HOST}:{server.port}; worker pids {server.worker_pids}; "
                  f"started in {time.monotonic() - started:.0f} s\n", flush=True)
            single = predict_requests(server.port, flights)
            batch = batch_requests(server.port, flights, args.batch_size)
            print(HEADER, flush=True)
            warm_up(server, single, batch, plan.warmup_seconds, run)
            rss_after_warmup = server.rss()

            m0 = server.metrics()
            fixed = run.add(measure(server, lambda: lg.open_loop(HOST, server.port, single, 300, plan.fixed_seconds,
                                                                 name="predict 300/s (open loop)")))
            m1 = server.metrics()
            best = find_max_rate(server, single, run, "predict step", 500, plan.step_seconds)
            m2 = server.metrics()
            batch_phase = run.add(measure(server, lambda: lg.closed_loop(
                HOST, server.port, batch, plan.batch_seconds, name=f"predict_batch x{args.batch_size} (closed)",
                # Two per worker: the kernel hands each connection to whichever worker accepts it
                # first, so with one per worker both can land on the same one.
                connections=4)))
            m3 = server.metrics()
            saturation = run.add(measure(server, lambda: lg.closed_loop(
                HOST, server.port, single, plan.saturation_seconds, name="predict saturation (closed)",
                connections=16), counted=True))
            run.add(measure(server, lambda: lg.open_loop(HOST, server.port, single, args.sustain_rate,
                                                         plan.sustain_warmup_seconds, name="sustain warm-up",
                                                         connections=64, max_backlog_seconds=5.0, drop_late=True),
                            note="(not measured)", counted=False))
            gc.collect()
            rss_start = server.rss()
            rss_samples: list[tuple[float, dict]] = []

            async def sustained() -> lg.Result:
                async def sample() -> None:
                    t0 = time.monotonic()
                    while True:
                        await asyncio.sleep(min(30.0, max(1.0, sustain_seconds / 10)))
                        rss_samples.append((time.monotonic() - t0, server.rss()))
                sampler = asyncio.ensure_future(sample())
                try:
                    return await lg.open_loop(HOST, server.port, single, args.sustain_rate, sustain_seconds,
                                              name=f"sustained {args.sustain_rate:g}/s {sustain_seconds:g} s",
                                              connections=64, max_backlog_seconds=5.0, drop_late=True)
                finally:
                    sampler.cancel()

            m4 = server.metrics()
            sustain = run.add(measure(server, sustained))
            m5 = server.metrics()
            rss_end = server.rss()
            stages["predict_300rps"] = print_stage_table("predict at 300/s, server side", m0, m1)
            stages["sustained"] = print_stage_table(f"sustained {args.sustain_rate:g}/s, server side", m4, m5)
            stage = "flight_delay_stage_latency_seconds"
            b = histogram_delta(m2, m3, stage, stage="feature_lookup", endpoint="predict_batch")
            bi = histogram_delta(m2, m3, stage, stage="inference", endpoint="predict_batch")
            br = histogram_delta(m2, m3, "flight_delay_request_latency_seconds", endpoint="predict_batch")
            if b and bi and br:
                print(f"\npredict_batch x{args.batch_size}, server side: in method {br['mean_ms']:.1f} ms "
                      f"(feature_lookup {b['mean_ms']:.1f} ms, inference {bi['mean_ms']:.1f} ms, "
                      f"the rest {br['mean_ms'] - b['mean_ms'] - bi['mean_ms']:.1f} ms: per-row responses, "
                      f"metrics, log) per call; client-side p50 {fmt_ms(batch_phase.result.percentile(50))} ms")
                stages["predict_batch"] = {"in_method_ms": br["mean_ms"], "feature_lookup_ms": b["mean_ms"],
                                           "inference_ms": bi["mean_ms"]}
            print("\nworker RSS (MB): " + "; ".join(
                f"pid {p}: after warm-up {rss_after_warmup.get(p, math.nan):.0f}, sustain start "
                f"{rss_start.get(p, math.nan):.0f}, end {rss_end.get(p, math.nan):.0f}"
                for p in server.worker_pids))
            if rss_samples:
                print("  during sustained phase: " + ", ".join(
                    f"{t:.0f}s {max(v.values()):.0f}" for t, v in rss_samples))
        del single, batch

        naive_best = naive_saturation = None
        if not args.skip_naive:
            print(f"\nstarting {NAIVE_SERVICE} (Keras model.predict per request) ...", flush=True)
            with Server(NAIVE_SERVICE, scratch, scratch / "naive.log") as naive:
                nsingle = predict_requests(naive.port, flights)
                print(f"ready on {HOST}:{naive.port}; worker pids {naive.worker_pids}\n", flush=True)
                print(HEADER, flush=True)

                async def naive_warm() -> None:
                    for data in nsingle[:20]:
                        status, body = await lg.fetch(HOST, naive.port, data, timeout=60)
                        if status != 200:
                            raise RuntimeError(f"naive warm-up answered {status}: {body[:500]!r}")
                asyncio.run(naive_warm())
                probe = run.add(measure(naive, lambda: lg.closed_loop(
                    HOST, naive.port, nsingle, plan.naive_step_seconds, name="naive sequential (closed)",
                    connections=1)))
                if probe.result.percentile(99) > SLO_P99_MS:
                    print(f"naive: p99 of single requests one at a time is {fmt_ms(probe.result.percentile(99))} ms "
                          f"> {SLO_P99_MS:g} ms: no rate meets the latency bound; naive_max_rps = 0", flush=True)
                else:
                    naive_best = find_max_rate(naive, nsingle, run, "naive step",
                                               max(0.5, 0.5 * probe.result.throughput),
                                               plan.naive_step_seconds, factor=1.5)
                naive_saturation = run.add(measure(naive, lambda: lg.closed_loop(
                    HOST, naive.port, nsingle, plan.saturation_seconds * 2, name="naive saturation (closed)",
                    connections=16)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    # -- summary --------------------------------------------------------------------------------
    fr = fixed.result
    max_rps = best.result.rate if best else 0.0
    naive_max = naive_best.result.rate if naive_best else 0.0
    sat = saturation.result.throughput
    nsat = naive_saturation.result.throughput if naive_saturation else None
    if naive_max > 0:
        ratio, basis = max_rps / naive_max, "max_rps / naive_max_rps (both at p99 <= 50 ms)"
    elif nsat:
        ratio, basis = sat / nsat, ("saturation_rps / naive_saturation_rps (the naive service meets "
                                    "p99 <= 50 ms at no rate)")
    else:
        ratio, basis = None, "naive baseline not measured"
    growth = {p: rss_end.get(p, math.nan) - rss_start.get(p, math.nan) for p in rss_start}
    counted_errors = {
        p.result.name: {"non_2xx": {str(s): n for s, n in p.result.statuses.items() if not 200 <= s < 300},
                        "connection_errors": dict(p.result.errors)}
        for p in run.phases if p.result.failed > 0}
    unanswered = {p.result.name: p.result.unanswered for p in run.phases if p.counted and p.result.unanswered > 0}
    overload = sum(1 for p in run.phases if not p.counted and p.note == "FAIL")
    summary |= {
        "p50_ms_at_300rps": fr.percentile(50), "p99_ms_at_300rps": fr.percentile(99),
        "p999_ms_at_300rps": fr.percentile(99.9),
        "max_rps": max_rps, "p99_ms_at_max": best.result.percentile(99) if best else None,
        "p50_ms_at_max": best.result.percentile(50) if best else None,
        "saturation_rps": sat,
        "batch_size": args.batch_size,
        "batch_predictions_per_s": batch_phase.result.throughput * args.batch_size,
        "batch_p50_ms": batch_phase.result.percentile(50),
        "naive_max_rps": naive_max if not args.skip_naive else None,
        "naive_saturation_rps": nsat,
        "naive_p50_ms_sequential": probe.result.percentile(50) if not args.skip_naive else None,
        "ratio_vs_naive": ratio, "ratio_basis": basis,
        "sustain_rate": args.sustain_rate, "sustain_seconds": sustain_seconds,
        "p50_ms_sustained": sustain.result.percentile(50), "p99_ms_sustained": sustain.result.percentile(99),
        "p999_ms_sustained": sustain.result.percentile(99.9),
        "rss_growth_mb": max(growth.values()) if growth else None,
        "feature_cache_hit_rate": cache_hit_rate(m0, m5),
        "rss_mb_start": rss_start, "rss_mb_end": rss_end,
        "generator_lag_p99_ms": max(p.result.lag_ms(99) for p in run.phases if p.result.rate is not None),
        "sustained_done_rps": sustain.result.throughput, "sustained_unanswered": sustain.result.unanswered,
        "errors": counted_errors, "unanswered": unanswered, "failed_overload_steps": overload,
        "other_load_cores_before": idle_other,
        "other_load_cores_max_phase": max(p.other_cpu for p in run.phases),
        "generator_floor_p50_ms": floor.result.percentile(50), "generator_floor_p99_ms": floor.result.percentile(99),
        "elapsed_s": time.monotonic() - started,
    }
    met = {}
    for key, (op, bound) in TARGETS.items():
        value = summary.get(key)
        met[key] = None if value is None else (value <= bound if op == "<=" else value >= bound)
    summary["targets_met"] = met

    print("\ntargets:")
    for key, (op, bound) in TARGETS.items():
        value = summary.get(key)
        if value is None:
            print(f"  {key:<26} not measured")
            continue
        ok = met[key]
        gap = "" if ok else (f"  (missed by {value - bound:+.2f}, {value / bound:.2f}x the bound)" if op == "<="
                             else f"  (missed: {value / bound:.0%} of the bound)")
        print(f"  {key:<26} {value:>10.2f}  {op} {bound:g}  {'met' if ok else 'MISSED'}{gap}")
    if counted_errors:
        print(f"\nERRORS: requests answered with a non-2xx status or a broken connection: {counted_errors}")
    else:
        print("\nno request failed (every answer was 2xx, no connection error)")
    if unanswered:
        print(f"OVERLOAD: measured phases with requests left unanswered (dropped or not answered in time; "
              f"counted as infinitely slow): {unanswered}")
    busy = [p for p in run.phases if p.other_cpu > 0.2]
    if busy:
        worst = max(busy, key=lambda p: p.other_cpu)
        print(f"WARNING: other processes used CPU during {len(busy)} phases (up to {worst.other_cpu:.2f} cores, "
              f"in '{worst.result.name}'): those figures understate the service; rerun on a quiet machine")
    if overload:
        print(f"({overload} rate steps of the max-rate search failed, by design: they find the limit)")
    summary = {k: (finite(v) if isinstance(v, float) else v) for k, v in summary.items()}
    summary["rss_mb_start"] = {str(k): round(v, 1) for k, v in rss_start.items()}
    summary["rss_mb_end"] = {str(k): round(v, 1) for k, v in rss_end.items()}
    print(json.dumps(summary, sort_keys=False, default=str))
    return 1 if counted_errors else 0


if __name__ == "__main__":
    sys.exit(main())
