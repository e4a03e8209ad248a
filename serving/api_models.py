"""Request and response models of the HTTP API (pydantic: validation and the OpenAPI schema)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flight_delay.flights import FLIGHT_KEY_PATTERN, flight_key, local_date

_CODE = r"^[A-Z0-9]{3}$"
# Times the service can convert and featurize: outside, converting to local time (the flight key,
# the schedule features) overflows Python's datetime range and the request would fail with a 500.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


class Flight(BaseModel):
    """One scheduled departure to score."""

    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(pattern=r"^[A-Z0-9]{2}$", description="Two-character airline code, e.g. UA.")
    flight: int = Field(ge=1, le=9999, description="Flight number.")
    tailnum: str | None = Field(default=None, pattern=r"^[A-Z0-9]{2,7}$", description="Aircraft tail number.")
    origin: str = Field(pattern=_CODE, description="Departure airport (FAA code).")
    dest: str = Field(pattern=_CODE, description="Arrival airport (FAA code).")
    scheduled_departure: datetime = Field(description="Scheduled departure, ISO 8601 with a UTC offset.")
    distance: float = Field(gt=0, le=10_000, description="Great-circle distance in miles.")
    prediction_time: datetime | None = Field(
        default=None, description="When the prediction is made (default: now); must precede departure."
    )

    # One validator for the checks pydantic cannot state (a Python call per check and flight was
    # an eighth of a batch's parsing and scoring); each error names its field.
    @model_validator(mode="after")
    def _consistent(self) -> Flight:
        departure, at = self.scheduled_departure, self.prediction_time
        for name, value in (("scheduled_departure", departure), ("prediction_time", at)):
            if value is None:
                continue
            if value.tzinfo is None:
                raise ValueError(f"{name} needs a UTC offset, e.g. 2013-06-01T17:00:00-04:00")
            if not EARLIEST <= value < LATEST:
                raise ValueError(f"{name} must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}")
        if at is not None and at >= departure:
            raise ValueError("prediction_time must be before scheduled_departure")
        if self.origin == self.dest:
            raise ValueError("origin and dest must differ")
        return self

    @property
    def key(self) -> str:
        """Flight key: local departure date, carrier and number, origin (as the pipeline's flight_id)."""
        return flight_key(local_date(self.scheduled_departure), self.carrier, self.flight, self.origin)


class Prediction(BaseModel):
    request_id: str
    flight_key: str
    probability: float = Field(description="Probability of leaving 15 minutes late or more.")
    delayed: bool = Field(description="probability >= the service's decision threshold.")
    threshold: float
    model_version: str
    variant: str = Field(description="champion or challenger")
    feature_age_seconds: dict[str, float | None] = Field(
        description="Age of each feature view's value at prediction time; null when none was found."
    )
    unknown: list[str] = Field(description="Entities the feature store did not know (served with defaults).")


class BatchPredictions(BaseModel):
    predictions: list[Prediction]


@dataclass(slots=True)
class Answer:
    """A :class:`Prediction` as the service builds it, from values it made itself: the same fields
    in the same order, without pydantic's per-object construction and serialization, which cost
    more than the model call for a batch (``tests/unit/test_api_models.py`` holds the two equal).
    The API still declares :class:`Prediction`: its OpenAPI schema is that model's."""

    request_id: str
    flight_key: str
    probability: float
    delayed: bool
    threshold: float
    model_version: str
    variant: str
    feature_age_seconds: dict[str, float | None]
    unknown: list[str]


def answer_json(answer: Answer) -> bytes:
    """``/predict``'s body: a :class:`Prediction`."""
    return orjson.dumps(answer)


def answers_json(answers: list[Answer]) -> bytes:
    """``/predict_batch``'s body: a :class:`BatchPredictions`."""
    return orjson.dumps({"predictions": answers})


class Feedback(BaseModel):
    """The observed outcome of a flight that has departed."""

    model_config = ConfigDict(extra="forbid")

    request_id: str | None = Field(default=None, min_length=8, max_length=64)
    flight_key: str | None = Field(default=None, pattern=FLIGHT_KEY_PATTERN)
    departure_delay_minutes: float = Field(ge=-180, le=48 * 60, description="Observed departure delay.")

    @model_validator(mode="after")
    def _one_key(self) -> Feedback:
        if (self.request_id is None) == (self.flight_key is None):
            raise ValueError("give exactly one of request_id or flight_key")
        return self


class FeedbackResult(BaseModel):
    request_id: str
    flight_key: str
    model_version: str
    variant: str
    probability: float
    late: bool
    log_loss: float
    brier: float
    shadow_model_version: str | None = Field(
        default=None, description="The shadow challenger scored beside the prediction, if one was."
    )
    shadow_probability: float | None = Field(default=None, description="Its probability for the same flight.")
