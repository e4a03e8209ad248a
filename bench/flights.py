"""Request bodies for the benchmark: real 2013 departures, predicted as the model was trained."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from bench import loadgen as lg
from bench.harness import HOST
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure

HORIZON = pd.Timedelta(minutes=60)  # the training default (TrainingWindowConfig.horizon_minutes)


def sample_flights(month: int = 3, n: int = 2000, unknown: int = 40, seed: int = 2013) -> list[dict]:
    """A fixed sample of real departures of ``month`` 2013 (tail numbers and routes the feature
    store knows), plus ``unknown`` of them with made-up tail numbers it has never seen. Each is
    predicted ``HORIZON`` before its scheduled departure, as the model was trained: at today's date
    every 2013 feature would be past its view's TTL and served as missing."""
    flights = data.read_table("flights")
    local = flights["time_hour"].dt.tz_convert(LOCAL_TZ)
    chosen = flights[(local.dt.year == 2013) & (local.dt.month == month) & flights["tailnum"].notna()]
    picked = chosen.sample(n=n, random_state=seed)
    scheduled = scheduled_departure(picked["time_hour"], picked["minute"]).dt.tz_convert(LOCAL_TZ)
    out = [
        {
            "carrier": r.carrier,
            "flight": int(r.flight),
            "tailnum": r.tailnum,
            "origin": r.origin,
            "dest": r.dest,
            "scheduled_departure": s.isoformat(),
            "distance": float(r.distance),
            "prediction_time": (s - HORIZON).isoformat(),
        }
        for r, s in zip(picked.itertuples(index=False), scheduled)
    ]
    rng = np.random.default_rng(seed)
    for k, i in enumerate(rng.choice(len(out), size=unknown, replace=False)):
        out.append({**out[int(i)], "tailnum": f"ZZ{k:04d}"})
    return [out[int(i)] for i in rng.permutation(len(out))]


def predict_requests(port: int, flights: list[dict]) -> list[bytes]:
    return [lg.encode_post(HOST, port, "/predict", json.dumps({"flight": f}).encode()) for f in flights]


def batch_requests(port: int, flights: list[dict], size: int) -> list[bytes]:
    batches = [flights[i : i + size] for i in range(0, len(flights) - size + 1, size)]
    return [lg.encode_post(HOST, port, "/predict_batch", json.dumps({"flights": b}).encode()) for b in batches]
