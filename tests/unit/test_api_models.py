"""The service's hand-encoded answers against the API's declared models: same fields, same order,
and a body that validates as the OpenAPI schema says."""

from __future__ import annotations

import dataclasses
import json

from serving.api_models import Answer, BatchPredictions, Prediction, answer_json, answers_json


def _answer(i: int = 0, **changes: object) -> Answer:
    fields = {
        "request_id": f"{i:032x}",
        "flight_key": "2013-04-01:UA1124:LGA",
        "probability": 0.25 + i / 100,
        "delayed": False,
        "threshold": 0.3,
        "model_version": "flight_delay:abc",
        "variant": "champion",
        "feature_age_seconds": {"origin_weather": 1200.5, "aircraft_profile": None},
        "unknown": ["tailnum"],
    }
    return Answer(**{**fields, **changes})  # type: ignore[arg-type]


def test_an_answer_has_the_declared_predictions_fields_in_their_order():
    assert [f.name for f in dataclasses.fields(Answer)] == list(Prediction.model_fields)


def test_an_encoded_answer_is_the_prediction_pydantic_would_have_written():
    answer = _answer(probability=0.1234567890123, delayed=True)
    body = answer_json(answer)
    declared = Prediction(**dataclasses.asdict(answer))
    assert Prediction.model_validate_json(body) == declared
    assert json.loads(body) == json.loads(declared.model_dump_json())


def test_an_encoded_batch_is_the_batch_pydantic_would_have_written():
    answers = [_answer(i) for i in range(3)]
    body = answers_json(answers)
    declared = BatchPredictions(predictions=[Prediction(**dataclasses.asdict(a)) for a in answers])
    assert BatchPredictions.model_validate_json(body) == declared
    assert json.loads(body) == json.loads(declared.model_dump_json())
