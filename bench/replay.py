"""A replay of 2013 through the running system: ``python -m bench.replay`` (``make replay``).

A simulated clock walks data time from ``--start`` to ``--end`` in steps of ``--step-minutes``
and drives the real components, each as it runs in production:

- **the online store**: at each step an :class:`features.feeder.OnlineFeeder` writes what the
  streaming pushes and the batch materializations would have written by then (the offline tables
  were built through the asset graph by the data preparation, day partition by day partition);
- **the service** (``bentoml serve``, its own Redis online store, one prediction log): each flight
  is predicted over HTTP at its prediction time (``--horizon-minutes`` before its scheduled
  departure; ``predict_batch`` with each flight's own ``prediction_time``), after the store was
  brought to the step's start, so that no value stamped after a prediction time is there to serve;
  its outcome is sent as feedback over HTTP once the flight has left (label delay: the actual
  departure, the scheduled one plus the delay);
- **the Dagster daemon** (``dagster-daemon run``) evaluates the loop's three sensors with the
  replay's loop configuration (``FLIGHT_DELAY_LOOP_CONFIG``): the drift sensor reads the
  service's ``/metrics`` and requests ``retrain_job`` on a window that ends at the log's data time,
  the offline gate makes a better model the shadow challenger, the challenger sensor's sequential
  test promotes or retires it, the rollback sensor guards a promotion.

A retraining takes the machine for a minute or two, which in real time passes in the blink of an
eye between two departures: while a pipeline run is queued or running, the clock waits for it.
Between runs the clock goes no faster than ``--day-seconds`` of wall time per data day, so that the
daemon's sensors tick several times a data day.

The comparison policies are scored afterwards on the feature rows the service logged
(``bench.replay_report``): ``static``, the replay's first champion (trained on January –
February by the data preparation); ``monthly``, a model trained by the same pipeline assets on the
first day of each month with the loop's training window; ``loop``, what the service answered. The
monthly models need nothing but the prepared data: they are trained before the replay starts (or
reused from an earlier replay of the same data and window), and the report gives that time apart
from the replay's.

Prepare the data once (the whole year through the asset graph, and the static model; about
6 minutes): ``make replay`` does it when ``data/replay`` has no model yet.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.flights import request_body
from bench.harness import HOST, ProcessGroup, ServerProcess, service_env, start_redis, unwind_on_sigterm
from bench.replay_report import Timeline, write_report
from features.feeder import OnlineFeeder
from features.store import build_store
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure
from flight_delay.model import MODEL_NAME
from flight_delay.monitoring import metric_total, parse_metrics
from flight_delay.paths import PROJECT_ROOT, DataLayout
from flight_delay.registry import ModelRegistry

SERVICE = "serving.service:FlightDelayService"
MAX_BATCH = 200  # flights per predict_batch call
FEEDBACK_CONNECTIONS = 4
IDLE_SECONDS = 2.0  # a connection idle longer is reopened before it is used
# The replay's loop: calendar features move with the date by construction and are not judged for
# drift; a retraining at most every three weeks of data time (a retraining costs minutes of this
# two-core machine); sensors ticking every few seconds of wall time, several times a data day.
LOOP_CONFIG = {
    "drift": {
        "statistic": "psi",
        "threshold": 0.2,
        # About two weeks of New York departures, the latest ones (the window slides by day): a day
        # or two of weather is narrower than any training window (measured: PSI 3-8 on pressure,
        # dewpoint and temperature after two days of March), so a window this short would call
        # every start of a month drift.
        "min_count": 12_000,
        "min_features": 1,
        # Offline (the loop's schedule simulated on the prepared year, promotions 5 days after each
        # retraining): a mean April-December AUC of 0.7590 with retrainings 35 days apart (what the
        # window that started over gave with 28), 0.7596 every 28 days, 0.7607 every 21, 0.7610
        # every 14 at 17 retrainings.
        "cooldown_days": 21,
        "exclude": ["month", "days_to_holiday", "weekday"],
    },
    # The gate's evaluation: the last week before the data time (about 6,000 flights); the model
    # learns from everything before it, a week fresher than with the default fortnight.
    "window": {"train_days": 365, "evaluation_days": 7},
    # About the flights labelled in a cooldown: a challenger not yet decided either way is tested
    # until the next retraining replaces it, not retired a few days before.
    "challenger": {"max_samples": 30_000},
    "intervals": {"drift_retraining_sensor": 15, "challenger_sensor": 5, "rollback_sensor": 5},
}


@dataclass
class Traffic:
    """What the replay sent and how it went."""

    predictions: int = 0
    feedback: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)  # the first few, for the report
    paused_seconds: float = 0.0

    def fail(self, what: str) -> None:
        self.failed += 1
        if len(self.failures) < 10:
            self.failures.append(what)


def replay_flights(start: str, end: str, horizon: pd.Timedelta) -> pd.DataFrame:
    """Every departure scheduled from ``start`` to ``end`` (local days, inclusive) with its request
    body, prediction time (``horizon`` before departure, UTC), outcome and the instant the outcome
    is known (its actual departure; cancelled flights have none), in prediction-time order."""
    flights = data.read_table("flights")
    sched = scheduled_departure(flights["time_hour"], flights["minute"]).dt.tz_convert(LOCAL_TZ)
    day = sched.dt.strftime("%Y-%m-%d")
    chosen = flights[(day >= start) & (day <= end)]
    sched = sched[chosen.index]
    at = sched - horizon
    delay = chosen["dep_delay"].astype("float64")
    known = sched + pd.to_timedelta(delay.clip(lower=0).fillna(0), unit="m")
    bodies = [request_body(r, s, t) for r, s, t in zip(chosen.itertuples(index=False), sched, at)]
    for body in bodies:  # a flight without a tail number is asked without one (JSON has no NaN)
        if not isinstance(body["tailnum"], str):
            body["tailnum"] = None
    frame = pd.DataFrame(
        {
            "at": at.dt.tz_convert("UTC"),
            "body": bodies,
            "delay": delay,
            "known": known.dt.tz_convert("UTC").where(delay.notna()),
        }
    )
    return frame.sort_values("at", kind="stable").reset_index(drop=True)


class Driver:
    """The clock and the traffic: one HTTP connection for predictions, a few for feedback."""

    def __init__(self, port: int, traffic: Traffic) -> None:
        self.port, self.traffic = port, traffic
        self._conn = http.client.HTTPConnection(HOST, port, timeout=60)
        self._local = threading.local()
        self._feedback = ThreadPoolExecutor(FEEDBACK_CONNECTIONS, thread_name_prefix="feedback")
        self._lock = threading.Lock()

    def _post(self, conn: http.client.HTTPConnection, path: str, body: dict) -> tuple[int, bytes]:
        # A connection left idle while the clock waited for a pipeline run has been closed by the
        # server (its keep-alive timeout is 5 s): start a new one rather than fail on it.
        if time.monotonic() - getattr(conn, "last_used", 0.0) > IDLE_SECONDS:
            conn.close()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        conn.last_used = time.monotonic()  # type: ignore[attr-defined]
        return response.status, response.read()

    def predict(self, bodies: list[dict]) -> list[str | None]:
        """Request ids of the predictions (None where the call failed)."""
        out: list[str | None] = []
        for i in range(0, len(bodies), MAX_BATCH):
            chunk = bodies[i : i + MAX_BATCH]
            try:
                status, payload = self._post(self._conn, "/predict_batch", {"flights": chunk})
            except (OSError, http.client.HTTPException) as exc:
                status, payload = 0, str(exc).encode()
                self._conn.close()
                self._conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
            self.traffic.predictions += len(chunk)
            if status != 200:
                self.traffic.fail(f"predict_batch: {status} {payload[:200]!r}")
                out += [None] * len(chunk)
                continue
            out += [p["request_id"] for p in json.loads(payload)["predictions"]]
        return out

    def _send_feedback(self, request_id: str, delay: float) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        body = {"feedback": {"request_id": request_id, "departure_delay_minutes": delay}}
        try:
            status, payload = self._post(conn, "/feedback", body)
        except (OSError, http.client.HTTPException) as exc:
            status, payload = 0, str(exc).encode()
            conn.close()
            self._local.conn = None
        with self._lock:
            self.traffic.feedback += 1
            if status != 200:
                self.traffic.fail(f"feedback: {status} {payload[:200]!r}")

    def feedback(self, outcomes: list[tuple[str, float]]) -> None:
        """Send the outcomes and wait until every one is answered."""
        list(self._feedback.map(lambda o: self._send_feedback(*o), outcomes))

    def close(self) -> None:
        self._feedback.shutdown()
        self._conn.close()


def active_runs(instance: Any) -> list[Any]:
    import dagster as dg

    statuses = [
        dg.DagsterRunStatus.QUEUED,
        dg.DagsterRunStatus.NOT_STARTED,
        dg.DagsterRunStatus.STARTING,
        dg.DagsterRunStatus.STARTED,
    ]
    return list(instance.get_runs(filters=dg.RunsFilter(statuses=statuses)))


def run(args: argparse.Namespace) -> dict[str, Any]:
    import dagster as dg

    layout = DataLayout.resolve(args.data_dir)
    registry = ModelRegistry.of(layout)
    initial = layout.root / "replay-initial-bentoml"
    if not initial.exists():  # the prepared state, restored at every replay
        if registry.champion(MODEL_NAME) is None:
            raise SystemExit(f"no champion in {layout.root}: prepare the data first (make replay)")
        shutil.copytree(layout.bentoml_home, initial)
    shutil.rmtree(layout.bentoml_home)
    shutil.copytree(initial, layout.bentoml_home)
    static = registry.champion(MODEL_NAME)
    assert static is not None
    monthly = MonthlyModels.prepare(args, layout, str(static))
    print(
        f"replay: the monthly policy's {len(monthly.models)} models ready in {monthly.seconds:.0f} s "
        f"({monthly.trained} trained, {monthly.reused} reused); the replay starts now",
        flush=True,
    )
    started = time.monotonic()
    scratch = layout.root / "replay-run"
    shutil.rmtree(scratch, ignore_errors=True)
    (scratch / "dagster_home").mkdir(parents=True)
    (scratch / "dagster_home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    for stale in (layout.prediction_log, layout.root / "monitoring"):
        if stale.is_dir():
            shutil.rmtree(stale)
        elif stale.exists():
            stale.unlink()
    for sidecar in layout.prediction_log.parent.glob(layout.prediction_log.name + "*"):
        sidecar.unlink()
    (scratch / "loop.yaml").write_text(json.dumps(LOOP_CONFIG, indent=1))

    horizon = pd.Timedelta(minutes=args.horizon_minutes)
    flights = replay_flights(args.start, args.end, horizon)
    print(f"replay: {len(flights)} departures from {args.start} to {args.end}; static model {static}", flush=True)

    redis_server, redis_port = start_redis(scratch / "redis.log")
    url = f"redis://{HOST}:{redis_port}/0"
    processes: list[Any] = [redis_server]
    traffic = Traffic()
    timeline = Timeline()
    try:
        store = build_store(PROJECT_ROOT, layout.feast_state, url)
        first_feature_day = (pd.Timestamp(args.start) - pd.Timedelta(days=30)).strftime("%Y-%m-%d")
        feeder = OnlineFeeder.from_offline(store, layout.offline, max(first_feature_day, "2013-01-01"), args.end)
        env = service_env(
            layout.root,
            scratch / "bentoml-home",
            inherit_settings=False,
            online_store=url,
            feature_cache_seconds=0,  # the clock moves faster than any staleness
            max_batch=MAX_BATCH,
            workers=args.workers,
        )
        server = ServerProcess(SERVICE, env, scratch / "service.log", workers=args.workers).start()
        processes.append(server)
        server.wait_ready()
        service_url = f"http://{HOST}:{server.port}"
        dagster_env = {
            **env,
            "DAGSTER_HOME": str(scratch / "dagster_home"),
            "FLIGHT_DELAY_LOOP_SENSORS": "on",
            "FLIGHT_DELAY_LOOP_CONFIG": str(scratch / "loop.yaml"),
            "FLIGHT_DELAY_SERVICE_URLS": service_url,
        }
        daemon = ProcessGroup.start(
            [str(Path(shutil.which("dagster-daemon") or "dagster-daemon")), "run", "-w", "workspace.yaml"],
            scratch / "dagster-daemon.log",
            env=dagster_env,
            cwd=str(PROJECT_ROOT),
        )
        processes.append(daemon)
        os.environ["DAGSTER_HOME"] = str(scratch / "dagster_home")
        instance = dg.DagsterInstance.get()
        driver = Driver(server.port, traffic)
        walk(args, flights, feeder, driver, registry, instance, timeline, traffic)
        driver.close()
        _wait_idle(instance, traffic, timeline, registry, flights["at"].iloc[-1])
        time.sleep(2.0)  # the service's tally reaches /metrics
        scrape = parse_metrics(_get(server.port, "/metrics"))
        future = metric_total(scrape, "flight_delay_future_values_total")
        errors = metric_total(scrape, "flight_delay_requests_total", outcome="server_error")
        runs = list(instance.get_runs())
        summary = write_report(
            layout=layout,
            registry=registry,
            static=static,
            monthly=monthly,
            runs=runs,
            timeline=timeline,
            traffic=traffic,
            future_values=future,
            server_errors=errors,
            start=args.start,
            end=args.end,
            loop_config=LOOP_CONFIG,
            seconds=time.monotonic() - started,
        )
    finally:
        for process in reversed(processes):
            process.stop()
    return summary


def walk(
    args: argparse.Namespace,
    flights: pd.DataFrame,
    feeder: OnlineFeeder,
    driver: Driver,
    registry: ModelRegistry,
    instance: Any,
    timeline: Timeline,
    traffic: Traffic,
) -> None:
    """The clock: step by step through data time, pausing while pipeline runs are in flight."""
    step = pd.Timedelta(minutes=args.step_minutes)
    first = pd.Timestamp(args.start, tz=LOCAL_TZ).tz_convert("UTC")
    last = flights["at"].iloc[-1] + step
    at = flights["at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()  # naive UTC, sorted
    pending: deque[tuple[pd.Timestamp, str, float]] = deque()  # (known at, request id, delay), in order
    day_started = time.monotonic()
    day = first.tz_convert(LOCAL_TZ).date()
    position = 0
    t = first
    while t < last:
        _wait_idle(instance, traffic, timeline, registry, t)
        feeder.advance(t)
        end = int(np.searchsorted(at, (t + step).tz_convert("UTC").tz_localize(None).to_datetime64(), side="left"))
        batch = flights.iloc[position:end]
        position = end
        ids = driver.predict(list(batch["body"]))
        for request_id, known, delay in zip(ids, batch["known"], batch["delay"]):
            if request_id is not None and pd.notna(known):
                pending.append((known, request_id, float(delay)))
        due = []
        while pending and pending[0][0] <= t:
            _, request_id, delay = pending.popleft()
            due.append((request_id, delay))
        # Outcomes arrive in departure order; those of one step go together.
        driver.feedback(due)
        t += step
        if t.tz_convert(LOCAL_TZ).date() != day:
            day = t.tz_convert(LOCAL_TZ).date()
            spare = args.day_seconds - (time.monotonic() - day_started)
            if spare > 0:
                time.sleep(spare)
            day_started = time.monotonic()
            if day.day == 1 or args.verbose:
                state = registry.state(MODEL_NAME)
                print(
                    f"  {day}  {traffic.predictions} predictions, {traffic.feedback} outcomes, "
                    f"{traffic.failed} failed; champion {state.champion}"
                    + (f", challenger {state.challenger.tag}" if state.challenger else ""),
                    flush=True,
                )
    # The outcomes still to come once the last flight has left.
    driver.feedback([(request_id, delay) for _, request_id, delay in pending])


def _wait_idle(instance: Any, traffic: Traffic, timeline: Timeline, registry: ModelRegistry, t: pd.Timestamp) -> None:
    """Hold the clock at ``t`` while pipeline runs are queued or running; note on the timeline the
    runs and registry events seen, at data time ``t``."""
    waited = time.monotonic()
    while True:
        timeline.observe(registry, instance, t)
        if not active_runs(instance):
            break
        time.sleep(1.0)
    traffic.paused_seconds += time.monotonic() - waited


@dataclass
class MonthlyModels:
    """The comparison policy ``monthly``'s models: on the first day of each month after the
    replay's first, the pipeline's training assets (``training_set``, ``delay_model``) on the loop's
    training window for that day, each registered in a model store of its own (never served).

    They depend on the prepared data alone, not on anything the replay does, so they are trained
    before the replay starts, not beside it on the same two cores: ``replay-monthly.json`` in the
    data folder records each month's window and the static model of the data they came from, and a
    later replay reuses a month's model only when both are the same. ``seconds`` is the time this
    took (reported apart from the replay's own)."""

    home: Path
    models: dict[str, str]  # first day of the month -> model tag
    trained: int  # of those, trained now (the others reused)
    seconds: float

    @property
    def reused(self) -> int:
        return len(self.models) - self.trained

    @classmethod
    def prepare(cls, args: argparse.Namespace, layout: DataLayout, static: str) -> MonthlyModels:
        import dagster as dg

        from flight_delay.loop import RetrainingWindow
        from pipeline.definitions import build_definitions
        from pipeline.resources import LocalModelRegistry

        started = time.monotonic()
        home = layout.root / "replay-monthly-bentoml"
        manifest_path = layout.root / "replay-monthly.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
        if manifest.get("static") != static:  # data prepared again: nothing of it can be reused
            shutil.rmtree(home, ignore_errors=True)
            manifest = {"static": static, "months": {}}
        window = RetrainingWindow(**LOOP_CONFIG["window"])
        defs = build_definitions(str(layout.root))
        resources = {**defs.resources, "model_registry": LocalModelRegistry(bentoml_home=str(home))}
        registry = ModelRegistry(home)
        have = set(registry.list(MODEL_NAME))
        models: dict[str, str] = {}
        trained = 0
        # Every first of a month after the replay's first day (its first month is the static model's).
        months = pd.date_range(pd.Timestamp(args.start) + pd.offsets.MonthBegin(1), args.end, freq="MS")
        for month in months:
            first_day = month.strftime("%Y-%m-%d")
            dates = window.dates(month.tz_localize(LOCAL_TZ).tz_convert("UTC").to_pydatetime())
            kept = manifest["months"].get(first_day, {})
            if kept.get("dates") == dates and kept.get("tag") in have:
                models[first_day] = kept["tag"]
                print(f"  monthly policy: {kept['tag']} for {month:%Y-%m} (reused)", flush=True)
                continue
            before = set(registry.list(MODEL_NAME))
            result = dg.materialize(
                list(defs.assets or []),
                selection=["training_set", "delay_model"],
                resources=resources,
                run_config={"ops": {"training_set": {"config": dates}}},
                instance=dg.DagsterInstance.ephemeral(),
            )
            (tag,) = set(registry.list(MODEL_NAME)) - before
            models[first_day] = tag
            trained += 1
            manifest["months"][first_day] = {"tag": tag, "dates": dates}
            manifest_path.write_text(json.dumps(manifest, indent=1))  # a model kept as soon as it is made
            print(f"  monthly policy: {tag} for {month:%Y-%m} ({result.run_id[:8]})", flush=True)
        return cls(home, models, trained, time.monotonic() - started)


def _get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/replay")
    parser.add_argument("--start", default="2013-03-01", help="First local day of the replay.")
    parser.add_argument("--end", default="2013-12-31", help="Last local day of the replay.")
    parser.add_argument("--step-minutes", type=float, default=30.0, help="Data time of one clock step.")
    parser.add_argument(
        "--day-seconds", type=float, default=3.0, help="Least wall time of one data day (the replay's speed)."
    )
    parser.add_argument("--horizon-minutes", type=float, default=60.0, help="Prediction time before departure.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--verbose", action="store_true", help="A line per data day.")
    args = parser.parse_args(argv)
    unwind_on_sigterm()
    summary = run(args)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
