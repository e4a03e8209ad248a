"""Does the drift alert fire when the world moves, and stay quiet when it does not?
``python -m bench.drift_scenario`` (``make drift-scenario``).

One model (the champion of ``--data-dir``, trained on January 1 – March 10 by
``pipeline/run_config/demo.yaml``) served twice, side by side, each service with its own Redis
online store and its own Prometheus running the project's rules (``deploy/prometheus/rules``):

- **training months**: flights of January 1 – March 10 (the model's training window);
- **summer**: flights of July.

Each phase walks its period in data time: a random sample of the period's flights, in the order
of their prediction times (60 minutes before departure, as in training); before each prediction
an :class:`features.feeder.OnlineFeeder` brings the online store to that instant (what the
streaming pushes and the materializations would have written by then), and the flight is
predicted over HTTP. A walk takes ``--walk-minutes``; the phase walks its period again (a new
sample, from an emptied store) until ``--minutes`` are up, at about ``--rate`` predictions a
second. After the first walk, the alert's one-hour window holds whole walks of the period (for
the training months, a mix like the training window's), and the alert needs its ``for:`` time of
ten minutes beyond that. Every ``--poll`` seconds the scenario reads the ``FeatureDrift`` alert's
state and the recorded PSI from each Prometheus. At the end it compares the recording rules' PSI
with the Python functions' on the same increases, writes a Markdown report beside the data and
prints, as its last line, one JSON object.

Build the data once (about 5 minutes):
``FLIGHT_DELAY_DATA_DIR=data/drift-scenario make materialize RANGE=2013-01-01...2013-07-31
CONFIG=pipeline/run_config/demo.yaml``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import redis

from bench.flights import request_body
from bench.harness import HOST, ServerProcess, service_env, start_redis, unwind_on_sigterm
from bench.prometheus import RULES_DIR, Prometheus
from features.feeder import OnlineFeeder
from features.store import build_store
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure
from flight_delay.forward import read_reference
from flight_delay.model import MODEL_NAME
from flight_delay.monitoring import drift_rows
from flight_delay.paths import PROJECT_ROOT, DataLayout
from flight_delay.registry import ModelRegistry

SERVICE = "serving.service:FlightDelayService"
ALERT = "FeatureDrift"
PERIODS = {"training_months": ("2013-01-01", "2013-03-10"), "summer": ("2013-07-01", "2013-07-31")}
HORIZON = pd.Timedelta(minutes=60)  # each flight predicted this long before its scheduled departure


@dataclass
class Phase:
    name: str
    first_day: str
    last_day: str
    scratch: Path
    redis_db: int
    requests: int = 0
    walks: int = 0
    failed: int = 0
    started: float = 0.0
    finished: float = 0.0
    pending: dict[str, float] = field(default_factory=dict)  # feature -> seconds to pending
    firing: dict[str, float] = field(default_factory=dict)  # feature -> seconds to firing
    max_psi: dict[str, float] = field(default_factory=dict)
    final: list[dict[str, Any]] = field(default_factory=list)
    prometheus: Prometheus | None = None


def period_flights(flights: pd.DataFrame, sched: pd.Series, first_day: str, last_day: str) -> pd.DataFrame:
    """The period's departures with a tail number, each with its request body and prediction time
    (the horizon before its scheduled departure), in the order of their prediction times."""
    day = sched.dt.strftime("%Y-%m-%d")
    chosen = flights[(day >= first_day) & (day <= last_day)]
    at = sched[chosen.index] - HORIZON
    bodies = [request_body(r, s, t) for r, s, t in zip(chosen.itertuples(index=False), sched[chosen.index], at)]
    return pd.DataFrame({"at": at.dt.tz_convert("UTC").to_numpy(), "body": bodies}).sort_values("at", kind="stable")


def drive(phase: Phase, port: int, feeder: OnlineFeeder, reset: Any, period: pd.DataFrame, args) -> None:
    """Walk the period again and again, ``--walk-minutes`` a walk, until ``--minutes`` are up. Each
    walk starts from an empty online store (``reset``), draws a fresh sample of the period's
    flights (``--rate`` a second of the walk) and predicts each at its prediction time, with the
    store brought exactly to that instant first."""
    walk_seconds = args.walk_minutes * 60
    per_walk = min(len(period), max(1, round(args.rate * walk_seconds)))
    rng = np.random.default_rng(2013)
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    phase.started = time.monotonic()
    while time.monotonic() - phase.started < args.minutes * 60:
        sample = period.iloc[np.sort(rng.choice(len(period), size=per_walk, replace=False))]
        reset()
        feeder.instant = None
        walk_started = time.monotonic()
        for k, (at, body) in enumerate(zip(sample["at"], sample["body"])):
            feeder.advance(pd.Timestamp(at))
            try:
                conn.request("POST", "/predict", json.dumps({"flight": body}), {"Content-Type": "application/json"})
                response = conn.getresponse()
                response.read()
                phase.failed += response.status != 200
            except (OSError, http.client.HTTPException):
                phase.failed += 1
                conn.close()
                conn = http.client.HTTPConnection(HOST, port, timeout=30)
            phase.requests += 1
            wait = walk_started + (k + 1) * walk_seconds / per_walk - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        phase.walks += 1
    conn.close()


def watch(phase: Phase, prometheus: Prometheus) -> None:
    elapsed = time.monotonic() - phase.started
    for s in prometheus.query(f'ALERTS{{alertname="{ALERT}"}}'):
        feature, state = s["metric"].get("feature", "?"), s["metric"].get("alertstate")
        target = phase.firing if state == "firing" else phase.pending
        target.setdefault(feature, round(elapsed, 1))
    for s in prometheus.query("flight_delay:feature_psi:1h"):
        feature = s["metric"]["feature"]
        phase.max_psi[feature] = max(phase.max_psi.get(feature, 0.0), s["value"])


def final_figures(phase: Phase, prometheus: Prometheus, registry: ModelRegistry) -> None:
    """The rules' PSI, JS distance and count at the end beside the Python functions' figures on the
    increases Prometheus reports over the same hour."""
    from pipeline.resources.metrics import PrometheusMetrics

    window = PrometheusMetrics(url=prometheus.url, range="1h").window()
    models = {m for m, _, _ in window.feature_bins}
    python = {
        (r.model_version, r.feature): r
        for r in drift_rows(window, {m: read_reference(registry.model_dir(m)) for m in models})
    }
    rules = {
        name: {(s["metric"]["model_version"], s["metric"]["feature"]): s["value"] for s in prometheus.query(expr)}
        for name, expr in (
            ("psi", "flight_delay:feature_psi:1h"),
            ("js", "flight_delay:feature_js:1h"),
            ("n", "flight_delay:feature_count:increase1h"),
        )
    }
    for key, row in sorted(python.items(), key=lambda kv: -kv[1].psi):
        phase.final.append(
            {
                "model_version": key[0],
                "feature": key[1],
                "n": row.n,
                "psi_python": row.psi,
                "psi_rules": rules["psi"].get(key),
                "js_python": row.js,
                "js_rules": rules["js"].get(key),
                "n_rules": rules["n"].get(key),
                "max_psi": phase.max_psi.get(key[1]),
                "pending_after_s": phase.pending.get(key[1]),
                "firing_after_s": phase.firing.get(key[1]),
            }
        )


def report(phases: list[Phase], layout: DataLayout, champion: str, args) -> dict[str, Any]:
    lines = [
        "# Drift scenario",
        "",
        f"Model {champion}; each period walked in {args.minutes} min at ~{args.rate} predictions/s; "
        f"alert `{ALERT}`: 1 h PSI above its threshold with enough values behind it, for its `for:` time "
        f"(deploy/prometheus/rules). Scrape and rule evaluation every {args.interval}.",
        "",
    ]
    summary: dict[str, Any] = {"model": champion, "minutes": args.minutes}
    for p in phases:
        fired = {f: p.firing[f] for f in sorted(p.firing, key=p.firing.get)}
        lines += [
            f"## {p.name}: {p.first_day} to {p.last_day}",
            "",
            f"{p.requests} predictions in {p.walks} walks, {p.failed} failed; alert firing for: "
            + (", ".join(f"{f} after {s:.0f} s" for f, s in fired.items()) or "no feature"),
            "",
            "| feature | values (1 h) | PSI rules | PSI Python | JS rules | max PSI seen | pending after s "
            "| firing after s |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in p.final:
            lines.append(
                f"| {r['feature']} | {r['n']} | {_fmt(r['psi_rules'])} | {_fmt(r['psi_python'])} | "
                f"{_fmt(r['js_rules'])} | {_fmt(r['max_psi'])} | {_fmt(r['pending_after_s'], 0)} | "
                f"{_fmt(r['firing_after_s'], 0)} |"
            )
        lines.append("")
        agreement = [abs(r["psi_rules"] - r["psi_python"]) for r in p.final if r["psi_rules"] is not None]
        summary[p.name] = {
            "requests": p.requests,
            "failed": p.failed,
            "walks": p.walks,
            "firing": fired,
            "top_psi": {r["feature"]: round(r["psi_python"], 4) for r in p.final[:6]},
            "max_rule_python_psi_difference": max(agreement) if agreement else None,
        }
    path = layout.root / "drift_scenario.md"
    path.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"report: {path}")
    return summary


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/drift-scenario")
    parser.add_argument("--minutes", type=float, default=14.0, help="Wall time per phase.")
    parser.add_argument(
        "--walk-minutes", type=float, default=2.0, help="Wall time of one walk through the period (repeated)."
    )
    parser.add_argument("--rate", type=float, default=10.0, help="Predictions a second per period.")
    parser.add_argument("--interval", default="5s", help="Prometheus scrape and rule evaluation interval.")
    parser.add_argument("--poll", type=float, default=5.0)
    parser.add_argument("--rules", default=str(RULES_DIR), help="Folder of the Prometheus rule files.")
    args = parser.parse_args(argv)
    unwind_on_sigterm()

    layout = DataLayout.resolve(args.data_dir)
    registry = ModelRegistry(layout.bentoml_home)
    champion = registry.champion(MODEL_NAME)
    if champion is None:
        raise SystemExit(f"no champion in {layout.root}: build the data first (see python -m bench.drift_scenario -h)")
    flights = data.read_table("flights")
    flights = flights[flights["tailnum"].notna()].reset_index(drop=True)
    sched = scheduled_departure(flights["time_hour"], flights["minute"]).dt.tz_convert(LOCAL_TZ)

    scratch_root = layout.root / "drift-scenario-run"
    shutil.rmtree(scratch_root, ignore_errors=True)
    redis_server, redis_port = start_redis(scratch_root.parent / "drift-scenario-redis.log")
    phases = [
        Phase(name, first, last, scratch_root / name, db)
        for db, (name, (first, last)) in enumerate(PERIODS.items(), start=1)
    ]
    servers: list[ServerProcess] = []
    try:
        feeders, resets = [], []
        for p in phases:
            p.scratch.mkdir(parents=True)
            url = f"redis://127.0.0.1:{redis_port}/{p.redis_db}"
            resets.append(redis.Redis(port=redis_port, db=p.redis_db).flushdb)
            store = build_store(PROJECT_ROOT, layout.feast_state, url)
            first = (pd.Timestamp(p.first_day) - pd.Timedelta(days=30)).strftime("%Y-%m-%d")
            feeders.append(OnlineFeeder.from_offline(store, layout.offline, max(first, "2013-01-01"), p.last_day))
            env = service_env(
                layout.root, p.scratch / "bentoml-home", online_store=url, workers=1, feature_cache_seconds=0
            )
            server = ServerProcess(SERVICE, env, p.scratch / "service.log", workers=1).start()
            servers.append(server)
        for p, server in zip(phases, servers):
            server.wait_ready()
            rules = sorted(Path(args.rules).glob("*.yml"))
            p.prometheus = Prometheus(p.scratch, [f"{HOST}:{server.port}"], rules, interval=args.interval).start()
        threads = [
            threading.Thread(
                target=drive,
                args=(p, s.port, f, r, period_flights(flights, sched, p.first_day, p.last_day), args),
                daemon=True,
            )
            for p, s, f, r in zip(phases, servers, feeders, resets)
        ]
        started = time.monotonic()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            time.sleep(args.poll)
            for p in phases:
                if p.started and p.prometheus:
                    watch(p, p.prometheus)
            done = sum(p.requests for p in phases)
            print(
                f"  {time.monotonic() - started:5.0f} s  {done} predictions  firing: "
                + "; ".join(f"{p.name}: {sorted(p.firing) or '-'}" for p in phases),
                flush=True,
            )
        for p in phases:
            watch(p, p.prometheus)
            final_figures(p, p.prometheus, registry)
        summary = report(phases, layout, champion, args)
        summary["seconds"] = round(time.monotonic() - started)
        print(json.dumps(summary))
    finally:
        for p in phases:
            if p.prometheus:
                p.prometheus.stop()
        for server in servers:
            server.stop()
        redis_server.stop()


if __name__ == "__main__":
    main()
