"""This checkout's service against another checkout's, interleaved: ``python -m bench.ab --baseline
DIR`` (``make bench-ab BASELINE=DIR``), where DIR is a checkout of the code to compare with (a
``git worktree`` of the commit before a change) with its environment set up and its own data
folder from ``make demo``.

Why not two ``make bench`` runs one after the other: on a shared machine the same code's figures
move by tens of percent within a minute or two (the machine's other tenants, its clock), and a
full run takes twelve. Two runs in a row compare the machine's moods as much as the code. Here
both services (and with ``--floor`` both floors) are started once, each over a scratch data
folder that links its data's model registry and Feast state (a throwaway prediction log), and
then measured in turns: in each round every server goes through the same short phases, the order
alternating from round to round (baseline first, then this checkout first, ...), so that a drift
of the machine weighs on both alike. A server waits idle while another is measured.

The phases, those of ``make bench`` that compare in a minute: ``/predict`` at 300 requests/s,
open loop (p50, p99, and the server's CPU per request); ``/predict_batch`` of 500 flights, closed
loop over four connections; closed-loop saturation of ``/predict`` over 16 connections
(requests/s).

A batch phase is counted until every prediction it answered is in the prediction log: a service
can answer faster than it logs for a while and write the rest after the phase (measured here: the
code before issue 8, whose queue had no bound, had 46 % of a 20-second phase's predictions still
to write when it ended, and took 3.5 s more). ``batch_predictions_per_s`` is the answers' rate
during the phase; ``batch_logged_per_s`` and ``batch_logged_per_core_s`` count the time and the
server CPU until the log holds them all.

The report gives, per figure, each round's ratio this/baseline (oriented so that above 1 is better
for this checkout), the median of each checkout's values and of the ratios; with ``--floor`` the
same for each service's figures against its own floor. The last line is one JSON object with
those medians.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import loadgen as lg
from bench.flights import batch_requests, predict_requests, sample_flights, store_instant
from bench.harness import HOST, ServerProcess, scratch_data_folder, service_env, unwind_on_sigterm
from bench.phases import Phase, Run, measure, warm_up
from bench.report import HEADER, print_row
from flight_delay.model import MODEL_NAME
from flight_delay.paths import PROJECT_ROOT, DataLayout

SERVICE = "serving.service:FlightDelayService"
FLOOR_SERVICE = "bench.floor:FloorService"
RATE = 300.0
BATCH_SIZE = 500
LOG_WAIT_SECONDS = 120.0  # the longest a phase's predictions may take to reach the log


@dataclass
class Measured:
    """One server's phases in one round."""

    fixed: Phase
    batch: Phase
    saturation: Phase
    log_seconds: float  # after the batch phase, until the log held its predictions (0 without a log)
    log_cpu: float  # server CPU seconds meanwhile


def _cpu_ms_per_request(m: Measured) -> float:
    p = m.fixed
    return p.server_cpu * p.result.elapsed / p.result.ok * 1e3 if p.result.ok else math.nan


def _batch_predictions(m: Measured) -> int:
    return m.batch.result.ok * BATCH_SIZE


def _batch_logged_per_s(m: Measured) -> float:
    return _batch_predictions(m) / (m.batch.result.elapsed + m.log_seconds)


def _batch_logged_per_core_s(m: Measured) -> float:
    cpu = m.batch.server_cpu * m.batch.result.elapsed + m.log_cpu
    return _batch_predictions(m) / cpu if cpu > 0 else math.nan


@dataclass(frozen=True)
class Figure:
    name: str
    higher_is_better: bool
    of: Callable[[Measured], float]


FIGURES = (
    Figure("p50_ms_at_300rps", False, lambda m: m.fixed.result.percentile(50)),
    Figure("p99_ms_at_300rps", False, lambda m: m.fixed.result.percentile(99)),
    Figure("server_cpu_ms_per_request", False, _cpu_ms_per_request),
    Figure("batch_predictions_per_s", True, lambda m: _batch_predictions(m) / m.batch.result.elapsed),
    Figure("batch_logged_per_s", True, _batch_logged_per_s),
    Figure("batch_logged_per_core_s", True, _batch_logged_per_core_s),
    Figure("saturation_rps", True, lambda m: m.saturation.result.throughput),
)

