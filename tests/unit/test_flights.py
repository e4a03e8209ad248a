"""Training and serving agree on what identifies a flight and what its schedule says.

The pipeline derives the flight key, the route and the schedule features from the source's rows
(``prepare_departures`` and ``prediction_requests``); the service derives them from a request
(``Flight.key``, ``entity_keys``, ``model_inputs``). Both must give the same values for the same
flights, and the edges where a second copy of a transform would drift first are here: the
daylight-saving changes (2013-03-10, 2013-11-03), flights scheduled late in the evening (their UTC
date is the next day) and flights that left after local midnight, a day after their scheduled
date, and holidays at the turn of the year. (Nothing in 2013 is scheduled between 01:00 and
05:00 local.)
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from flight_delay import data
from flight_delay.feature_tables import prediction_requests, prepare_departures
from flight_delay.flights import LOCAL_TZ, SCHEDULE_CATEGORICAL, SCHEDULE_NUMERIC, entity_keys
from serving.api_models import Flight
from serving.online import FeatureRows, model_inputs

EDGE_DAYS = [
    "2013-01-01",
    "2013-03-09",
    "2013-03-10",
    "2013-03-11",
    "2013-11-02",
    "2013-11-03",
    "2013-11-04",
    "2013-12-31",
]


@pytest.fixture(scope="module")
def edge_flights() -> pd.DataFrame:
    flights = data.read_table("flights")
    rows = flights[data.local_day(flights).isin(EDGE_DAYS) & flights["dep_delay"].notna()]
    # Every flight scheduled from 22:00 or that left after midnight, and a sample of the rest.
    after_midnight = rows["dep_time"] < rows["sched_dep_time"] - 1200
    edges = rows[(rows["sched_dep_time"] >= 2200) | after_midnight]
    rest = rows.drop(edges.index).groupby(data.local_day(rows.drop(edges.index))).sample(n=40, random_state=7)
    assert after_midnight.sum() > 0
    return pd.concat([edges, rest]).reset_index(drop=True)


def client_request(row: pd.Series) -> Flight:
    """The request an airline would send: the published local schedule, no UTC arithmetic."""
    local = datetime(
        int(row.year),
        int(row.month),
        int(row.day),
        int(row.sched_dep_time) // 100,
        int(row.sched_dep_time) % 100,
        tzinfo=ZoneInfo(LOCAL_TZ),
    )
    return Flight(
        carrier=row.carrier,
        flight=int(row.flight),
        tailnum=None if pd.isna(row.tailnum) else row.tailnum,
        origin=row.origin,
        dest=row.dest,
        scheduled_departure=local,
        distance=float(row.distance),
    )


def test_service_and_pipeline_agree_on_keys_routes_and_schedule_features(edge_flights: pd.DataFrame):
    departures = prepare_departures(edge_flights)
    pipeline = prediction_requests(departures, pd.Timedelta(minutes=60)).set_index("flight_id")
    requests = [client_request(row) for row in edge_flights.itertuples(index=False)]
    keys = [f.key for f in requests]
    assert sorted(keys) == sorted(pipeline.index), "the same flight keys"
    rows = FeatureRows({}, [0.0] * len(requests), [{}] * len(requests), [[]] * len(requests), None)
    served = model_inputs(requests, rows, SCHEDULE_NUMERIC, SCHEDULE_CATEGORICAL)
    for i, (flight, key) in enumerate(zip(requests, keys)):
        expected = pipeline.loc[key]
        assert entity_keys(flight.origin, flight.carrier, flight.tailnum, flight.dest) == {
            "origin": expected["origin"],
            "carrier": expected["carrier"],
            "tailnum": expected["tailnum"],
            "route": expected["route"],
        }, key
        assert flight.scheduled_departure == expected["sched_dep_ts"], key
        for column in (*SCHEDULE_NUMERIC, *SCHEDULE_CATEGORICAL):
            assert served[column][i] == expected[column], (key, column, served[column][i], expected[column])


def test_the_edges_are_really_edges(edge_flights: pd.DataFrame):
    """The cases above include flights whose UTC date differs from their local date, on both
    sides of both daylight-saving changes."""
    departures = prepare_departures(edge_flights)
    utc_day = departures["sched_dep_ts"].dt.strftime("%Y-%m-%d")
    assert (utc_day != departures["flight_date"]).sum() > 10
    offsets = departures["sched_dep_ts"].dt.tz_convert(LOCAL_TZ).map(lambda t: t.utcoffset())
    assert set(offsets) == {pd.Timedelta(hours=-5), pd.Timedelta(hours=-4)}
