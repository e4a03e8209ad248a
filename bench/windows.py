"""Which training window a retraining should use: ``python -m bench.windows``.

Offline, on the whole year's training set that ``make evaluate`` builds (``data/full-year``): a
model of January-February (the replay's static policy) against a model retrained on the first of
each month, April to December, with each window of ``--windows`` (days of training before a
hold-out of each of ``--hold-outs`` days that ends the day before; ``all`` for everything since
January 1), each scored on its month's flights. The same network and hyper-parameters as the
pipeline's ``delay_model``; the dates are those the loop's window arithmetic gives
(``flight_delay.loop.RetrainingWindow``). About 3 minutes per window and hold-out on two cores;
prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from flight_delay import model as model_lib
from flight_delay.evaluation import classification_metrics
from flight_delay.flights import LOCAL_TZ
from flight_delay.loop import RetrainingWindow
from flight_delay.paths import PROJECT_ROOT, DataLayout
from flight_delay.training import LABEL

MONTHS = range(4, 13)
ALL_DAYS = 100_000  # ``all``: a window longer than the data, cut at their first day


def _day(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz=LOCAL_TZ)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=PROJECT_ROOT / "data" / "full-year")
    parser.add_argument("--windows", default="90,180,all", help="comma-separated days of training, or all")
    parser.add_argument("--hold-outs", default="14", help="comma-separated days of evaluation before the 1st")
    args = parser.parse_args(argv)
    path = DataLayout.resolve(args.data_dir).lake / "training_set"
    if not path.exists():
        raise SystemExit(f"error: no training set under {path}: run `make evaluate` first")
    rows = pd.read_parquet(path)
    local = rows["sched_dep_ts"].dt.tz_convert(LOCAL_TZ)
    month = local.dt.month
    params = model_lib.TrainingConfig()
    started = time.monotonic()

    def fit(lo: pd.Timestamp, hi: pd.Timestamp) -> model_lib.TrainedModel:
        return model_lib.train(rows[(local >= lo) & (local < hi)], LABEL, model_lib.FLIGHT_DELAY_FEATURES, params)

    def score(model: model_lib.TrainedModel, m: int) -> tuple[float, float]:
        chosen = rows[month == m]
        metrics = classification_metrics(chosen[LABEL].to_numpy(), model_lib.predict(model, chosen))
        return metrics["auc"], metrics["log_loss"]

    static = fit(_day("2013-01-01"), _day("2013-03-01"))
    results = {"static (January-February)": [score(static, m) for m in MONTHS]}
    for window in args.windows.split(","):
        for hold_out in (int(h) for h in args.hold_outs.split(",")):
            # The loop's own window arithmetic, as a drift trigger on the first of the month asks for it.
            days = ALL_DAYS if window == "all" else int(window)
            dates = [RetrainingWindow(days, hold_out).dates(_day(f"2013-{m:02d}-01")) for m in MONTHS]
            spans = [(_day(d["train_start"]), _day(d["train_end"]) + pd.Timedelta(days=1)) for d in dates]
            scores = [score(fit(lo, hi), m) for (lo, hi), m in zip(spans, MONTHS)]
            trained_on = f"{window} days" if window != "all" else "all since January 1"
            results[f"monthly, {trained_on}, {hold_out}-day hold-out"] = scores
            print(f"{window}, hold-out {hold_out}: done after {time.monotonic() - started:.0f} s", flush=True)

    print("\n| month | " + " | ".join(results) + " |")
    print("| --- |" + " ---: |" * len(results))
    for i, m in enumerate(MONTHS):
        print(f"| 2013-{m:02d} | " + " | ".join(f"{s[i][0]:.4f} / {s[i][1]:.4f}" for s in results.values()) + " |")
    means = {k: (float(np.mean([a for a, _ in s])), float(np.mean([b for _, b in s]))) for k, s in results.items()}
    print("| mean AUC / log loss | " + " | ".join(f"**{a:.4f}** / {b:.4f}" for a, b in means.values()) + " |")
    print(
        json.dumps(
            {k: {"mean_monthly_auc": round(a, 4), "mean_monthly_log_loss": round(b, 4)} for k, (a, b) in means.items()}
        )
    )


if __name__ == "__main__":
    main()
