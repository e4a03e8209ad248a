"""A real Prometheus for the tests: on a free loopback port, a throwaway TSDB, the project's rules
(or any), scraping the targets the test names, and its HTTP API; stand-in replicas whose
``/metrics`` text the test sets (:class:`Exposition`)."""

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
from flight_delay.monitoring import CounterWindow
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


class Exposition:
    """A stand-in for one replica's ``/metrics``: an HTTP server on a free loopback port that
    answers whatever text the test set last, and counts the scrapes it answered."""

    def __init__(self) -> None:
        import http.server
        import threading

        owner = self
        self._text = ""
        self._scrapes = 0
        self._changed = threading.Condition()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._changed:
                    body = owner._text.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                with owner._changed:
                    owner._scrapes += 1
                    owner._changed.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.target = f"127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name=f"exposition-{self.target}", daemon=True)
        self._thread.start()

    def publish(self, text: str) -> None:
        with self._changed:
            self._text = text

    def wait_scrapes(self, n: int, timeout: float = 30.0) -> None:
        """Block until ``n`` more scrapes than now have been answered (with the text now set)."""
        with self._changed:
            goal = self._scrapes + n
            if not self._changed.wait_for(lambda: self._scrapes >= goal, timeout):
                raise AssertionError(f"{self.target} was scraped {self._scrapes} times, expected {goal}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def counter_window(prometheus: Prometheus, at: float, drift_range: str, quality_range: str) -> CounterWindow:
    """The increases Prometheus reports at unix time ``at``: feature bins over ``drift_range``,
    feedback over ``quality_range``, summed over instances (as ``PrometheusMetrics`` reads them)."""

    def increase(expr: str, by: str, window: str) -> list[dict[str, Any]]:
        return prometheus.query(f"sum by ({by}) (increase({expr}[{window}]))", at=at)

    window = CounterWindow()
    for s in increase("flight_delay_feature_value_total", "model_version, feature, bin", drift_range):
        window.feature_bins[(s["metric"]["model_version"], s["metric"]["feature"], s["metric"]["bin"])] = s["value"]
    for s in increase("flight_delay_feedback_score_bin_total", "model_version, variant, late, bin", quality_range):
        m = s["metric"]
        window.feedback_bins[(m["model_version"], m["variant"], m["late"], m["bin"])] = s["value"]
    for name, expr in (
        ("log_loss", "flight_delay_feedback_log_loss_sum"),
        ("brier", "flight_delay_feedback_brier_sum"),
        ("probability", "flight_delay_feedback_probability_sum"),
        ("hits", 'flight_delay_feedback_total{outcome="hit"}'),
    ):
        for s in increase(expr, "model_version, variant", quality_range):
            window.feedback_sums.setdefault((s["metric"]["model_version"], s["metric"]["variant"]), {})[name] = s[
                "value"
            ]
    return window
