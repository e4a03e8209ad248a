"""The service's online-feature reader against Feast itself, on both online stores.

The service reads each view's rows through Feast's provider (``online_read``) instead of the
generic ``get_online_features``, and keeps rows for ``max_staleness`` seconds: these tests pin
that it returns exactly what Feast returns, expires values past a view's TTL like the training
join, flags unknown entities, and serves a cached row no longer than it was told to.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from features import FLIGHT_DELAY_SERVICE
from features.store import build_store
from flight_delay import data
from flight_delay.flights import entity_keys, tail_key
from flight_delay.model import FLIGHT_DELAY_FEATURES as SPEC
from flight_delay.paths import PROJECT_ROOT
from serving.api_models import Flight
from serving.online import FeatureRows, OnlineFeatures, model_inputs
from tests.support.deployments import Deployment, FlightRequest, clone_deployment

REQUEST_FEATURES = {
    "dep_hour",
    "month",
    "days_to_holiday",
    "distance",
    "hours_since_last_dep",
    "carrier",
    "origin",
    "dest",
    "weekday",
}


@pytest.fixture(params=["sqlite", "redis"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return request.getfixturevalue("serving_deployment" if request.param == "sqlite" else "redis_deployment")


def store_of(deployment: Deployment) -> Any:
    return build_store(PROJECT_ROOT, deployment.data_dir / "feast", deployment.online_store)


def entity_row(f: Flight) -> dict[str, str]:
    return entity_keys(f.origin, f.carrier, f.tailnum, f.dest)


def lookup(online: OnlineFeatures, flights: list[Flight], now: datetime) -> tuple[FeatureRows, dict[str, list[Any]]]:
    """What the service reads for ``flights`` and the model inputs it builds from it."""
    rows = online.read(flights, now)
    return rows, model_inputs(flights, rows, SPEC.numeric, SPEC.categorical)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_reader_returns_what_feast_returns(deployment: Deployment, real_requests: list[FlightRequest]):
    store = store_of(deployment)
    flights = [Flight(**r.body) for r in real_requests[:150]]
    flights.append(Flight(**{**real_requests[0].body, "tailnum": "N0TREAL"}))
    flights.append(Flight(**{**real_requests[0].body, "carrier": "ZZ", "tailnum": None}))
    online = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, max_staleness=0)
    got, inputs = lookup(online, flights, datetime.now(UTC))

    service = store.get_feature_service(FLIGHT_DELAY_SERVICE)
    want = store.get_online_features(features=service, entity_rows=[entity_row(f) for f in flights]).to_dict(
        include_event_timestamps=True
    )
    # Feast returns what the store holds; the reader serves it only while it is valid at the
    # flight's prediction time: no older than its view's TTL (and not stamped after it).
    ttl = {v.name: v.ttl.total_seconds() for v in store.list_feature_views()}
    view_of = {f.name: p.name for p in service.feature_view_projections for f in p.features}
    expired = 0
    compared = 0
    for column in SPEC.columns:
        if column in REQUEST_FEATURES:
            continue
        for i, value in enumerate(inputs[column]):
            expected = want[column][i]
            stamp = want[f"{column}__ts"][i]
            age = flights[i].prediction_time.timestamp() - float(stamp) if stamp else None
            assert age is None or age >= 0, "the store holds nothing newer than the prediction time here"
            if age is not None and ttl[view_of[column]] and age > ttl[view_of[column]]:
                expected, expired = None, expired + 1
            if expected is None:
                expected = "" if column in SPEC.categorical else math.nan
            elif column in SPEC.numeric:
                expected = float(expected)
            assert same(value, expected), (column, i, value, expected)
            compared += 1
    assert compared == len(flights) * (len(SPEC.columns) - len(REQUEST_FEATURES))
    assert expired < compared / 10, "most values are valid at these times"
    # Ages: prediction time minus the row's event time, per view.
    first = flights[0]
    for view, projection in ((p.name, p) for p in service.feature_view_projections):
        stamp = want[f"{projection.features[0].name}__ts"][0]
        assert got.ages_of(0)[view] == pytest.approx(first.prediction_time.timestamp() - float(stamp), abs=1e-3)
    assert got.unknown[-2] == ["tailnum"]
    assert got.unknown[-1] == ["carrier", "tailnum"]
    # The airports, carriers and routes of real flights are known; an aircraft is not when it has no
    # FAA profile and has not flown in the week before the store's instant.
    assert all(u in ([], ["tailnum"]) for u in got.unknown[:-2]), got.unknown
    assert sum(u == [] for u in got.unknown[:-2]) > 0.9 * (len(flights) - 2)
    # max_staleness=0: every distinct entity is read from the store (repeats within a call are not).
    assert got.reads[("origin_hourly_weather", "store")] == len({f.origin for f in flights})
    assert got.reads[("aircraft_profile", "store")] == len({tail_key(f.tailnum) for f in flights})
    assert sum(got.reads.values()) == len(flights) * len(online.views)


def test_values_past_a_views_ttl_are_served_as_missing(deployment: Deployment, real_requests: list[FlightRequest]):
    store = store_of(deployment)
    online = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, max_staleness=0)
    planes = data.read_table("planes")
    dated = set(planes.loc[planes["year"].notna(), "tailnum"])
    body = next(r.body for r in real_requests if r.body["tailnum"] in dated)  # a known build year
    later = pd.Timestamp(body["scheduled_departure"]) + pd.Timedelta(days=30)
    flight = Flight(
        **{
            **body,
            "scheduled_departure": later.isoformat(),
            "prediction_time": (later - pd.Timedelta(hours=1)).isoformat(),
        }
    )
    got, inputs = lookup(online, [flight], datetime.now(UTC))
    # Weather lives 3 hours, the activity views a day, the aircraft's last departure a week.
    for column in (
        "temp",
        "origin_1h_departures",
        "origin_carrier_3h_departures",
        "last_dep_delay",
        "carrier_7d_late_rate",
        "route_28d_late_rate",
    ):
        assert math.isnan(inputs[column][0]), column
    assert got.ages_of(0)["origin_hourly_weather"] > 3 * 3600  # reported however old
    assert not math.isnan(inputs["plane_year"][0]), "aircraft_profile has no TTL"
    assert got.unknown[0] == ["carrier", "origin", "route"]


def test_cached_rows_are_served_no_longer_than_max_staleness(
    serving_deployment: Deployment, tmp_path: Path, real_requests: list[FlightRequest]
):
    deployment = clone_deployment(serving_deployment, tmp_path / "data")  # this test writes to the store
    store = store_of(deployment)
    flight = Flight(**real_requests[0].body)
    now = datetime.now(UTC)
    cached = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, max_staleness=3600)
    fresh = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, max_staleness=0)
    before, before_inputs = lookup(cached, [flight], now)
    assert {source for (_, source) in before.reads} == {"store"}

    # The newest weather the store may hold at the flight's prediction time is stamped at that time
    # (a later row would be served as missing; an earlier one would not replace the stored one).
    stamp = flight.prediction_time
    store.write_to_online_store(
        "origin_hourly_weather",
        pd.DataFrame(
            {
                "origin": [flight.origin],
                "temp": [123.0],
                "dewp": [1.0],
                "humid": [1.0],
                "wind_dir": [1.0],
                "wind_speed": [1.0],
                "wind_gust": [None],
                "precip": [0.0],
                "pressure": [1000.0],
                "visib": [10.0],
                "event_timestamp": [pd.Timestamp(stamp)],
            }
        ),
    )

    again, again_inputs = lookup(cached, [flight], now)
    assert again_inputs["temp"] == before_inputs["temp"] != [123.0]
    assert {source for (_, source) in again.reads} == {"cache"}
    read, read_inputs = lookup(fresh, [flight], now)
    assert read_inputs["temp"] == [123.0]
    assert read.ages_of(0)["origin_hourly_weather"] == pytest.approx(0.0)

    cached.max_staleness = 0.05  # once the row is older than the bound, it is read again
    time.sleep(0.1)
    assert lookup(cached, [flight], now)[1]["temp"] == [123.0]


def _weather(store: Any, origin: str) -> tuple[Any, float]:
    """The stored event time and temperature of an origin's weather."""
    got = store.get_online_features(features=["origin_hourly_weather:temp"], entity_rows=[{"origin": origin}])
    frame = got.to_dict(include_event_timestamps=True)
    return frame["temp__ts"][0], frame["temp"][0]


