"""Daily partitions on disk: written whole or not at all, published only after their check, and the
same whether a day was built alone or inside a range."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from pipeline.assets import feature_tables
from pipeline.resources import LocalTableStore
from tests.support.graph import DAILY, REFERENCE, Graph
from tests.support.source import SLICE_DAYS, write_source

DAY = "2013-01-03"


def test_concurrent_writers_of_one_partition_never_expose_a_partial_file(tmp_path):
    """Runs re-materializing the same day at once: a reader of ``<table>/*.parquet`` (Feast's glob,
    another run) sees one writer's whole frame at every moment, never half of one."""
    store = LocalTableStore(root=str(tmp_path))
    rows = 200_000  # a few MB, so that a write takes long enough to be caught in the middle
    frames = [pd.DataFrame({"writer": np.full(rows, w), "value": np.arange(rows) * (w + 1)}) for w in range(4)]
    store.write("table", frames[0], DAY)
    folder = tmp_path / "table"
    seen: list[int] = []
    problems: list[str] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                (path,) = folder.glob("*.parquet")
                got = pd.read_parquet(path)
            except Exception as err:  # any failure to read is what the test looks for
                problems.append(f"{type(err).__name__}: {err}")
                continue
            writer = int(got["writer"].iloc[0])
            if not got.equals(frames[writer]):
                problems.append(f"a frame that is not writer {writer}'s whole frame ({len(got)} rows)")
            seen.append(writer)

    def write_many(writer: int) -> None:
        for _ in range(10):
            store.write("table", frames[writer], DAY)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        with ThreadPoolExecutor(len(frames)) as pool:
            writes = [pool.submit(write_many, w) for w in range(len(frames))]
            errors = [f"{type(e).__name__}: {e}" for e in (w.exception() for w in writes) if e is not None]
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:5]
    assert not errors, errors
    assert seen, "the reader never read the partition"
    assert [p.name for p in folder.iterdir()] == [f"{DAY}.parquet"]  # no temporary file left behind


@pytest.fixture()
def double_booked_source(tmp_path, real_flights, real_weather):
    """The real days, with one aircraft also recorded on a second flight number leaving at the same
    moment: valid raw flights (the flight numbers differ), but two departures of one aircraft at
    one instant, which ``aircraft_last_departure``'s schema refuses (one row per tail number and
    time)."""
    flights = real_flights.copy()
    on_day = flights[(flights["day"] == 3) & flights["tailnum"].notna() & flights["dep_time"].notna()]
    twin = on_day.iloc[[len(on_day) // 2]].assign(flight=9999)
    return write_source(tmp_path / "source", pd.concat([flights, twin], ignore_index=True), real_weather)


def test_a_feature_table_failing_its_check_is_not_published(tmp_path, double_booked_source):
    instance = dg.DagsterInstance.ephemeral()
    graph = Graph(tmp_path / "data", double_booked_source, instance)
    assert graph.run(REFERENCE).success
    result = graph.run(["raw_flights", "departures", "aircraft_last_departure"], (DAY, DAY))

    assert not result.success
    checks = {
        e.asset_check_evaluation_data.asset_key.to_user_string(): e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }
    assert checks == {"raw_flights": True, "departures": True, "aircraft_last_departure": False}
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failure.step_key == "aircraft_last_departure"
    message = failure.event_specific_data.error.message
    assert "aircraft_last_departure" in message and "schema" in message, message
    # Feast reads offline/<table>/*.parquet: nothing of that day may be there, not even for a moment.
    offline = graph.data_dir / "offline" / "aircraft_last_departure"
    assert not offline.exists() or not any(offline.iterdir()), sorted(p.name for p in offline.iterdir())
    assert DAY not in instance.get_materialized_partitions(dg.AssetKey("aircraft_last_departure"))
    assert DAY in instance.get_materialized_partitions(dg.AssetKey("departures"))


def test_a_day_built_alone_is_the_day_built_in_a_range(tmp_path, source_dir):
    """Re-running one day must give the file the range run gave: same rows, order, values, dtypes."""
    first, last = SLICE_DAYS[0], SLICE_DAYS[-1]
    in_range = Graph(tmp_path / "range", source_dir, dg.DagsterInstance.ephemeral())
    assert in_range.run(REFERENCE).success
    assert in_range.run(DAILY, (first, last)).success

    alone = Graph(tmp_path / "alone", source_dir, dg.DagsterInstance.ephemeral())
    graph = alone.defs.resolve_asset_graph()
    tables = [a for a in DAILY if graph.get(dg.AssetKey(a)).group_name == feature_tables.GROUP]
    upstream = [a for a in DAILY if graph.get(dg.AssetKey(a)).group_name in {"ingestion", "validated"}]
    assert len(tables) == 6 and sorted(upstream) == ["departures", "raw_flights", "raw_weather"]
    assert alone.run(REFERENCE).success
    assert alone.run(upstream, (first, last)).success
    for day in SLICE_DAYS:
        assert alone.run(tables, (day, day)).success, day

    differences = {}
    for table in tables:
        for day in SLICE_DAYS:
            built_in_range = pd.read_parquet(in_range.data_dir / "offline" / table / f"{day}.parquet")
            built_alone = pd.read_parquet(alone.data_dir / "offline" / table / f"{day}.parquet")
            try:
                pd.testing.assert_frame_equal(built_alone, built_in_range, check_exact=True)
            except AssertionError as err:
                differences[f"{table} {day}"] = (
                    f"{len(built_alone)} rows alone, {len(built_in_range)} in the range: "
                    + (" ".join(str(err).split())[:300])
                )
    assert not differences, "\n".join(f"{where}: {what}" for where, what in differences.items())
