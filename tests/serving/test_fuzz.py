"""Schema-driven fuzzing of the running service: requests generated from its own OpenAPI document
(``/docs.json``), valid and invalid, must never get a 5xx. Seeded (derandomized) and bounded."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis", minversion="4", reason="dev dependency schemathesis>=4")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from tests.support.metrics import metric  # noqa: E402
from tests.support.servers import ServiceProcess  # noqa: E402

EXAMPLES = {"/predict": 50, "/predict_batch": 40, "/feedback": 30}


@pytest.fixture(scope="module")
def schema(sqlite_server: ServiceProcess):
    with sqlite_server.client() as client:
        response = client.get("/docs.json")
    assert response.status_code == 200
    document = response.json()
    # BentoML 1.4.40 labels the document OpenAPI 3.0.2 but fills it with Pydantic v2 schemas, which
    # are JSON Schema 2020-12 (OpenAPI 3.1): e.g. ``"exclusiveMinimum": 0`` for ``distance > 0``,
    # a number where 3.0 wants a boolean. Read it as what it is.
    assert document["openapi"].startswith("3.")
    document["openapi"] = "3.1.0"
    return schemathesis.openapi.from_dict(document)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
@pytest.mark.parametrize("path", list(EXAMPLES))
def test_generated_requests_never_get_a_server_error(
    schema, sqlite_server: ServiceProcess, path: str, mode: GenerationMode
):
    operation = schema[path]["POST"]
    statuses: list[int] = []

    @settings(
        max_examples=EXAMPLES[path],
        derandomize=True,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        print_blob=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def fuzz(case) -> None:
        response = case.call_and_validate(base_url=sqlite_server.url, checks=[not_a_server_error], timeout=15)
        statuses.append(response.status_code)

    fuzz()
    assert statuses and all(s < 500 for s in statuses)
    if mode is GenerationMode.NEGATIVE:
        assert any(400 <= s < 500 for s in statuses), statuses


def test_the_server_counted_no_server_error(sqlite_server: ServiceProcess):
    with sqlite_server.client() as client:
        text = client.get("/metrics").text
    assert metric(text, "flight_delay_requests_total", outcome="server_error") == 0
    for code in ("500", "502", "503", "504"):
        assert metric(text, "bentoml_service_request_total", http_response_code=code) == 0, code