Rounds = list[dict[str, dict[str, float]]]  # round -> "service" | "floor" -> figure -> value


@dataclass
class Side:
    """One checkout: its code, its data, its servers and its figures round by round."""

    label: str
    root: Path
    layout: DataLayout
    scratch: Path = field(init=False)
    flights: list[dict] = field(init=False)
    servers: dict[str, ServerProcess] = field(default_factory=dict)  # "service" | "floor" -> server
    rounds: Rounds = field(default_factory=list)

    def __post_init__(self) -> None:
        champions = self.layout.bentoml_home / "champions" / f"{MODEL_NAME}.jsonl"
        if not champions.exists():
            raise SystemExit(f"{self.label}: {champions} does not exist: no champion; run `make demo` there first")
        self.flights = sample_flights(store_instant(self.layout))
        self.scratch = scratch_data_folder(self.layout, f"flight-delay-ab-{self.label}-")

    def start(self, name: str, target: str, args: argparse.Namespace) -> ServerProcess:
        env = service_env(self.scratch, self.scratch / f"bentoml-home-{name}", floor_answers=args.floor_answers)
        workers = int(os.environ.get("FLIGHT_DELAY_WORKERS", "1"))
        server = ServerProcess(
            target, env, self.scratch / f"{name}.log", name=f"{self.label} {name}", workers=workers, root=self.root
        )
        self.servers[name] = server
        return server

    def logged(self) -> int | None:
        """The prediction log's last row number (rows are only added here), None without a log."""
        path = DataLayout(self.scratch).prediction_log
        if not path.exists():
            return None
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute("SELECT COALESCE(MAX(rowid), 0) FROM predictions").fetchone()[0]

    def settled_log(self) -> int | None:
        """The log's last row once it stopped growing (the writer caught up with earlier phases)."""
        last, deadline = self.logged(), time.monotonic() + LOG_WAIT_SECONDS
        while last is not None and time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.logged()
            if now == last:
                break
            last = now
        return last


def measure_round(side: Side, name: str, run: Run, seconds: float) -> Measured:
    """One server of ``side`` through the phases once."""
    server = side.servers[name]
    single = predict_requests(server.port, side.flights)
    batch = batch_requests(server.port, side.flights, BATCH_SIZE)
    label = f"{side.label} {name}"
    fixed = run.add(
        measure(server, lambda: lg.open_loop(HOST, server.port, single, RATE, seconds, name=f"{label} 300/s"))
    )
    before = side.settled_log() if name == "service" else None
    if name == "service" and before is None:
        print(f"WARNING: {label}: no prediction log under {side.scratch}; its batches count as answered", flush=True)
    batch_phase = run.add(
        measure(
            server,
            lambda: lg.closed_loop(
                HOST, server.port, batch, seconds, name=f"{label} batch x{BATCH_SIZE}", connections=4
            ),
        )
    )
    log_seconds = log_cpu = 0.0
    if before is not None:
        cpu0, t0, expected = server.cpu(), time.monotonic(), before + batch_phase.result.ok * BATCH_SIZE
        while (side.logged() or 0) < expected:
            if time.monotonic() - t0 > LOG_WAIT_SECONDS:
                raise SystemExit(
                    f"{label}: the log holds {side.logged()} rows, {expected} expected, "
                    f"{LOG_WAIT_SECONDS:g} s after the batch phase"
                )
            time.sleep(0.02)
        log_seconds, log_cpu = time.monotonic() - t0, server.cpu() - cpu0
        print(f"{'':34}(its predictions all in the log {log_seconds:.2f} s after the phase)", flush=True)
    saturation = run.add(
        measure(
            server,
            lambda: lg.closed_loop(HOST, server.port, single, seconds, name=f"{label} saturation", connections=16),
        )
    )
    measured = Measured(fixed, batch_phase, saturation, log_seconds, log_cpu)
    failed = sum(p.result.failed + p.result.unanswered for p in (fixed, batch_phase, saturation))
    if failed:
        raise SystemExit(f"{label}: {failed} requests failed or went unanswered (see {server.log_path})")
    return measured


