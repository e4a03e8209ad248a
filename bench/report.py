"""What the benchmark prints: a row per phase, the server's own stage timings, the targets and
the ratios to the floor."""

from __future__ import annotations

import math
from typing import Any

from bench.harness import Scrape, histogram_delta
from bench.phases import Phase

HEADER = (
    f"{'phase':<34}{'offered':>9}{'done/s':>9}{'ok':>8}{'non2xx':>7}{'err':>5}{'lost':>6}"
    f"{'p50':>8}{'p90':>8}{'p99':>8}{'p99.9':>8}{'max':>8}{'lag99':>7}{'srv cpu':>8}{'gen cpu':>8}"
    f"{'other':>6}  note"
)


def fmt_ms(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.2f}" if x < 100 else f"{x:.0f}"


def finite(x: Any) -> Any:
    """``x``, or None for a NaN or infinite float (JSON has neither)."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def print_row(p: Phase) -> None:
    r = p.result
    non2xx = sum(n for s, n in r.statuses.items() if not 200 <= s < 300)
    mx = max(r.latencies) * 1e3 if r.ok else math.nan
    offered = f"{r.rate:g}" if r.rate is not None else f"closed{r.connections}"
    line = (
        f"{r.name:<34}{offered:>9}{r.throughput:>9.1f}{r.ok:>8}{non2xx:>7}{sum(r.errors.values()):>5}"
        f"{r.unanswered:>6}{fmt_ms(r.percentile(50)):>8}{fmt_ms(r.percentile(90)):>8}"
        f"{fmt_ms(r.percentile(99)):>8}{fmt_ms(r.percentile(99.9)):>8}{fmt_ms(mx):>8}"
        f"{fmt_ms(r.lag_ms(99)):>7}{p.server_cpu:>8.2f}{p.gen_cpu:>8.2f}{p.other_cpu:>6.2f}  {p.note}"
    )
    if r.aborted:
        line += f" [{r.aborted}]"
    if r.dropped:
        line += f" [{r.dropped} requests dropped unsent after waiting too long: the server could not keep up]"
    print(line, flush=True)
    for sample in r.error_samples:
        print(f"    error sample: {sample}", flush=True)


def print_stage_table(title: str, before: Scrape, after: Scrape, endpoint: str = "predict") -> dict[str, Any]:
    """Server-side view of a phase from /metrics deltas: where a request's time goes."""
    stage = "flight_delay_stage_latency_seconds"
    rows = {
        "request (in API method)": histogram_delta(
            before, after, "flight_delay_request_latency_seconds", endpoint=endpoint
        ),
        "  feature_lookup (online store)": histogram_delta(
            before, after, stage, stage="feature_lookup", endpoint=endpoint
        ),
        "  inference (model)": histogram_delta(before, after, stage, stage="inference", endpoint=endpoint),
        "bentoml request (whole ASGI app)": histogram_delta(
            before, after, "bentoml_service_request_duration_seconds", endpoint=f"/{endpoint}"
        ),
    }
    print(f"\n{title}  (from /metrics; percentiles are histogram bucket bounds)")
    print(f"  {'':<36}{'count':>8}{'mean ms':>10}{'p50<=':>8}{'p99<=':>8}")
    out = {}
    for name, h in rows.items():
        if h is None:
            print(f"  {name:<36}{'-':>8}")
            continue
        print(
            f"  {name:<36}{h['count']:>8.0f}{h['mean_ms']:>10.3f}{fmt_ms(h['p50_le_ms']):>8}{fmt_ms(h['p99_le_ms']):>8}"
        )
        out[name.strip()] = {k: finite(v) for k, v in h.items()}
    return out


def print_targets(summary: dict[str, Any], targets: dict[str, tuple[str, float]]) -> dict[str, bool | None]:
    """Each target met or missed (and by how much); returns ``{figure: met}``."""
    met: dict[str, bool | None] = {}
    print("\ntargets (a ratio to the floor measured in this run is the figure to compare across machines):")
    for key, (op, bound) in targets.items():
        value = summary.get(key)
        if value is None:
            met[key] = None
            print(f"  {key:<34} not measured")
            continue
        ok = met[key] = value <= bound if op == "<=" else value >= bound
        gap = (
            ""
            if ok
            else (
                f"  (missed by {value - bound:+.2f}, {value / bound:.2f}x the bound)"
                if op == "<="
                else f"  (missed: {value / bound:.0%} of the bound)"
            )
        )
        print(f"  {key:<34} {value:>10.2f}  {op} {bound:g}  {'met' if ok else 'MISSED'}{gap}")
    return met


def print_floor_comparison(rows: list[tuple[str, float | None, float | None, float | None]]) -> None:
    """``(figure, service, floor, ratio)`` rows beside each other."""
    print(f"\n{'service vs floor (same run, same workers)':<44}{'service':>12}{'floor':>12}{'ratio':>10}")
    for name, service, floor, ratio in rows:
        print(f"  {name:<42}{fmt_ms(service):>12}{fmt_ms(floor):>12}{fmt_ms(ratio):>10}")
