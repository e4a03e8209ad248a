"""A real Prometheus on a free loopback port: a throwaway TSDB, the project's rules (or any),
scraping the targets named, and its HTTP API. Shared by the tests, the drift scenario and the
dashboards' picture (``bench.monitoring``), as the rest of ``bench.harness`` is."""

from __future__ import annotations

import json
import shutil
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from bench.harness import ProcessGroup, free_port
from flight_delay.paths import PROJECT_ROOT

RULES_DIR = PROJECT_ROOT / "deploy" / "prometheus" / "rules"


def prometheus_binary() -> str:
    exe = shutil.which("prometheus")
    if exe is None:
        raise RuntimeError("prometheus is not installed: apt-get install -y prometheus (make test installs it)")
    return exe


class Prometheus:
    """``prometheus`` scraping ``targets`` (host:port) every ``interval`` and evaluating
    ``rule_files`` as often; stopped with :meth:`stop`."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        rule_files: list[Path] | None = None,
        interval: str = "1s",
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(f) for f in (rule_files or [])],
            "scrape_configs": [{"job_name": "flight_delay_service", "static_configs": [{"targets": targets}]}],
            **(extra_config or {}),
        }
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.group: ProcessGroup | None = None

    def start(self, timeout: float = 30.0) -> Prometheus:
        command = [
            prometheus_binary(),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.group = ProcessGroup.start(command, self.workdir / "prometheus.log")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.group.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.workdir / "prometheus.log").read_text()[-3000:]
                raise RuntimeError(f"prometheus did not start:\n{log}")
            time.sleep(0.2)

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` (now, or at unix time ``at``): ``[{"metric", "value"}]``."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{urllib.parse.urlencode(params)}", timeout=10) as r:
            body = json.loads(r.read())
        if body.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {body}")
        return [{"metric": s["metric"], "value": float(s["value"][1])} for s in body["data"]["result"]]

    def wait_for(self, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The first non-empty answer to ``expr`` within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"{expr!r} returned no data within {timeout:.0f} s")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.group is not None:
            self.group.stop(timeout=10)


def project_rules() -> list[Path]:
    """The project's rule files (``deploy/prometheus/rules/*.yml``)."""
    files = sorted(RULES_DIR.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no Prometheus rules in {RULES_DIR}")
    return files