def _ratio(this: float, baseline: float, higher_is_better: bool) -> float:
    """This checkout's figure against the baseline's, above 1 when this one is better."""
    if not (this > 0 and baseline > 0):
        return float("nan")
    return this / baseline if higher_is_better else baseline / this


def _floor_ratio(figures: dict[str, dict[str, float]], f: Figure) -> float:
    """The service's figure against its own floor's, above 1 when the service is closer to it."""
    return _ratio(figures["service"][f.name], figures["floor"][f.name], f.higher_is_better)


def summarize(this: Rounds, baseline: Rounds, with_floor: bool) -> dict[str, dict[str, float]]:
    """Per figure: each checkout's median over the rounds, each round's ratio this/baseline and its
    median (printed; above 1 is better for this checkout)."""
    out: dict[str, dict[str, float]] = {}
    print(f"\n{'figure':<34}{'baseline':>10}{'this':>10}   ratio this/baseline per round (>1: this is better); median")
    # (row, whether higher is better, its value in a round's figures). A service/floor ratio is
    # oriented already (above 1 is better).
    rows: list[tuple[str, bool, Callable[[dict[str, dict[str, float]]], float]]] = [
        (f.name, f.higher_is_better, lambda figs, f=f: figs["service"][f.name]) for f in FIGURES
    ]
    if with_floor:
        rows += [(f"{f.name} service/floor", True, lambda figs, f=f: _floor_ratio(figs, f)) for f in FIGURES]
    for name, higher_is_better, value in rows:
        b = [value(r) for r in baseline]
        t = [value(r) for r in this]
        ratios = [_ratio(x, y, higher_is_better) for x, y in zip(t, b)]
        med = {"baseline": statistics.median(b), "this": statistics.median(t), "ratio": statistics.median(ratios)}
        out[name] = med
        per_round = " ".join(f"{r:.2f}" for r in ratios)
        print(f"{name:<34}{med['baseline']:>10.3g}{med['this']:>10.3g}   {per_round}; {med['ratio']:.3f}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the code to compare with")
    parser.add_argument("--baseline-data", type=Path, default=None, help="its data folder (default: BASELINE/data)")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="this checkout's data folder (default: $FLIGHT_DELAY_DATA_DIR or data/)",
    )
    parser.add_argument("--rounds", type=int, default=6, help="rounds (default 6; each measures every server once)")
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured phase (default 15)")
    parser.add_argument("--warmup-seconds", type=float, default=5.0)
    parser.add_argument("--floor", action="store_true", help="also measure each checkout's floor service")
    parser.add_argument("--floor-answers", choices=("orjson", "pydantic"), default="orjson")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    unwind_on_sigterm()
    root = args.baseline.resolve()
    baseline = Side("baseline", root, DataLayout.resolve(args.baseline_data or root / "data"))
    this = Side("this", PROJECT_ROOT, DataLayout.resolve(args.data_dir))
    targets = [("service", SERVICE), *([("floor", FLOOR_SERVICE)] if args.floor else [])]
    run = Run(print_row)
    try:
        with contextlib.ExitStack() as servers:
            for side in (baseline, this):
                for name, target in targets:
                    print(f"starting {side.label} {name} ({side.root}: {target}) ...", flush=True)
                    server = servers.enter_context(side.start(name, target, args))
                    warm_up(
                        server,
                        predict_requests(server.port, side.flights),
                        batch_requests(server.port, side.flights, BATCH_SIZE),
                        args.warmup_seconds,
                        Run(lambda _: None),
                    )
            print(HEADER, flush=True)
            for k in range(args.rounds):
                for side in (baseline, this) if k % 2 == 0 else (this, baseline):
                    figures = {}
                    for name, _ in targets:
                        measured = measure_round(side, name, run, args.seconds)
                        figures[name] = {f.name: f.of(measured) for f in FIGURES}
                    side.rounds.append(figures)
        summary = summarize(this.rounds, baseline.rounds, args.floor)
    finally:
        for side in (baseline, this):
            shutil.rmtree(side.scratch, ignore_errors=True)
    print(json.dumps({"baseline": str(root), "rounds": args.rounds, "seconds": args.seconds, "figures": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
