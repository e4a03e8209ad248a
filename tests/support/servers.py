"""The prediction service as a real ``bentoml serve`` process in the tests, and a throwaway
Redis, both on :mod:`bench.harness` (the benchmark's own harness)."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from bench.harness import ProcessGroup, ServerProcess, free_port, service_env
from tests.support.deployments import Deployment

MAX_BATCH = 50  # FLIGHT_DELAY_MAX_BATCH of the servers under test
READY_TIMEOUT = 120.0  # seconds for a server to answer /readyz on a busy two-core machine
SERVICE = "serving.service:FlightDelayService"


class ServiceProcess(ServerProcess):
    """The service over one deployment, with its own BENTOML_HOME (``bentoml serve`` wipes
    ``$BENTOML_HOME/prometheus_multiproc_dir`` when it starts, which would blank the metrics of any
    other server sharing it) and the given ``FLIGHT_DELAY_*`` settings."""

    def __init__(self, name: str, deployment: Deployment, workdir: Path, **settings: str) -> None:
        store = {"online_store": deployment.online_store} if deployment.online_store else {}
        env = service_env(
            deployment.data_dir,
            workdir / f"{name}-bentoml-home",
            inherit_settings=False,
            max_batch=MAX_BATCH,
            **store,
            **settings,
        )
        super().__init__(
            SERVICE, env, workdir / f"{name}.log", name=name, workers=int(env.get("FLIGHT_DELAY_WORKERS", 1))
        )
        self.deployment = deployment

    @property
    def store(self) -> str:
        return "redis" if self.deployment.online_store else "sqlite"

    def wait_ready(self, timeout: float = READY_TIMEOUT, workers: int | None = None) -> ServiceProcess:
        try:
            super().wait_ready(timeout, workers if workers is not None else self.workers)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        return self

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)


class RedisServer:
    """A real, throwaway redis-server on a free loopback port (no persistence); with ``tls`` (a
    certificate and key made here) it listens for TLS only, with ``password`` it requires it."""

    def __init__(self, workdir: Path, tls: bool = False, password: str | None = None) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.tls, self.password = tls, password
        auth = f":{password}@" if password else ""
        scheme, options = ("rediss", "?ssl_cert_reqs=none") if tls else ("redis", "")
        self.url = f"{scheme}://{auth}127.0.0.1:{self.port}{options}"
        self.log_path = workdir / "redis.log"
        self.group: ProcessGroup | None = None

    def _arguments(self) -> list[str]:
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        if self.password:
            args += ["--requirepass", self.password]
        if not self.tls:
            return ["--port", str(self.port), *args]
        cert, key = self.workdir / "redis.crt", self.workdir / "redis.key"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
        return [
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert),
            "--tls-key-file",
            str(key),
            "--tls-auth-clients",
            "no",
            *args,
        ]

    def start(self) -> RedisServer:
        import redis

        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(exe).exists():
            pytest.fail("redis-server is not installed: apt-get install redis-server")
        self.group = ProcessGroup.start([exe, *self._arguments()], self.log_path)
        deadline = time.monotonic() + 20
        while True:
            try:
                if redis.Redis.from_url(self.url, socket_timeout=1).ping():  # the URL carries TLS and password
                    return self
            except redis.ConnectionError:
                pass
            if self.group.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(timeout=10)
