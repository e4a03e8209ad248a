"""Running a service under test as a real server, shared by the benchmark and the test suite:
free loopback ports, ``bentoml serve`` in a process group of its own, readiness, stopping the
whole process tree, the workers' memory and CPU, the machine's other load, and ``/metrics``
parsed with ``prometheus_client``'s parser. Linux only (``/proc``)."""

from __future__ import annotations

import contextlib
import http.client
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from flight_delay.monitoring import Scrape, parse_metrics
from flight_delay.paths import PROJECT_ROOT, DataLayout

HOST = "127.0.0.1"
PORT_ATTEMPTS = 3  # ports a server is started on before a bind failure is reported
PORT_TAKEN = "Address already in use"


# -- ports and processes ----------------------------------------------------------------------
def free_port() -> int:
    """A loopback port nobody listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with socket.socket() as s:  # nobody may answer there, or we would measure someone else
        if s.connect_ex((HOST, port)) == 0:
            raise RuntimeError(f"port {port} answers before the service started")
    return port


def unwind_on_sigterm() -> None:
    """Make SIGTERM (``kill``, a CI job's timeout) unwind this process like Ctrl-C, so that the
    ``finally`` blocks and context managers that stop its servers run. Each server runs in a
    session of its own (:class:`ProcessGroup`), which a signal to this process does not reach:
    without this, a driver killed by SIGTERM left its servers, Redis and daemon running."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"stopped by signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


def _stat(pid: int) -> tuple[str, int, int, list[str]] | None:
    """(state, parent pid, start time, all fields after the name) of a live process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[19]), fields


def process_tree(root: int) -> dict[int, int]:
    """``root`` and all its descendants now, as pid -> start time (so a reused pid never matches)."""
    stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e)))}
    children: dict[int, list[int]] = defaultdict(list)
    for pid, st in stats.items():
        children[st[1]].append(pid)
    tree: dict[int, int] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][2]
            frontier.extend(children.get(pid, []))
    return tree


def still_running(tree: dict[int, int]) -> list[int]:
    """The processes of ``tree`` that are alive (same pid and start time, not a zombie)."""
    out = []
    for pid, started in tree.items():
        st = _stat(pid)
        if st is not None and st[2] == started and st[0] != "Z":
            out.append(pid)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    """Resident memory of a process (``VmRSS``), MB; NaN when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads); NaN when it is gone."""
    st = _stat(pid)
    if st is None:
        return math.nan
    fields = st[3]
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy (all cores; steal included: a VM's neighbours)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def other_load(seconds: float = 2.0) -> float:
    """Cores kept busy by everything else on the machine, over ``seconds``."""
    b0, c0, w0 = machine_busy_seconds(), time.process_time(), time.monotonic()
    time.sleep(seconds)
    return max(0.0, (machine_busy_seconds() - b0 - (time.process_time() - c0)) / (time.monotonic() - w0))


class ProcessGroup:
    """A process started in a session (and process group) of its own, and everything it spawned.

    BentoML's workers run in process groups of their own (circus), so signalling the server's
    group reaches ``bentoml serve`` (whose arbiter then stops its workers) but not the workers
    themselves: exits are awaited, and stragglers killed, over the whole process tree."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.tree: dict[int, int] = {}

    @classmethod
    def start(cls, command: list[str], log_path: Path, **popen: object) -> ProcessGroup:
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, **popen
            )  # type: ignore[call-overload]
        return cls(proc)

    def snapshot(self) -> None:
        self.tree.update(process_tree(self.proc.pid))

    def signal_group(self, sig: int) -> None:
        self.snapshot()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def wait_exit(self, timeout: float) -> bool:
        """Whether the whole tree has exited within ``timeout`` seconds."""
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
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.wait_exit(10)


