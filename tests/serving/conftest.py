"""Serving fixtures: one tiny real deployment, the service as a real ``bentoml serve`` process
(and in-process as an ASGI app), Redis as a second online store, and real flights to score.

The deployment is the Dagster graph on the six real days of ``tests.conftest.SLICE_DAYS``
(about 20 s); every server of the session starts from it or from a copy of it. Each server runs
in its own process group with its own ``BENTOML_HOME`` (``bentoml serve`` wipes
``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, which would blank the metrics of any
other server sharing it) and is stopped in teardown by signalling that group only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pandas as pd
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "flight_delay"
DAYS = ("2013-01-01", "2013-01-06")
SERVE_DAY = "2013-01-06"  # the flights the tests score: the last day the online store knows
HORIZON = pd.Timedelta(minutes=60)  # the model predicts an hour before departure, as trained
MAX_BATCH = 50  # FLIGHT_DELAY_MAX_BATCH of the servers under test
READY_TIMEOUT = 120.0  # seconds for a server to answer /readyz on a busy two-core machine


# -- deployments ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    data_dir: Path
    champion: str
    online_store: str | None = None  # redis://... or None for the SQLite online store

    @property
    def prediction_log(self) -> Path:
        return self.data_dir / "prediction_log" / "predictions.db"

    def registry(self) -> Any:
        from flight_delay.registry import ModelRegistry

        return ModelRegistry(self.data_dir / "bentoml")


def run_ok(graph: Any, selection: list[str], days: tuple[str, str] | None = None,
           run_config: dict[str, Any] | None = None) -> Any:
    result = graph.run(selection, days, run_config=run_config)
    if not result.success:
        failures = [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        pytest.fail(f"materializing {selection} failed: {failures}")
    return result


def clone_deployment(source: Deployment, target: Path) -> Deployment:
    """A copy of a SQLite-backed deployment (registry, feature state, online store, lake), without
    its prediction log: servers of the copy can change the registry and log independently."""
    shutil.copytree(source.data_dir, target, ignore=shutil.ignore_patterns("prediction_log"))
    return Deployment(target, source.champion, source.online_store)


def train_candidate(deployment: Deployment, source_dir: Path) -> str:
    """Register a second, smaller model (one epoch) without promoting it; returns its tag."""
    import dagster as dg

    from tests.integration.graph import Graph

    registry = deployment.registry()
    before = set(registry.list(MODEL_NAME))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FLIGHT_DELAY_ONLINE_STORE", raising=False)
        graph = Graph(deployment.data_dir, source_dir, dg.DagsterInstance.ephemeral())
        run_ok(graph, ["delay_model"], run_config={
            "ops": {"delay_model": {"config": {"max_epochs": 1, "hidden_units": [8], "seed": 7}}}})
    (tag,) = set(registry.list(MODEL_NAME)) - before
    assert registry.champion(MODEL_NAME) == deployment.champion
    return tag


@pytest.fixture(scope="session")
def serving_deployment(tmp_path_factory: pytest.TempPathFactory, source_dir: Path) -> Deployment:
    """ONE tiny real deployment (SQLite online store, one promoted model) for the session."""
    import dagster as dg

    from tests.integration.graph import DAILY, REFERENCE, TRAINING, Graph

    data_dir = tmp_path_factory.mktemp("serving") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FLIGHT_DELAY_ONLINE_STORE", raising=False)
        graph = Graph(data_dir, source_dir, dg.DagsterInstance.ephemeral())
        run_ok(graph, REFERENCE)
        run_ok(graph, DAILY, DAYS)
        run_ok(graph, TRAINING, run_config=graph.training_config("2013-01-04", "2013-01-05", "2013-01-06"))
    deployment = Deployment(data_dir, champion="")
    champion = deployment.registry().champion(MODEL_NAME)
    assert champion, "the training run promoted no champion"
    return Deployment(data_dir, champion)


@pytest.fixture(scope="session")
def serving_data_dir(serving_deployment: Deployment) -> Path:
    return serving_deployment.data_dir


# -- Redis --------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a live process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def process_tree(root: int) -> dict[int, int]:
    """``root`` and all its descendants now, as pid -> start time (so a reused pid never matches)."""
    stats = {int(d.name): st for d in Path("/proc").iterdir() if d.name.isdigit() and (st := _stat(int(d.name)))}
    tree: dict[int, int] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][2]
            frontier.extend(child for child, st in stats.items() if st[1] == pid)
    return tree


def still_running(tree: dict[int, int]) -> list[int]:
    out = []
    for pid, started in tree.items():
        st = _stat(pid)
        if st is not None and st[2] == started and st[0] != "Z":
            out.append(pid)
    return out


class Started:
    """A process this test session started in its own session/group, and everything it spawned.

    BentoML's workers run in process groups of their own (circus), so signalling the server's
    group reaches ``uv``/``bentoml serve`` (whose arbiter then stops its workers) but not the
    workers themselves: exits are awaited, and stragglers killed, over the whole process tree."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.tree: dict[int, int] = {}

    def snapshot(self) -> None:
        self.tree.update(process_tree(self.proc.pid))

    def signal_group(self, sig: int) -> None:
        self.snapshot()
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None and not still_running(self.tree):
                return True
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        self.signal_group(sig)
        if not self.wait_exit(timeout):
            for pid in still_running(self.tree):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.wait_exit(10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real, throwaway redis-server on a free port (no persistence); killed in teardown."""
    import redis

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(exe).exists():
        pytest.fail("redis-server is not installed: apt-get install redis-server")
    port = free_port()
    log = tmp_path_factory.mktemp("redis") / "redis.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(url, socket_timeout=1).ping():
                    break
            except redis.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield url
    finally:
        Started(proc).stop(timeout=10)


@pytest.fixture(scope="session")
def redis_deployment(tmp_path_factory: pytest.TempPathFactory, source_dir: Path, redis_url: str,
                     serving_deployment: Deployment) -> Deployment:
    """The same days with Redis as the online store: the definitions are built with
    FLIGHT_DELAY_ONLINE_STORE set, so online_features pushes and materializes into Redis. It serves
    the SQLite deployment's registry (same model), so both stores must give the same predictions."""
    import dagster as dg

    from tests.integration.graph import DAILY, REFERENCE, Graph

    data_dir = tmp_path_factory.mktemp("serving_redis") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FLIGHT_DELAY_ONLINE_STORE", redis_url)
        graph = Graph(data_dir, source_dir, dg.DagsterInstance.ephemeral())
        assert graph.resource("feature_store").online_store_url is not None
        run_ok(graph, REFERENCE)
        run_ok(graph, DAILY, DAYS)
    shutil.copytree(serving_deployment.data_dir / "bentoml", data_dir / "bentoml")
    return Deployment(data_dir, serving_deployment.champion, online_store=redis_url)


# -- the service as a real server --------------------------------------------------------------
def _bentoml_command() -> list[str]:
    uv = shutil.which("uv")
    if uv:
        return [uv, "run", "--frozen", "bentoml"]
    return [str(Path(sys.executable).with_name("bentoml"))]


class ServiceProcess:
    """``bentoml serve serving.service:FlightDelayService`` on a free port, in its own process
    group, with its own BENTOML_HOME and the given FLIGHT_DELAY_* settings."""

    def __init__(self, name: str, deployment: Deployment, workdir: Path, **settings: str) -> None:
        self.name = name
        self.deployment = deployment
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLIGHT_DELAY_")}
        env.update(
            BENTOML_HOME=str(workdir / f"{name}-bentoml-home"),
            BENTOML_DO_NOT_TRACK="True",
            TF_CPP_MIN_LOG_LEVEL="2",
            FLIGHT_DELAY_DATA_DIR=str(deployment.data_dir),
            FLIGHT_DELAY_MAX_BATCH=str(MAX_BATCH),
        )
        if deployment.online_store:
            env["FLIGHT_DELAY_ONLINE_STORE"] = deployment.online_store
        env.update({f"FLIGHT_DELAY_{k.upper()}": v for k, v in settings.items()})
        self.env = env
        self.proc: Started | None = None

    @property
    def store(self) -> str:
        return "redis" if self.deployment.online_store else "sqlite"

    def start(self) -> ServiceProcess:
        cmd = [*_bentoml_command(), "serve", "serving.service:FlightDelayService",
               "--host", "127.0.0.1", "--port", str(self.port)]
        with open(self.log_path, "ab") as out:
            self.proc = Started(subprocess.Popen(cmd, cwd=PROJECT_ROOT, env=self.env, stdout=out,
                                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                 start_new_session=True))
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> ServiceProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while True:
                if self.proc.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"{self.name}: bentoml serve exited with {self.proc.proc.returncode}:\n"
                                f"{self.log_tail()}")
                try:
                    if client.get("/readyz").status_code == 200:
                        self.proc.snapshot()  # the workers exist now
                        return self
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"{self.name}: not ready within {timeout:.0f} s:\n{self.log_tail()}")
                time.sleep(0.25)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.proc is not None:
            self.proc.stop(sig, timeout)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (``uv run`` and ``bentoml serve``)."""
        assert self.proc is not None
        self.proc.signal_group(sig)

    def wait_exit(self, timeout: float) -> bool:
        """Whether the whole process tree (workers included) has exited within ``timeout``."""
        assert self.proc is not None
        return self.proc.wait_exit(timeout)

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def server_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


@pytest.fixture(scope="session")
def serve(server_workdir: Path) -> Iterator[Any]:
    """Factory: ``serve(name, deployment, **settings)`` starts servers (all at once, then waits,
    so start-ups overlap) and stops every one of them at the end of the session."""
    started: list[ServiceProcess] = []

    def start(*specs: tuple[str, Deployment, dict[str, str]]) -> list[ServiceProcess]:
        servers = [ServiceProcess(name, dep, server_workdir, **settings) for name, dep, settings in specs]
        for s in servers:
            started.append(s.start())
        return [s.wait_ready() for s in servers]

    yield start
    for s in reversed(started):
        s.stop()


@pytest.fixture(scope="session")
def sqlite_server(serve: Any, serving_deployment: Deployment) -> ServiceProcess:
    """The service over the SQLite deployment, default settings but FLIGHT_DELAY_MAX_BATCH=50."""
    (server,) = serve(("sqlite", serving_deployment, {}))
    return server


@pytest.fixture(scope="session")
def redis_server(serve: Any, redis_deployment: Deployment) -> ServiceProcess:
    """The service over the Redis deployment, same settings."""
    (server,) = serve(("redis", redis_deployment, {}))
    return server


@pytest.fixture(scope="session", params=["sqlite", "redis"])
def served(request: pytest.FixtureRequest) -> ServiceProcess:
    """The shared serving assertions run once per online store."""
    return request.getfixturevalue(f"{request.param}_server")


@pytest.fixture()
def http(served: ServiceProcess) -> Iterator[httpx.Client]:
    with served.client() as client:
        yield client


# -- the service in-process ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def inprocess_client(serving_deployment: Deployment) -> Iterator[httpx.Client]:
    """``FlightDelayService.to_asgi()`` behind Starlette's TestClient (an httpx.Client), whose
    context runs the ASGI lifespan: startup builds the service instance (its ``__init__``).

    One per test process: each ``to_asgi()`` registers BentoML's own request metrics in the
    global Prometheus registry, and a second app fails with "Duplicated timeseries"."""
    from starlette.testclient import TestClient

    with pytest.MonkeyPatch.context() as mp:  # settings are read once, in __init__, at startup
        for key in [k for k in os.environ if k.startswith("FLIGHT_DELAY_")]:
            mp.delenv(key)
        mp.setenv("FLIGHT_DELAY_DATA_DIR", str(serving_deployment.data_dir))
        mp.setenv("FLIGHT_DELAY_MAX_BATCH", str(MAX_BATCH))
        from serving.service import FlightDelayService

        client = TestClient(FlightDelayService.to_asgi(), base_url="http://inprocess",
                            raise_server_exceptions=False)
        client.__enter__()
    try:
        yield client
    finally:
        client.__exit__(None, None, None)


# -- real flights ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlightRequest:
    body: dict[str, Any]  # the "flight" object of a request
    key: str  # the flight key the pipeline gives it: local date, carrier and number, origin


@pytest.fixture(scope="session")
def real_requests(real_flights: pd.DataFrame) -> list[FlightRequest]:
    """Every flight of SERVE_DAY from the deployment's own source, one per flight key, as requests:
    scheduled departure = time_hour + minute (UTC, with offset), predicted HORIZON before."""
    from tests.conftest import slice_days

    out: dict[str, FlightRequest] = {}
    for row in slice_days(real_flights, [SERVE_DAY]).itertuples(index=False):
        sched = pd.Timestamp(row.time_hour).tz_convert("UTC") + pd.Timedelta(minutes=int(row.minute))
        key = f"{row.year:04d}-{row.month:02d}-{row.day:02d}:{row.carrier}{int(row.flight)}:{row.origin}"
        body = {
            "carrier": str(row.carrier), "flight": int(row.flight),
            "tailnum": None if pd.isna(row.tailnum) else str(row.tailnum),
            "origin": str(row.origin), "dest": str(row.dest),
            "scheduled_departure": sched.isoformat(), "distance": float(row.distance),
            "prediction_time": (sched - HORIZON).isoformat(),
        }
        out.setdefault(key, FlightRequest(body, key))
    assert len(out) > 500
    return list(out.values())


# -- helpers --------------------------------------------------------------------------------------
def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` in a Prometheus exposition whose labels include ``labels``.
    A counter declared as ``name`` is exposed as ``name_total``; both spellings match."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (sample.name in (name, f"{name}_total")
                    and all(sample.labels.get(k) == v for k, v in labels.items())):
                total += sample.value
    return total


def settled_metrics(client: Any, condition: Callable[[str], bool], timeout: float = 5.0) -> str:
    """``/metrics`` once ``condition`` holds on it (or the timeout passed): the service applies
    counter increments to Prometheus once a second (``serving.metrics.CounterTally``)."""
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if condition(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def quiet_metrics(client: Any) -> str:
    """``/metrics`` after the service applied every counter increment of requests already answered
    (the tally flushes once a second)."""
    from serving.metrics import TALLY_SECONDS

    time.sleep(TALLY_SECONDS + 0.3)
    return client.get("/metrics").text


def metric_samples(text: str, name: str) -> list[dict[str, str]]:
    from prometheus_client.parser import text_string_to_metric_families

    return [dict(s.labels) for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]
