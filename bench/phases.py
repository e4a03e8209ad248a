"""Load phases against a running server: one measured phase (its latencies and the CPU each side
used), the search for the highest rate that meets the latency bound, warm-up and the generator's
own floor."""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench import loadgen as lg
from bench.harness import HOST, ProcessGroup, cpu_seconds, free_port, http_get, machine_busy_seconds
from flight_delay.paths import PROJECT_ROOT

SLO_P99_MS = 50.0


class Target(Protocol):
    """What a phase measures: a server on a port whose CPU use can be read."""

    port: int

    def cpu(self) -> float: ...


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
    """Every phase of a benchmark run, printed as it is added."""

    on_add: Callable[[Phase], None]
    phases: list[Phase] = field(default_factory=list)

    def add(self, phase: Phase) -> Phase:
        self.phases.append(phase)
        self.on_add(phase)
        return phase


def measure(
    target: Target, coro_factory: Callable[[], Awaitable[lg.Result]], note: str = "", counted: bool = True
) -> Phase:
    """Run one load phase on a fresh event loop, with this process's garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        c0, b0, w0 = target.cpu(), machine_busy_seconds(), time.monotonic()
        loop = lg.new_event_loop()
        try:
            result = loop.run_until_complete(coro_factory())
        finally:
            loop.close()
        c1, b1, w1 = target.cpu(), machine_busy_seconds(), time.monotonic()
    finally:
        gc.enable()
    wall = max(w1 - w0, 1e-9)
    srv, gen = (c1 - c0) / wall, result.gen_cpu_seconds / wall
    return Phase(result, srv, gen, max(0.0, (b1 - b0) / wall - srv - gen), note, counted)


def passes(r: lg.Result) -> bool:
    return r.failed == 0 and r.unanswered == 0 and r.aborted is None and r.percentile(99) <= SLO_P99_MS


@dataclass
class _Search:
    target: Target
    requests: list[bytes]
    run: Run
    label: str
    step_seconds: float

    def step(self, rate: float) -> Phase:
        rate = round(rate) if rate >= 20 else round(rate, 2)
        conns = int(min(256, max(16, rate * 0.1)))
        phase = measure(
            self.target,
            lambda: lg.open_loop(
                HOST,
                self.target.port,
                self.requests,
                rate,
                self.step_seconds,
                name=f"{self.label} {rate:g}/s",
                connections=conns,
                drain_timeout=20.0,
            ),
            counted=False,
        )
        phase.note = "pass" if passes(phase.result) else "FAIL"
        self.run.add(phase)
        time.sleep(1.0 if phase.note == "pass" else 3.0)  # let a failed step's backlog clear
        return phase


def find_max_rate(
    target: Target,
    requests: list[bytes],
    run: Run,
    label: str,
    start: float,
    step_seconds: float,
    factor: float = 1.25,
    ceiling: float = 20_000,
    floor: float = 0.25,
    refine: int = 2,
) -> Phase | None:
    """Highest open-loop rate that ``passes``: up by ``factor`` until a step fails (down if the
    first one does), then ``refine`` bisection steps between the last pass and the first fail."""
    search = _Search(target, requests, run, label, step_seconds)
    best = fail = None
    rate = start
    first = search.step(rate)
    if passes(first.result):
        best = first
        while rate * factor <= ceiling:
            rate *= factor
            p = search.step(rate)
            if not passes(p.result):
                fail = p
                break
            best = p
    else:
        fail = first
        while rate / factor >= floor:
            rate /= factor
            p = search.step(rate)
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
        p = search.step(mid)
        if passes(p.result):
            best = p
        else:
            fail = p
    return best


def warm_up(target: Target, single: list[bytes], batch: list[bytes], seconds: float, run: Run) -> None:
    """Sequential single and batch calls (each must answer 200), then a few seconds of load."""

    async def sequential() -> None:
        for data, timeout in [*((d, 30) for d in single[:200]), *((d, 60) for d in batch[:4])]:
            status, body = await lg.fetch(HOST, target.port, data, timeout=timeout)
            if status != 200:
                raise RuntimeError(f"warm-up answered {status}: {body[:500]!r}")

    asyncio.run(sequential())
    run.add(
        measure(
            target,
            lambda: lg.open_loop(HOST, target.port, single, 200, seconds, name="warm-up"),
            note="(not measured)",
            counted=False,
        )
    )


class FixedResponseServer:
    """The trivial server of :func:`bench.loadgen.serve_fixed`, in its own process group."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.group: ProcessGroup | None = None

    def cpu(self) -> float:
        return cpu_seconds(self.group.proc.pid) if self.group else 0.0

    def __enter__(self) -> FixedResponseServer:
        command = [sys.executable, "-m", "bench.loadgen", HOST, str(self.port)]
        self.group = ProcessGroup.start(command, self.log_path, cwd=PROJECT_ROOT)
        deadline = time.monotonic() + 30
        while True:
            try:
                http_get(self.port, "/", timeout=1)
                return self
            except OSError:
                pass
            if self.group.proc.poll() is not None or time.monotonic() > deadline:
                self.group.stop()
                raise RuntimeError(f"the fixed-response server did not start:\n{self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.group is not None:
            self.group.stop(timeout=10)


def generator_floor(
    run: Run, requests: Callable[[int], list[bytes]], log_path: Path, rate: float, seconds: float
) -> Phase:
    """The generator against a server that answers instantly: the latency it adds by itself."""
    with FixedResponseServer(log_path) as fixed:
        return run.add(
            measure(
                fixed,
                lambda: lg.open_loop(
                    HOST, fixed.port, requests(fixed.port), rate, seconds, name="generator floor (trivial server)"
                ),
                note="the generator's own latency floor",
                counted=False,
            )
        )
