"""The benchmark's floor: a BentoML service with the prediction service's API and server
settings (and request limits) that does nothing else.

``predict`` parses a :class:`serving.api_models.Flight` and answers a
:class:`serving.api_models.Prediction`-shaped body; ``predict_batch`` the same per flight. No
features, no model, no log, no metrics of its own. Measured in the same run, with the same
worker count, it says what the framework and the machine cost, so the service's figures can be
judged as ratios to it, whatever machine the benchmark runs on. Only the benchmark starts it.

It encodes its answers as the service does (orjson, from :class:`serving.api_models.Answer`).
``FLIGHT_DELAY_FLOOR_ANSWERS=pydantic`` (``python -m bench --floor-answers pydantic``) makes it
answer as the floor did before the service encoded its own answers: a pydantic model per
prediction, serialized by BentoML, about half as fast in batches. Ratios to that floor compare
with ratios measured by the code before that change.
"""

from __future__ import annotations

import itertools
import os
from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import Response

from serving.api_models import Answer, BatchPredictions, Flight, Prediction, answer_json, answers_json
from serving.service import JSON, SERVICE_CONFIG, SETTINGS, add_request_limits

_ids = itertools.count()
PYDANTIC_ANSWERS = os.environ.get("FLIGHT_DELAY_FLOOR_ANSWERS", "orjson") == "pydantic"


def _answer(flight: Flight) -> Answer:
    return Answer(f"{next(_ids):032x}", flight.key, 0.0, False, 0.5, "floor:0", "champion", {}, [])


def _model(flight: Flight) -> Prediction:
    """The same answer as the floor built it before: a pydantic model, for BentoML to serialize."""
    answer = _answer(flight)
    return Prediction.model_construct(**{name: getattr(answer, name) for name in Answer.__slots__})


@add_request_limits
@bentoml.service(name="flight_delay_floor", **SERVICE_CONFIG)
class FloorService:
    """The prediction service's API over nothing: parse, answer."""

    @bentoml.api
    async def predict(self, flight: Flight) -> Prediction:
        if PYDANTIC_ANSWERS:
            return _model(flight)
        # Encoded as the service encodes its answers, so that the two are measured alike.
        return Response(answer_json(_answer(flight)), media_type=JSON)

    @bentoml.api
    async def predict_batch(
        self, flights: Annotated[list[Flight], Field(min_length=1, max_length=SETTINGS.max_batch)]
    ) -> BatchPredictions:
        if PYDANTIC_ANSWERS:
            return BatchPredictions(predictions=[_model(f) for f in flights])
        return Response(answers_json([_answer(f) for f in flights]), media_type=JSON)
