"""A small learnable data set for model tests: the delay depends on a backlog and the carrier."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flight_delay.model import FeatureSpec

SPEC = FeatureSpec(numeric=("backlog", "noise"), categorical=("carrier",))


def synthetic_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    backlog = rng.exponential(3.0, n)
    carrier = rng.choice(["AA", "UA", "B6"], n)
    logit = 0.8 * (backlog - 3) + np.where(carrier == "B6", 1.0, 0.0)
    frame = pd.DataFrame(
        {
            "backlog": backlog,
            "noise": rng.normal(size=n),
            "carrier": carrier,
            "event_timestamp": pd.date_range("2013-01-01", periods=n, freq="min", tz="UTC"),
        }
    )
    frame["is_late"] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    frame.loc[frame.sample(frac=0.05, random_state=seed).index, "noise"] = np.nan
    return frame
