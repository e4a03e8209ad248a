"""Tiny real deployments for the serving tests: the Dagster graph on a few real days, copies of
it, a second model, and real flights as requests."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flight_delay.feature_tables import prepare_departures
from flight_delay.flights import UNKNOWN_TAIL
from flight_delay.model import MODEL_NAME
from flight_delay.paths import DataLayout
from flight_delay.registry import ModelRegistry

DAYS = ("2013-01-01", "2013-01-06")
SERVE_DAY = "2013-01-06"  # the flights the tests score: the last day the online store knows
# The online store of a serving deployment is brought to this instant of SERVE_DAY (the asset's
# `as_of`), and the tests predict that day's later flights at this instant: every value the store
# holds is known by then, as it would be live (a value stamped after a prediction time is served
# as missing).
AS_OF = pd.Timestamp(f"{SERVE_DAY}T10:00", tz="America/New_York")
ONLINE_AS_OF = {"ops": {"online_features": {"config": {"as_of": AS_OF.isoformat()}}}}


@dataclass(frozen=True)
class Deployment:
    data_dir: Path
    champion: str
    online_store: str | None = None  # redis://... or None for the SQLite online store

    @property
    def layout(self) -> DataLayout:
        return DataLayout(self.data_dir)

    @property
    def prediction_log(self) -> Path:
        return self.layout.prediction_log

    def registry(self) -> ModelRegistry:
        return ModelRegistry.of(self.layout)


def run_ok(
    graph: Any, selection: list[str], days: tuple[str, str] | None = None, run_config: dict[str, Any] | None = None
) -> Any:
    result = graph.run(selection, days, run_config=run_config)
    if not result.success:
        failures = [e.message for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        pytest.fail(f"materializing {selection} failed: {failures}")
    return result


def clone_deployment(source: Deployment, target: Path) -> Deployment:
    """A copy of a SQLite-backed deployment (registry, feature state, online store, lake), without
    its prediction log: servers of the copy can change the registry and log independently."""
    shutil.copytree(source.data_dir, target, ignore=shutil.ignore_patterns("prediction_log"))
    return Deployment(target, source.champion, source.online_store)


def train_candidate(deployment: Deployment, source_dir: Path) -> str:
    """Register a second, smaller model (one epoch) without promoting it; returns its tag."""
    import dagster as dg

    from tests.support.graph import Graph

    registry = deployment.registry()
    before = set(registry.list(MODEL_NAME))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("FLIGHT_DELAY_ONLINE_STORE", raising=False)
        graph = Graph(deployment.data_dir, source_dir, dg.DagsterInstance.ephemeral())
        run_ok(
            graph,
            ["delay_model"],
            run_config={"ops": {"delay_model": {"config": {"max_epochs": 1, "hidden_units": [8], "seed": 7}}}},
        )
    (tag,) = set(registry.list(MODEL_NAME)) - before
    assert registry.champion(MODEL_NAME) == deployment.champion
    return tag


@dataclass(frozen=True)
class FlightRequest:
    body: dict[str, Any]  # the "flight" object of a request
    key: str  # the flight key the pipeline gives it (departures.flight_id)


def flight_requests(raw_flights: pd.DataFrame, at: pd.Timestamp = AS_OF) -> list[FlightRequest]:
    """Each flight of ``raw_flights`` (source rows) scheduled after ``at``, as a request predicted at
    ``at``, one per flight key; the expected key is the pipeline's ``flight_id``."""
    departures = prepare_departures(raw_flights)
    departures = departures[departures["sched_dep_ts"] > at]
    out: dict[str, FlightRequest] = {}
    for row in departures.itertuples(index=False):
        body = {
            "carrier": row.carrier,
            "flight": int(row.flight),
            "tailnum": None if row.tailnum == UNKNOWN_TAIL else row.tailnum,
            "origin": row.origin,
            "dest": row.dest,
            "scheduled_departure": row.sched_dep_ts.isoformat(),
            "distance": float(row.distance),
            "prediction_time": at.isoformat(),
        }
        out.setdefault(row.flight_id, FlightRequest(body, row.flight_id))
    return list(out.values())
