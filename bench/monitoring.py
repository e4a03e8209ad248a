"""A few minutes of monitored traffic, drawn as the README's picture (after ``make demo``).

    uv run --frozen python -m bench.monitoring --minutes 4 --out docs/monitoring.png

Starts the service over a scratch copy of the demo's data folder (its registry and Feast state, a
fresh prediction log) and a Prometheus scraping it every 2 s with the recording rules, sends
predictions (single and batched, among them unknown tail numbers) with the real outcome of each
flight as feedback, then draws the dashboards' main panels with :mod:`deploy.grafana.render`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx

from bench.flights import sample_flights, store_instant
from bench.harness import HOST, ServerProcess, service_env
from bench.prometheus import Prometheus, project_rules
from deploy.grafana import render
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure
from flight_delay.paths import PROJECT_ROOT, DataLayout, data_dir

SERVICE = "serving.service:FlightDelayService"
LATE_MINUTES = 15


def outcomes() -> dict[tuple[str, int, str], float]:
    """Each real flight's departure delay, by (carrier, flight, scheduled departure)."""
    flights = data.read_table("flights")
    sched = scheduled_departure(flights["time_hour"], flights["minute"]).dt.tz_convert(LOCAL_TZ)
    known = flights["dep_delay"].notna()
    return {
        (c, int(f), s.isoformat()): float(d)
        for c, f, s, d in zip(
            flights["carrier"][known], flights["flight"][known], sched[known], flights["dep_delay"][known]
        )
    }


def drive(url: str, flights: list[dict], delays: dict, seconds: float, batch: int = 10) -> int:
    """Batches and single predictions at about 40 flights a second, each followed by the flight's
    real outcome; returns how many predictions were made."""
    made, i, end = 0, 0, time.monotonic() + seconds
    with httpx.Client(base_url=url, timeout=30) as client:
        while time.monotonic() < end:
            tick = time.monotonic()
            chunk = [flights[(i + k) % len(flights)] for k in range(batch)]
            i += batch
            answers = client.post("/predict_batch", json={"flights": chunk}).json()["predictions"]
            answers.append(client.post("/predict", json={"flight": chunk[0]}).json())
            for flight, answer in zip([*chunk, chunk[0]], answers):
                key = (flight["carrier"], flight["flight"], flight["scheduled_departure"])
                if key in delays and flight["tailnum"] and not flight["tailnum"].startswith("ZZ"):
                    body = {"feedback": {"request_id": answer["request_id"], "departure_delay_minutes": delays[key]}}
                    client.post("/feedback", json=body)
            made += len(answers)
            time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
    return made


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="how long the traffic runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=None, help="written by `make demo` (default: data/)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "docs" / "monitoring.png")
    args = parser.parse_args(argv)
    layout = DataLayout(data_dir(args.data_dir))
    flights = sample_flights(store_instant(layout))
    delays = outcomes()
    scratch = Path(tempfile.mkdtemp(prefix="flight-delay-monitoring-"))
    for name in ("bentoml", "feast"):
        (scratch / name).symlink_to(layout.root / name, target_is_directory=True)
    env = service_env(scratch, scratch / "bentoml-home", workers=args.workers)
    server = ServerProcess(SERVICE, env, scratch / "service.log", name="service", workers=args.workers)
    server.start().wait_ready()
    prometheus = Prometheus(scratch, [f"{HOST}:{server.port}"], project_rules(), interval="2s").start()
    try:
        started = time.time()
        made = drive(server.url, flights, delays, args.minutes * 60)
        time.sleep(6)  # the last counts reach /metrics, a scrape, a rule evaluation
        path = render.draw(prometheus.url, args.out, (time.time() - started) / 60 + 0.5, step=5.0, rate_window="1m")
        print(json.dumps({"predictions": made, "picture": str(path), "kilobytes": path.stat().st_size // 1024}))
    finally:
        prometheus.stop()
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
