"""Request and response models of the HTTP API (pydantic: validation and the OpenAPI schema)."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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

    @field_validator("scheduled_departure", "prediction_time")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return value
        if value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2013-06-01T17:00:00-04:00")
        if not EARLIEST <= value < LATEST:
            raise ValueError(f"must lie between {EARLIEST.isoformat()} and {LATEST.isoformat()}")
        return value

    @model_validator(mode="after")
    def _before_departure(self) -> Flight:
        if self.prediction_time is not None and self.prediction_time >= self.scheduled_departure:
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
