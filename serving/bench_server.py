"""Processes for :mod:`serving.bench`: the service under test as a real server, its workers'
memory and CPU, the machine's other load, and the service's ``/metrics``. Linux only (``/proc``)."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from serving import bench_loadgen as lg
from serving.settings import PROJECT_ROOT

HOST = "127.0.0.1"

# -- the server under test ----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port = s.getsockname()[1]
    with socket.socket() as s:  # nobody may answer there, or we would measure someone else
        if s.connect_ex((HOST, port)) == 0:
            raise RuntimeError(f"port {port} answers before the service started")
    return port


def _proc_children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children[ppid].append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    tree, out, todo = _proc_children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat[stat.rindex(")") + 2:].split()
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


class Server:
    """``bentoml serve <target>`` in its own process group, on a free loopback port."""

    def __init__(self, target: str, data_dir: Path, log_path: Path) -> None:
        self.target, self.data_dir, self.log_path = target, data_dir, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.worker_pids: list[int] = []

    def start(self, timeout: float = 240.0) -> None:
        env = {**os.environ, "FLIGHT_DELAY_DATA_DIR": str(self.data_dir),
               "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
               "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        bentoml = Path(sys.executable).with_name("bentoml")
        command = ([str(bentoml)] if bentoml.exists() else [sys.executable, "-m", "bentoml"])
        command += ["serve", self.target, "--host", HOST, "--port", str(self.port)]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        ready = lg.encode_get(HOST, self.port, "/readyz")
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.target} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, _ = asyncio.run(lg.fetch(HOST, self.port, ready, timeout=5))
                if status == 200:
                    break
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.target} not ready after {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)
        self.worker_pids = [p for p in descendants(self.proc.pid) if "_bentoml_impl.worker" in cmdline(p)]
        if self.proc.poll() is not None or not self.worker_pids:
            raise RuntimeError(f"{self.target}: /readyz answered but no worker process of ours is "
                               f"running:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss(self) -> dict[int, float]:
        return {p: rss_mb(p) for p in self.worker_pids}

    def cpu(self) -> float:
        """CPU seconds of the serve process and its workers."""
        pids = [self.proc.pid, *self.worker_pids] if self.proc else []
        return sum(c for c in map(cpu_seconds, pids) if not math.isnan(c))

    def metrics(self) -> dict[tuple[str, tuple], float]:
        status, body = asyncio.run(lg.fetch(HOST, self.port, lg.encode_get(HOST, self.port, "/metrics")))
        return parse_metrics(body.decode(errors="replace")) if status == 200 else {}

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        for pid in pids:  # workers live in process groups of their own
            if pid != self.proc.pid and Path(f"/proc/{pid}").exists() and cmdline(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        self.proc = None

    def __enter__(self) -> Server:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def scratch_data_dir(data_dir: Path) -> Path:
    """A throwaway data folder: the real registry and Feast state, a fresh prediction log."""
    scratch = Path(tempfile.mkdtemp(prefix="flight-delay-bench-"))
    for name in ("bentoml", "feast"):
        (scratch / name).symlink_to(data_dir / name, target_is_directory=True)
    return scratch


# -- /metrics -----------------------------------------------------------------------------------
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse_metrics(text: str) -> dict[tuple[str, tuple], float]:
    out: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or line.startswith("#"):
            continue
        labels = tuple(sorted(_LABEL.findall(m.group(2) or "")))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            pass
    return out


def metric_total(scrape: dict, name: str, **match: str) -> float:
    """Sum of the samples of ``name`` (a counter: ``name`` or ``name_total``) whose labels include ``match``."""
    return sum(value for (metric, labels), value in scrape.items()
               if metric in (name, f"{name}_total") and all(dict(labels).get(k) == v for k, v in match.items()))


def histogram_delta(before: dict, after: dict, name: str, **match: str) -> dict | None:
    """Count, mean and bucket-bound p50/p99 of a histogram between two scrapes (summed over
    series whose labels include ``match``)."""
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

    return {"count": count, "mean_ms": total / count * 1e3, "p50_le_ms": quantile(0.5) * 1e3,
            "p99_le_ms": quantile(0.99) * 1e3}