def test_a_rerun_of_an_older_day_does_not_rewind_the_online_store(
    serving_deployment: Deployment, source_dir: Path, tmp_path: Path
):
    import dagster as dg

    from tests.support.graph import Graph

    deployment = clone_deployment(serving_deployment, tmp_path / "data")
    store = store_of(deployment)
    before = _weather(store, "EWR")
    graph = Graph(deployment.data_dir, source_dir, dg.DagsterInstance.ephemeral())
    assert graph.run(["online_features"], ("2013-01-02", "2013-01-02")).success
    assert _weather(store_of(deployment), "EWR") == before, "the live state moved back to January 2"


def _write_weather(store: Any, origin: str, stamp: pd.Timestamp, temp: float) -> None:
    store.write_to_online_store(
        "origin_hourly_weather",
        pd.DataFrame(
            {
                "origin": [origin],
                "temp": [temp],
                "dewp": [1.0],
                "humid": [1.0],
                "wind_dir": [1.0],
                "wind_speed": [1.0],
                "wind_gust": [None],
                "precip": [0.0],
                "pressure": [1000.0],
                "visib": [10.0],
                "event_timestamp": [stamp],
            }
        ),
    )


def test_online_writes_are_monotone_in_event_time_with_corrections(deployment: Deployment, tmp_path: Path):
    """Later rows replace earlier ones, earlier rows never replace later ones, and a row at the same
    event time replaces the stored one (a corrected re-run), on both stores. (An airport no flight
    uses: the Redis store is shared by the session's servers.)"""
    if deployment.online_store is None:
        deployment = clone_deployment(deployment, tmp_path / "data")
    store = store_of(deployment)
    stamp = pd.Timestamp("2013-02-01T12:00", tz="UTC")
    _write_weather(store, "ZZT", stamp, 50.0)
    assert _weather(store, "ZZT")[1] == 50.0
    _write_weather(store, "ZZT", stamp, 51.5)  # the same instant, corrected
    assert _weather(store, "ZZT")[1] == 51.5
    _write_weather(store, "ZZT", stamp - pd.Timedelta(hours=1), 10.0)  # an older row
    assert _weather(store, "ZZT")[1] == 51.5
    _write_weather(store, "ZZT", stamp + pd.Timedelta(hours=1), 60.0)
    assert _weather(store, "ZZT")[1] == 60.0


