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
