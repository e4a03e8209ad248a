"""A real Prometheus for the tests: on a free loopback port, a throwaway TSDB, the project's rules
(or any), scraping the targets the test names, and its HTTP API; stand-in replicas whose
``/metrics`` text the test sets (:class:`Exposition`)."""

from __future__ import annotations

from typing import Any

from bench.harness import free_port
from bench.prometheus import RULES_DIR, Prometheus, project_rules, prometheus_binary
from flight_delay.monitoring import CounterWindow

__all__ = ["RULES_DIR", "Exposition", "Prometheus", "counter_window", "project_rules", "prometheus_binary"]


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