def test_the_service_reads_while_a_materialization_holds_the_sqlite_store(
    serving_deployment: Deployment, tmp_path: Path, real_requests: list[FlightRequest]
):
    import sqlite3

    deployment = clone_deployment(serving_deployment, tmp_path / "data")
    online = OnlineFeatures(store_of(deployment), FLIGHT_DELAY_SERVICE, max_staleness=0)
    flights = [Flight(**r.body) for r in real_requests[:20]]
    online.read(flights, datetime.now(UTC))  # the reader has opened the store (WAL from then on)
    writer = sqlite3.connect(deployment.data_dir / "feast" / "online.db", timeout=1)
    writer.execute("BEGIN EXCLUSIVE")  # what a materialization's write transaction holds
    try:
        started = time.monotonic()
        rows = online.read(flights, datetime.now(UTC))
        assert time.monotonic() - started < 1.0
        assert not all(u == ["carrier", "origin", "route", "tailnum"] for u in rows.unknown)
    finally:
        writer.rollback()
        writer.close()


def test_the_cache_at_its_bound_with_mixed_hits_and_misses_never_fails(
    serving_deployment: Deployment, real_requests: list[FlightRequest]
):
    """Batches of known and never-seen tail numbers fill a small cache again and again: every read
    is whole, and the cache never holds more than its bound."""
    online = OnlineFeatures(store_of(serving_deployment), FLIGHT_DELAY_SERVICE, max_staleness=60, max_entries=60)
    known = [Flight(**r.body) for r in real_requests[:25]]
    for round_ in range(40):
        new = [Flight(**{**r.body, "tailnum": f"Z{round_:03d}{i:02d}"}) for i, r in enumerate(real_requests[:25])]
        rows, inputs = lookup(online, known + new, datetime.now(UTC))
        assert len(inputs["temp"]) == 50 and rows.unknown[25:] == [["tailnum"]] * 25
        assert online.cached_entries() <= 60
