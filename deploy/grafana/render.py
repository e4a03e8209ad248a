"""The dashboards' main panels drawn with matplotlib from a Prometheus, for the README's picture:
each panel's own queries (from the committed JSON) over a time range (``/api/v1/query_range``),
every variable at "All", Grafana's built-in intervals at ``--rate-window``.

    python -m deploy.grafana.render --prometheus http://127.0.0.1:19090 --minutes 10 --out docs/monitoring.png
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deploy.grafana.dashboards import DASHBOARD_DIR, PSI_ALERT, PSI_WARN

# (dashboard, panel title, y-axis label)
PANELS = (
    ("service", "Requests per second by endpoint", "requests / s"),
    ("service", "Latency p50 / p95 / p99 by endpoint", "seconds"),
    ("service", "Online cache hit rate by view", "share from the cache"),
    ("model", "Drift: PSI per feature (1h)", "PSI"),
    ("model", "Live log loss vs offline", "log loss"),
    ("model", "Models serving", "serving (1) or not (0)"),
)
MAX_SERIES = 8
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass
class Series:
    label: str
    times: list[float]
    values: list[float]


def panel_queries(dashboard: str, title: str) -> list[dict[str, Any]]:
    board = json.loads((DASHBOARD_DIR / f"{dashboard}.json").read_text())
    for p in board["panels"]:
        if p["title"] == title:
            return p["targets"]
    raise KeyError(f"{dashboard}.json has no panel titled {title!r}")


def substitute(expr: str, rate_window: str) -> str:
    """Every variable at its "All" value (``.*``), the built-in intervals at ``rate_window``."""
    for built_in in ("$__rate_interval", "$__interval", "$__range"):
        expr = expr.replace(built_in, rate_window)
    expr = re.sub(r"\$\{?\w+\}?", ".*", expr)
    return expr


def query_range(prometheus: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"query": expr, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus}/api/v1/query_range?{params}", timeout=60) as response:
        body = json.loads(response.read())
    if body.get("status") != "success":
        raise RuntimeError(f"query_range {expr!r} failed: {body}")
    return body["data"]["result"]


def panel_series(
    prometheus: str, targets: list[dict[str, Any]], start: float, end: float, step: float, rate_window: str
) -> list[Series]:
    out = []
    for target in targets:
        for s in query_range(prometheus, substitute(target["expr"], rate_window), start, end, step):
            label = _LEGEND.sub(lambda m, labels=s["metric"]: labels.get(m.group(1), ""), target["legendFormat"])
            points = [(float(t), float(v)) for t, v in s["values"] if math.isfinite(float(v))]
            if points:
                out.append(Series(" ".join(label.split()), [t for t, _ in points], [v for _, v in points]))
    return out


def short(label: str) -> str:
    """Model versions are long (``flight_delay:<hash>``): their first characters suffice."""
    return re.sub(r"flight_delay:(\w{6})\w*", r"\1", label)


def draw(prometheus: str, out: Path, minutes: float, step: float, rate_window: str, end: float | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from datetime import datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    end = end if end is not None else time.time()
    start = end - minutes * 60
    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for ax, (dashboard, title, ylabel) in zip(axes.flat, PANELS):
        series = panel_series(prometheus, panel_queries(dashboard, title), start, end, step, rate_window)
        if not series:
            raise RuntimeError(f"{title!r} has no data between {start:.0f} and {end:.0f}: drive some traffic first")
        for s in sorted(series, key=lambda s: -max(s.values))[:MAX_SERIES]:
            dashed = "offline" in s.label or s.label.endswith("TTL")
            ax.plot(
                [datetime.fromtimestamp(t) for t in s.times],
                s.values,
                "--" if dashed else "-",
                lw=1.4,
                label=short(s.label),
            )
        if title.startswith("Drift: PSI"):
            for bound, colour in ((PSI_WARN, "orange"), (PSI_ALERT, "red")):
                ax.axhline(bound, color=colour, ls=":", lw=1)
        ax.set_title(f"{title}  [{dashboard}]", fontsize=10)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.6)
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M"))
    fig.suptitle("Flight delay service and models: the Grafana dashboards' main panels", fontsize=12)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prometheus", default="http://127.0.0.1:19090", help="the Prometheus to read")
    parser.add_argument("--minutes", type=float, default=10.0, help="the range drawn, ending now")
    parser.add_argument("--step", type=float, default=5.0, help="seconds between points")
    parser.add_argument("--rate-window", default="1m", help="what $__rate_interval and the like become")
    parser.add_argument("--out", type=Path, default=Path("docs/monitoring.png"))
    args = parser.parse_args(argv)
    path = draw(args.prometheus, args.out, args.minutes, args.step, args.rate_window)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
