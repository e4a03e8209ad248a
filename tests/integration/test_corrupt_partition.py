"""A corrupt day fails its blocking check; nothing downstream is built from it, in that run or
any later one, and the raw rows are kept as they came."""

import dagster as dg
import pandas as pd
import pytest

from tests.support.graph import REFERENCE, Graph
from tests.support.source import write_source

BAD_DAY = "2013-01-03"


@pytest.fixture()
def corrupt_source(tmp_path, real_flights, real_weather):
    flights = real_flights.copy()
    day = flights.index[(flights["month"] == 1) & (flights["day"] == 3)]
    flights.loc[day[0], "distance"] = -50.0  # impossible value
    flights.loc[day[1], "dest"] = "XXX"  # unknown airport
    flights = pd.concat([flights, flights.loc[[day[2]]]], ignore_index=True)  # duplicate flight
    return write_source(tmp_path / "source", flights, real_weather)


def _materialized(instance: dg.DagsterInstance, asset: str) -> set[str]:
    return set(instance.get_materialized_partitions(dg.AssetKey(asset)))


def test_corrupt_day_is_blocked(tmp_path, corrupt_source):
    instance = dg.DagsterInstance.ephemeral()
    graph = Graph(tmp_path / "data", corrupt_source, instance)
    assert graph.run(REFERENCE).success

    # Good days first: they build.
    good = graph.run(["raw_flights", "departures"], ("2013-01-01", "2013-01-02"))
    assert good.success

    result = graph.run(["raw_flights", "departures", "aircraft_last_departure"], (BAD_DAY, BAD_DAY))
    assert not result.success
    check = [
        e.asset_check_evaluation_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ][0]
    assert check.asset_key == dg.AssetKey("raw_flights") and not check.passed
    failures = check.metadata["failures_by_check"].value
    for expected in ("greater_than(0)", "unknown airport code in dest", "multiple_fields_uniqueness"):
        assert expected in failures
    # Raw rows are kept for inspection; nothing was built from them.
    assert BAD_DAY in _materialized(instance, "raw_flights")
    assert BAD_DAY not in _materialized(instance, "departures")
    assert not (graph.data_dir / "lake" / "departures" / f"{BAD_DAY}.parquet").exists()

    # A later run that asks only for the downstream asset is refused too.
    later = graph.run(["departures"], (BAD_DAY, BAD_DAY))
    assert not later.success
    failure = [e for e in later.all_events if e.event_type_value == "STEP_FAILURE"][0]
    assert "failed validation" in failure.event_specific_data.error.message
    assert BAD_DAY not in _materialized(instance, "departures")
    assert _materialized(instance, "departures") == {"2013-01-01", "2013-01-02"}
