"""Service settings: a setting that is no longer read is an error, not silently ignored."""

import pytest

from serving.settings import ServingSettings


@pytest.mark.parametrize("gone", ["FLIGHT_DELAY_CHALLENGER", "FLIGHT_DELAY_CHALLENGER_WEIGHT"])
def test_the_challenger_is_no_setting_but_a_registry_decision(monkeypatch, gone):
    monkeypatch.setenv(gone, "latest" if gone == "FLIGHT_DELAY_CHALLENGER" else "0.1")
    with pytest.raises(ValueError, match=f"{gone} is no longer read.*registry challenge"):
        ServingSettings.from_env()
    monkeypatch.delenv(gone)
    assert not hasattr(ServingSettings.from_env(), "challenger")


def test_the_shared_database_is_one_setting_read_with_the_data_folder_and_never_shown(monkeypatch, tmp_path):
    import dagster as dg

    from pipeline.definitions import build_definitions

    assert ServingSettings.from_env().layout.database_url is None  # unset: files in the data folder
    url = "postgresql://flight:s3cret@db.internal:5432/flight_delay"
    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", url)
    settings = ServingSettings.from_env()
    assert settings.layout.database_url == url and "s3cret" not in repr(settings)
    resources = build_definitions(data_dir=str(tmp_path)).resources
    for name in ("prediction_log_db", "model_registry"):  # the pipeline: the same setting, read at run time
        value = resources[name].database_url
        assert isinstance(value, dg.EnvVar) and value.get_value() == url, name

    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", "mysql://flight:s3cret@db.internal/flight_delay")
    with pytest.raises(ValueError, match="FLIGHT_DELAY_DATABASE_URL: expected postgresql://") as info:
        ServingSettings.from_env()
    assert "s3cret" not in str(info.value)
