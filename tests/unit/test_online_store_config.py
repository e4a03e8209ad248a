"""Online store URLs: Redis and TLS Redis with timeouts, and secrets kept out of what is printed."""

import pytest

from features.online_stores import REDIS_TYPE
from features.store import online_store_config, redact
from serving.settings import ServingSettings


def test_a_redis_url_gets_timeouts_on_every_command():
    config = online_store_config("redis://10.0.0.5:6380/2")
    assert config["type"] == REDIS_TYPE
    assert config["connection_string"] == "10.0.0.5:6380,socket_timeout=0.5,socket_connect_timeout=0.5,db=2"


def test_a_rediss_url_is_tls_with_its_options_and_credentials():
    config = online_store_config("rediss://app:p%40ss@cache.internal:6380?ssl_cert_reqs=none&socket_timeout=2")
    parts = config["connection_string"].split(",")
    assert parts[0] == "cache.internal:6380"
    assert {"ssl=true", "ssl_cert_reqs=none", "socket_timeout=2", "username=app", "password=p@ss"} <= set(parts)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h:1", "expected redis://"),
        ("redis://h:1?retries=3", "option 'retries'"),
        ("redis://:a,b@h:1", "may not contain"),
    ],
)
def test_bad_urls_are_refused_without_showing_the_password(url, message):
    with pytest.raises(ValueError, match=message) as error:
        online_store_config(url)
    assert "a,b" not in str(error.value)


def test_redact_hides_the_password_only():
    assert redact("rediss://app:s3cret@h:6380/1?ssl_cert_reqs=none") == "rediss://app:***@h:6380/1?ssl_cert_reqs=none"
    assert redact("redis://h:6379") == "redis://h:6379"


def test_the_api_token_is_not_in_the_settings_repr(monkeypatch):
    monkeypatch.setenv("FLIGHT_DELAY_API_TOKEN", "t0ken-value")
    settings = ServingSettings.from_env()
    assert settings.api_token == "t0ken-value" and "t0ken-value" not in repr(settings)
