"""Where the monitoring reads the service's counters: Prometheus's HTTP API when one is
configured, else the services' own ``/metrics`` (the embedded default)."""

import json
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg
from pydantic import Field

from flight_delay.monitoring import CounterWindow, Scrape, parse_metrics

_INCREASES = {
    "feature_bins": ("flight_delay_feature_value_total", ("model_version", "feature", "bin")),
    "feedback_bins": ("flight_delay_feedback_score_bin_total", ("model_version", "variant", "late", "bin")),
}


class MetricsSource(dg.ConfigurableResource, ABC):
    """The service's monitoring counters over a window."""

    @abstractmethod
    def window(self) -> CounterWindow: ...

    @abstractmethod
    def describe(self) -> str: ...

    @abstractmethod
    def disjoint_windows(self) -> bool:
        """True when successive windows never overlap (each read: since the previous one), so a
        reader may add them up; False when each is a sliding window of its own."""


class ServiceMetrics(MetricsSource):
    """Scrapes the services' ``/metrics`` and returns what changed since the previous read (the
    first read: since the services started). The last read is kept in ``state_path``."""

    urls: list[str] = Field(default=["http://127.0.0.1:3000"], description="Base URLs of the service instances.")
    state_path: str = Field(description="JSON file with the counters of the previous read.")

    def window(self) -> CounterWindow:
        scrape: Scrape = {}
        for url in self.urls:
            with urllib.request.urlopen(f"{url.rstrip('/')}/metrics", timeout=10) as response:
                for key, value in parse_metrics(response.read().decode()).items():
                    scrape[key] = scrape.get(key, 0.0) + value
        now = CounterWindow.from_scrape(scrape)
        state = Path(self.state_path)
        previous = CounterWindow.from_json(json.loads(state.read_text())) if state.exists() else None
        state.parent.mkdir(parents=True, exist_ok=True)
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(now.to_json()))
        tmp.replace(state)
        return now.minus(previous) if previous else now

    def describe(self) -> str:
        return f"/metrics of {', '.join(self.urls)} since the previous read"

    def disjoint_windows(self) -> bool:
        return True


class PrometheusMetrics(MetricsSource):
    """Increases over ``window`` from Prometheus's HTTP API, summed over instances."""

    url: str = Field(description="Base URL of Prometheus, e.g. http://127.0.0.1:19090.")
    range: str = Field(default="1h", description="The window, as a PromQL duration.")

    def _query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        query = urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(f"{self.url.rstrip('/')}/api/v1/query?{query}", timeout=30) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus at {self.url} answered {body.get('error', body)} to {expr!r}")
        return [(s["metric"], float(s["value"][1])) for s in body["data"]["result"]]

    def _increase(self, metric: str, labels: tuple[str, ...]) -> list[tuple[dict[str, str], float]]:
        return self._query(f"sum by ({', '.join(labels)}) (increase({metric}[{self.range}]))")

    def window(self) -> CounterWindow:
        window = CounterWindow()
        for attr, (metric, labels) in _INCREASES.items():
            target = getattr(window, attr)
            for m, value in self._increase(metric, labels):
                target[tuple(m[label] for label in labels)] = value
        sums: dict[tuple[str, str], dict[str, float]] = {}
        for name, metric in (
            ("log_loss", "flight_delay_feedback_log_loss_sum"),
            ("brier", "flight_delay_feedback_brier_sum"),
            ("probability", "flight_delay_feedback_probability_sum"),
        ):
            for m, value in self._increase(metric, ("model_version", "variant")):
                sums.setdefault((m["model_version"], m["variant"]), {})[name] = value
        for m, value in self._query(
            f'sum by (model_version, variant) (increase(flight_delay_feedback_total{{outcome="hit"}}[{self.range}]))'
        ):
            sums.setdefault((m["model_version"], m["variant"]), {})["hits"] = value
        window.feedback_sums = sums
        window.serving = {
            (m["model_version"], m["variant"])
            for m, v in self._query("max by (model_version, variant) (flight_delay_model_serving)")
            if v >= 1
        }
        return window

    def describe(self) -> str:
        return f"Prometheus at {self.url}, increases over {self.range}"

    def disjoint_windows(self) -> bool:
        return False
