"""The code location loads, every job and sensor resolves, and the daily schedule asks for yesterday."""

from datetime import UTC, datetime

import dagster as dg

from pipeline import definitions


def test_every_job_loads():
    defs = definitions.defs
    dg.Definitions.validate_loadable(defs)
    for job in ("feature_refresh_job", "retrain_job", "monitoring_job", "decision_job"):
        assert defs.resolve_job_def(job) is not None


def test_the_loop_sensors_request_their_jobs_and_only_drift_starts_stopped(monkeypatch):
    defs = definitions.defs
    expected = {
        "drift_retraining_sensor": ("retrain_job", dg.DefaultSensorStatus.STOPPED, 300),
        "challenger_sensor": ("decision_job", dg.DefaultSensorStatus.RUNNING, 60),
        "rollback_sensor": ("decision_job", dg.DefaultSensorStatus.RUNNING, 30),
    }
    for name, (job, status, interval) in expected.items():
        sensor = defs.resolve_sensor_def(name)
        assert (sensor.job_name, sensor.default_status, sensor.minimum_interval_seconds) == (job, status, interval)
    decisions = defs.resolve_job_def("decision_job").asset_layer.selected_asset_keys
    assert decisions == {dg.AssetKey("model_decisions")}
    monkeypatch.setenv("FLIGHT_DELAY_LOOP_SENSORS", "on")
    on = definitions.build_definitions()
    assert {on.resolve_sensor_def(n).default_status for n in expected} == {dg.DefaultSensorStatus.RUNNING}
    monkeypatch.setenv("FLIGHT_DELAY_LOOP_SENSORS", "off")
    off = definitions.build_definitions()
    assert {off.resolve_sensor_def(n).default_status for n in expected} == {dg.DefaultSensorStatus.STOPPED}


def test_assets_have_groups_descriptions_and_checks():
    graph = definitions.defs.resolve_asset_graph()
    groups = {graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {
        "ingestion",
        "validated",
        "feature_tables",
        "feature_store",
        "training",
        "packaging",
        "monitoring",
        "model_lifecycle",
    }
    for key in graph.get_all_asset_keys():
        assert graph.get(key).description, f"{key.to_user_string()} has no description"
    checked = {c.asset_key.to_user_string() for c in graph.asset_check_keys}
    assert {"raw_flights", "raw_weather", "departures", "training_set", "origin_1h_departures"} <= checked


def test_prediction_log_is_in_no_job():
    graph = definitions.defs.resolve_asset_graph()
    key = dg.AssetKey("prediction_log")
    assert graph.get(key).group_name == "monitoring"
    for job in ("feature_refresh_job", "retrain_job", "decision_job"):
        selected = definitions.defs.resolve_job_def(job).asset_layer.selected_asset_keys
        assert selected and key not in selected, job


def test_decisions_are_in_no_job_but_their_own_nor_in_the_cli_steps():
    from pipeline.materialize import graph_steps

    key = dg.AssetKey("model_decisions")
    assert definitions.defs.resolve_asset_graph().get(key).group_name == "model_lifecycle"
    for job in ("feature_refresh_job", "retrain_job"):
        assert key not in definitions.defs.resolve_job_def(job).asset_layer.selected_asset_keys, job
    assert all("model_decisions" not in step.assets for step in graph_steps())


def test_daily_schedule_refreshes_the_previous_day():
    schedule = definitions.defs.resolve_schedule_def("feature_refresh_job_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2013, 6, 2, 5, 30, tzinfo=UTC))
    request = list(schedule.evaluate_tick(context).run_requests)[0]
    assert request.partition_key == "2013-06-01"


def test_data_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLIGHT_DELAY_DATA_DIR", str(tmp_path))
    defs = definitions.build_definitions()
    assert defs.resources["lake"].root == str(tmp_path.resolve() / "lake")
    assert defs.resources["feature_store"].state_dir == str(tmp_path.resolve() / "feast")
    assert defs.resources["prediction_log_db"].path == str(tmp_path.resolve() / "prediction_log" / "predictions.db")
