"""The replay's report (``bench.replay``): the policies scored month by month on the feature rows
the service logged, the loop's decisions on a data-time timeline, a Markdown page, a PNG chart and
one JSON object.

- ``loop``: the probability the service answered (its champion of the moment);
- ``static``: the replay's first champion on the same rows;
- ``monthly``: for each month, the model the pipeline trained on its first day (the month the
  replay starts in: the static model).

Only flights with an outcome count (a cancelled flight has none); a policy's figures for a month
are ROC AUC and log loss over that month's labelled predictions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flight_delay.evaluation import classification_metrics
from flight_delay.flights import LOCAL_TZ
from flight_delay.forward import ServingModel
from flight_delay.log_reading import read_log
from flight_delay.model import MODEL_NAME
from flight_delay.paths import DataLayout
from flight_delay.registry import ModelRegistry

POLICIES = ("static", "monthly", "loop")
TAG_PREFIX = "flight_delay/"
FIRST_SCORED_MONTH = "2013-04"  # the acceptance's April – December


@dataclass
class Timeline:
    """Registry events and pipeline runs, each stamped with the data time at which the replay's
    clock first saw it."""

    events: list[dict[str, Any]] = field(default_factory=list)
    runs: dict[str, pd.Timestamp] = field(default_factory=dict)  # run id -> data time first seen
    _seen: int | None = None

    def observe(self, registry: ModelRegistry, instance: Any, at: pd.Timestamp) -> None:
        history = registry.history(MODEL_NAME)
        if self._seen is None:  # what was there before the replay is not on its timeline
            self._seen = len(history)
        for event in history[self._seen :]:
            self.events.append(
                {"data_time": at, "action": event.action, "tag": event.tag, "reason": event.reason, **_run(event)}
            )
        self._seen = len(history)
        for run in instance.get_runs(limit=20):
            self.runs.setdefault(run.run_id, at)


def _run(event: Any) -> dict[str, Any]:
    run_id = (event.details or {}).get("dagster_run_id")
    return {"run_id": run_id} if run_id else {}


def _month(times: pd.Series) -> pd.Series:
    return times.dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m")


def score_policies(
    layout: DataLayout, registry: ModelRegistry, static: str, monthly_home: Path, monthly: dict[str, str]
) -> pd.DataFrame:
    """Per month and policy: ROC AUC, log loss, labelled predictions."""
    log = read_log(layout.prediction_log)
    log = log[log["late"].notna() & (log["variant"] == "champion")].copy()
    month = _month(log["prediction_time"]).to_numpy()  # not a column: "month" is a model input
    y = log["late"].astype("int64").to_numpy()
    scores = {"loop": log["probability"].to_numpy(dtype="float64")}
    static_model = ServingModel(registry.model_dir(static))
    scores["static"] = static_model.predict(log)
    by_month = np.array(scores["static"], copy=True)  # months without a monthly model: the static one
    monthly_registry = ModelRegistry(monthly_home)
    for first_day, tag in monthly.items():
        rows = month == first_day[:7]
        if rows.any():
            by_month[rows] = ServingModel(monthly_registry.model_dir(tag)).predict(log[rows])
    scores["monthly"] = by_month
    out = []
    for name in sorted(set(month)):
        rows = month == name
        for policy in POLICIES:
            m = classification_metrics(y[rows], scores[policy][rows])
            out.append({"month": name, "policy": policy, "auc": m["auc"], "log_loss": m["log_loss"], "n": m["rows"]})
    return pd.DataFrame(out)


def _retrainings(runs: list[Any], timeline: Timeline) -> list[dict[str, Any]]:
    out = []
    for run in runs:
        if run.job_name != "retrain_job":
            continue
        tags = run.tags
        drift = {
            k.removeprefix(f"{TAG_PREFIX}drift."): v for k, v in tags.items() if k.startswith(f"{TAG_PREFIX}drift.")
        }
        out.append(
            {
                "run_id": run.run_id,
                "status": run.status.value,
                "data_time": timeline.runs.get(run.run_id),
                "trigger_model": tags.get(f"{TAG_PREFIX}model_version"),
                "drifted_features": int(tags.get(f"{TAG_PREFIX}drifted_features", 0)),
                "drift": drift,
            }
        )
    return sorted(out, key=lambda r: (r["data_time"] is None, r["data_time"]))


def write_report(
    *,
    layout: DataLayout,
    registry: ModelRegistry,
    static: str,
    monthly: Any,  # bench.replay.MonthlyModels
    runs: list[Any],
    timeline: Timeline,
    traffic: Any,
    future_values: float,
    server_errors: float,
    start: str,
    end: str,
    loop_config: dict[str, Any],
    seconds: float,
) -> dict[str, Any]:
    table = score_policies(layout, registry, static, monthly.home, monthly.models)
    retrainings = _retrainings(runs, timeline)
    events = timeline.events
    counted = table[table["month"] >= FIRST_SCORED_MONTH]
    summary: dict[str, Any] = {}
    for policy in POLICIES:
        rows = counted[counted["policy"] == policy]
        summary[policy] = {
            "mean_monthly_auc": round(float(rows["auc"].mean()), 4),
            "mean_monthly_log_loss": round(float(rows["log_loss"].mean()), 4),
            "retrainings": {"static": 0, "monthly": len(monthly.models), "loop": len(retrainings)}[policy],
        }
    summary |= {
        "promotions": sum(e["action"] == "promote" for e in events),
        "rollbacks": sum(e["action"] == "rollback" for e in events),
        "retirements": sum(e["action"] == "retire" for e in events),
        "rejected_by_the_offline_gate": sum(e["action"] == "reject" for e in events),
        "failed_requests": traffic.failed,
        "future_values_served": future_values,
        "predictions": traffic.predictions,
        "outcomes": traffic.feedback,
        "seconds": round(seconds),
        "monthly_models_seconds": round(monthly.seconds),  # before the replay: trained, or reused
        "monthly_models_trained": monthly.trained,
    }
    chart = layout.root / "replay.png"
    _chart(table, retrainings, events, chart)
    lines = _markdown(table, retrainings, events, summary, traffic, server_errors, start, end, loop_config, chart)
    page = layout.root / "replay.md"
    page.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {page}")
    return summary


def _markdown(
    table: pd.DataFrame,
    retrainings: list[dict[str, Any]],
    events: list[dict[str, Any]],
    summary: dict[str, Any],
    traffic: Any,
    server_errors: float,
    start: str,
    end: str,
    loop_config: dict[str, Any],
    chart: Path,
) -> list[str]:
    wide = table.pivot(index="month", columns="policy", values=["auc", "log_loss"])
    n = table[table["policy"] == "loop"].set_index("month")["n"]
    lines = [
        f"# Replay of {start} to {end}",
        "",
        f"{traffic.predictions} predictions and {traffic.feedback} outcomes over HTTP, {traffic.failed} failed "
        f"({server_errors:.0f} server errors counted by the service); feature values stamped after their "
        f"prediction time: {summary['future_values_served']:.0f}; the clock waited {traffic.paused_seconds:.0f} s "
        f"for pipeline runs; {summary['seconds']} s in all. The monthly policy's models were made before it: "
        f"{summary['monthly_models_trained']} trained, the others reused from an earlier replay of the same "
        f"data and window, in {summary['monthly_models_seconds']} s.",
        "",
        f"Loop configuration: `{json.dumps(loop_config)}`",
        "",
        f"![monthly AUC and log loss]({chart.name})",
        "",
        "| month | labelled | AUC static | AUC monthly | AUC loop | log loss static | log loss monthly "
        "| log loss loop |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for month in wide.index:
        auc, loss = wide.loc[month, "auc"], wide.loc[month, "log_loss"]
        lines.append(
            f"| {month} | {int(n[month])} | {auc['static']:.4f} | {auc['monthly']:.4f} | {auc['loop']:.4f} | "
            f"{loss['static']:.4f} | {loss['monthly']:.4f} | {loss['loop']:.4f} |"
        )
    lines += ["", f"Mean over {FIRST_SCORED_MONTH} to {end[:7]}:", ""]
    lines += ["| policy | mean monthly AUC | mean monthly log loss | retrainings |", "| --- | ---: | ---: | ---: |"]
    for policy in POLICIES:
        s = summary[policy]
        lines.append(
            f"| {policy} | {s['mean_monthly_auc']:.4f} | {s['mean_monthly_log_loss']:.4f} | {s['retrainings']} |"
        )
    lines += ["", "## The loop's retrainings (drift sensor) and what drifted", ""]
    lines += ["| data time | run | status | drifted features | top figures |", "| --- | --- | --- | ---: | --- |"]
    for r in retrainings:
        figures = "; ".join(f"{f} {v}" for f, v in list(r["drift"].items())[:5])
        when = r["data_time"].tz_convert(LOCAL_TZ).strftime("%Y-%m-%d %H:%M") if r["data_time"] is not None else "?"
        lines.append(f"| {when} | {r['run_id'][:8]} | {r['status']} | {r['drifted_features']} | {figures} |")
    lines += [
        "",
        "## Decisions on the champion",
        "",
        "| data time | action | model | reason |",
        "| --- | --- | --- | --- |",
    ]
    for e in events:
        when = e["data_time"].tz_convert(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")
        lines.append(f"| {when} | {e['action']} | {e['tag']} | {e['reason'][:160]} |")
    if traffic.failures:
        lines += ["", "Failed requests (first ones):", "", *[f"- {f}" for f in traffic.failures]]
    return lines


def _chart(table: pd.DataFrame, retrainings: list[dict[str, Any]], events: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    months = sorted(table["month"].unique())
    x = {m: pd.Timestamp(f"{m}-15") for m in months}
    for policy, style in zip(POLICIES, ("o--", "s-.", "D-")):
        rows = table[table["policy"] == policy].set_index("month")
        for ax, figure in zip(axes, ("auc", "log_loss")):
            ax.plot([x[m] for m in months], [rows.loc[m, figure] for m in months], style, label=policy)
    marks = [(r["data_time"], "tab:orange", "retraining") for r in retrainings if r["data_time"] is not None]
    colors = {"promote": "tab:green", "rollback": "tab:red", "retire": "tab:gray", "challenge": "tab:blue"}
    marks += [(e["data_time"], colors[e["action"]], e["action"]) for e in events if e["action"] in colors]
    labelled: set[str] = set()
    for when, color, label in marks:
        day = when.tz_convert(LOCAL_TZ).tz_localize(None)
        for ax in axes:
            ax.axvline(day, color=color, alpha=0.5, lw=1, label=None if label in labelled else label)
            labelled.add(label)
    axes[0].set_ylabel("ROC AUC (month)")
    axes[1].set_ylabel("log loss (month)")
    axes[0].legend(loc="lower left", fontsize=8, ncol=4)
    axes[0].set_title("Replay of 2013: static, monthly and drift-triggered loop")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