def start_redis(log_path: Path, timeout: float = 30.0) -> tuple[ProcessGroup, int]:
    """A throwaway ``redis-server`` on a free loopback port, without persistence, returned with
    its port once it answers PING; raises (after stopping it) when it does not within ``timeout``."""
    import redis

    port = free_port()
    exe = shutil.which("redis-server") or "redis-server"
    group = ProcessGroup.start([exe, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"], log_path)
    deadline = time.monotonic() + timeout
    while True:
        try:
            redis.Redis(host=HOST, port=port).ping()
            return group, port
        except redis.ConnectionError:
            if group.proc.poll() is not None or time.monotonic() > deadline:
                group.stop()
                raise RuntimeError(f"redis-server did not answer on {HOST}:{port}; its log: {log_path}") from None
            time.sleep(0.1)


# -- HTTP ---------------------------------------------------------------------------------------
def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """One GET on a fresh loopback connection: status and body."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# -- /metrics ---------------------------------------------------------------------------------
def histogram_delta(before: Scrape, after: Scrape, name: str, **match: str) -> dict[str, float] | None:
    """Count, mean and bucket-bound p50/p99 of a histogram between two scrapes (summed over the
    series whose labels include ``match``); None when nothing was observed."""

    def pick(suffix: str) -> dict[str, float]:
        acc: dict[str, float] = defaultdict(float)
        for (metric, labels), value in after.items():
            d = dict(labels)
            if metric != name + suffix or any(d.get(k) != v for k, v in match.items()):
                continue
            acc[d.get("le", "")] += value - before.get((metric, labels), 0.0)
        return acc

    count = sum(pick("_count").values())
    if count <= 0:
        return None
    total = sum(pick("_sum").values())
    buckets = sorted(((math.inf if le == "+Inf" else float(le)), n) for le, n in pick("_bucket").items())

    def quantile(q: float) -> float:
        for le, n in buckets:
            if n >= q * count:
                return le
        return math.inf

    return {
        "count": count,
        "mean_ms": total / count * 1e3,
        "p50_le_ms": quantile(0.5) * 1e3,
        "p99_le_ms": quantile(0.99) * 1e3,
    }


# -- a BentoML service as a real server -----------------------------------------------------------
def bentoml_command(root: Path = PROJECT_ROOT) -> list[str]:
    """``bentoml`` of this interpreter's environment; for another checkout ``root``, of its own
    environment (``root/.venv``, which its ``make setup`` creates)."""
    if root.resolve() != PROJECT_ROOT.resolve():
        exe = root / ".venv" / "bin" / "bentoml"
        if not exe.exists():
            raise FileNotFoundError(f"{exe} not found: run `make setup` in {root} first")
        return [str(exe)]
    exe = Path(sys.executable).with_name("bentoml")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "bentoml"]


def service_env(
    data_dir: Path, bentoml_home: Path, inherit_settings: bool = True, **settings: str | int | float
) -> dict[str, str]:
    """The environment of a service the harness starts over ``data_dir``: this process's
    environment, its ``FLIGHT_DELAY_*`` settings included unless ``inherit_settings`` is false,
    then ``settings`` (``workers=2`` sets ``FLIGHT_DELAY_WORKERS``). Each server gets a BentoML home
    of its own: ``bentoml serve`` wipes the Prometheus multiprocess folder there when it starts,
    which would blank the metrics of another server sharing it."""
    env = {k: v for k, v in os.environ.items() if inherit_settings or not k.startswith("FLIGHT_DELAY_")}
    env.update(
        FLIGHT_DELAY_DATA_DIR=str(data_dir),
        BENTOML_HOME=str(bentoml_home),
        BENTOML_DO_NOT_TRACK="True",
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.update({f"FLIGHT_DELAY_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def scratch_data_folder(layout: DataLayout, prefix: str) -> Path:
    """A throwaway data folder for a server under test: ``layout``'s model registry and Feast state
    linked in, a prediction log of its own (the caller removes the folder)."""
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    for name in ("bentoml", "feast"):
        (scratch / name).symlink_to(layout.root / name, target_is_directory=True)
    return scratch


class ServerProcess:
    """``bentoml serve <target>`` on a free loopback port, in its own process group, with its own
    environment; ready once ``/readyz`` answers 200. ``root`` is the checkout whose code it serves
    (this one by default)."""

    def __init__(
        self,
        target: str,
        env: dict[str, str],
        log_path: Path,
        name: str | None = None,
        workers: int | None = None,
        root: Path = PROJECT_ROOT,
    ) -> None:
        self.target, self.env, self.log_path, self.root = target, env, log_path, root
        self.workers = workers  # how many worker processes to wait for (None: the first is enough)
        self.name = name or target
        self.port = free_port()
        self.group: ProcessGroup | None = None
        self.started_workers: set[int] = set()
        self.restarted = False  # a worker was replaced while it served (see check_workers)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> ServerProcess:
        command = [*bentoml_command(self.root), "serve", self.target, "--host", HOST, "--port", str(self.port)]
        env = {
            **self.env,
            "PYTHONPATH": os.pathsep.join(p for p in (str(self.root), self.env.get("PYTHONPATH")) if p),
        }
        self.group = ProcessGroup.start(command, self.log_path, cwd=self.root, env=env)
        return self

    def wait_ready(self, timeout: float = 240.0, workers: int | None = None) -> ServerProcess:
        """Block until ``/readyz`` answers 200 and, with ``workers``, until that many worker
        processes have started the service; raise (after stopping the server) with the log's tail
        when the server exits or is not ready within ``timeout`` seconds.

        Workers share the listening socket and only a started one accepts, so ``/readyz`` answers
        as soon as the first is up: a worker still starting (or restarting after a failed start)
        is seen in the log, where BentoML says "Service <name> initialized" once per worker."""
        assert self.group is not None, "start() first"
        deadline = time.monotonic() + timeout
        port_attempts = PORT_ATTEMPTS
        while True:
            if self.group.proc.poll() is not None:
                code = self.group.proc.returncode
                self.stop()
                if port_attempts > 1 and PORT_TAKEN in self.log_tail(5):
                    # The port was free when it was chosen; another process took it before bentoml
                    # bound it (an outgoing connection's ephemeral port, on a busy machine).
                    port_attempts -= 1
                    self.port = free_port()
                    self.start()
                    continue
                raise RuntimeError(f"{self.name}: bentoml serve exited with {code}:\n{self.log_tail()}")
            if self._ready(workers):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name}: not ready within {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)
        self.group.snapshot()
        if not self.worker_pids:
            raise RuntimeError(f"{self.name}: /readyz answered but no worker process of ours runs:\n{self.log_tail()}")
        self.started_workers = set(self.worker_pids)
        return self

    def _ready(self, workers: int | None) -> bool:
        try:
            if http_get(self.port, "/readyz")[0] != 200:
                return False
        except OSError:
            return False
        if workers is None:
            return True
        started = self.log_path.read_text(errors="replace").count(" initialized")
        return started >= workers and len(self.worker_pids) == workers

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes running now (the arbiter restarts a worker that dies)."""
        if self.group is None:
            return []
        return sorted(p for p in process_tree(self.group.proc.pid) if "_bentoml_impl.worker" in cmdline(p))

    def check_workers(self) -> bool:
        """Whether the workers running now are the ones that were running when it got ready
        (remembered in ``restarted`` when they are not)."""
        same = not self.started_workers or set(self.worker_pids) == self.started_workers
        self.restarted = self.restarted or not same
        return same

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def rss(self) -> dict[int, float]:
        """Resident memory of each worker, MB."""
        return {p: rss_mb(p) for p in self.worker_pids}

    def cpu(self) -> float:
        """CPU seconds of the serve process and its workers."""
        pids = [self.group.proc.pid, *self.worker_pids] if self.group else []
        return sum(c for c in map(cpu_seconds, pids) if not math.isnan(c))

    def metrics(self) -> Scrape:
        status, body = http_get(self.port, "/metrics", timeout=30)
        return parse_metrics(body.decode(errors="replace")) if status == 200 else {}

    def wait_exit(self, timeout: float) -> bool:
        assert self.group is not None
        return self.group.wait_exit(timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
        if self.group is not None:
            if self.group.proc.poll() is None:
                self.check_workers()
            self.group.stop(sig, timeout)

    def __enter__(self) -> ServerProcess:
        try:
            self.start().wait_ready(workers=self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # Defined last: in the class body, the name would hide the signal module from the methods above.
    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group."""
        assert self.group is not None
        self.group.signal_group(sig)
