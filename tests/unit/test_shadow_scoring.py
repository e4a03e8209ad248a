"""The scorer with a challenger in shadow mode, in process: stand-in models over rows already read
(the real servers, the real models and the NaN-giving shadow are in tests/serving/test_shadow.py).
A shadow that raises, or gives some non-finite probabilities, changes no answer and no champion
figure; what it could not score is counted and logged without a shadow figure."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from flight_delay.drift import Reference
from flight_delay.log_reading import read_log
from flight_delay.model import FeatureSpec
from serving.api_models import Flight
from serving.log_writer import PredictionLogWriter
from serving.online import FeatureRows
from serving.routing import Routing, Variant
from serving.scoring import Scorer
from serving.telemetry import PREDICTIONS, SHADOW_ERRORS, Telemetry

CHAMPION, SHADOW = "flight_delay:champ", "flight_delay:shadow"
DEPARTURE = datetime(2013, 1, 6, 22, 0, tzinfo=UTC)


class StandInModel:
    """Reads its spec's columns; answers ``answer(inputs)`` or raises it."""

    def __init__(self, spec: FeatureSpec, answer: Any) -> None:
        self.spec, self.answer = spec, answer
        self.reference = Reference({}, {})
        self.seen: list[dict[str, Any]] = []

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        self.seen.append(inputs)
        if isinstance(self.answer, Exception):
            raise self.answer
        return np.asarray(self.answer(inputs), dtype="float64")


class RowsRead:
    """The online features of the call, already read (no store call)."""

    def __init__(self, rows: FeatureRows) -> None:
        self.rows = rows
        self.needs_store = False

    def begin(self, flights: list[Flight], now: datetime) -> RowsRead:
        return self

    def finish(self) -> FeatureRows:
        return self.rows


class FixedRouter:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing


def _flights(n: int) -> list[Flight]:
    return [
        Flight(
            carrier="UA",
            flight=100 + i,
            origin="EWR",
            dest="IAH",
            scheduled_departure=DEPARTURE,
            distance=1400.0,
            prediction_time=datetime(2013, 1, 6, 15, 0, tzinfo=UTC),
        )
        for i in range(n)
    ]


def _rows(n: int) -> FeatureRows:
    return FeatureRows(
        values={"temp": [30.0 + i for i in range(n)], "wind_speed": [5.0] * n},
        times=[DEPARTURE.timestamp() - 7 * 3600] * n,
        ages={},
        unknown=[[] for _ in range(n)],
        reads=Counter(),
    )


def _score(tmp_path, shadow: StandInModel, n: int = 4) -> tuple[list[Any], Counter, Any, StandInModel]:
    champion = StandInModel(
        FeatureSpec(numeric=("distance", "temp"), categorical=("carrier",)),
        lambda inputs: [t / 100 for t in inputs["temp"]],
    )
    routing = Routing(Variant("champion", CHAMPION, champion), Variant("challenger", SHADOW, shadow), "shadow", 1.0)
    telemetry = Telemetry()
    log = PredictionLogWriter(tmp_path / "predictions.db", retention_days=0)
    scorer = Scorer(FixedRouter(routing), RowsRead(_rows(n)), telemetry, log, 0.3, None, None)  # type: ignore[arg-type]
    counted: Counter = Counter()
    telemetry.tally.add = counted.update  # type: ignore[method-assign]
    try:
        answers = asyncio.run(scorer.score(_flights(n), "predict_batch"))
        log.flush()
    finally:
        log.close()
        telemetry.close()
    return answers, counted, read_log(tmp_path / "predictions.db").set_index("request_id"), champion


# The shadow reads a feature the champion does not, and not one the champion does.
SHADOW_SPEC = FeatureSpec(numeric=("wind_speed", "distance"), categorical=("carrier",))


def test_the_shadow_scores_every_flight_with_its_own_spec_and_is_logged_beside_the_champion(tmp_path):
    shadow = StandInModel(SHADOW_SPEC, lambda inputs: [0.5] * len(inputs["wind_speed"]))
    answers, counted, logged, champion = _score(tmp_path, shadow)
    assert [a.probability for a in answers] == [0.30, 0.31, 0.32, 0.33]
    assert {(a.model_version, a.variant) for a in answers} == {(CHAMPION, "champion")}
    assert len(shadow.seen) == 1 and set(shadow.seen[0]) == {"wind_speed", "distance", "carrier"}  # one call
    assert set(champion.seen[0]) == {"distance", "temp", "carrier"}
    rows = logged.loc[[a.request_id for a in answers]]
    assert list(rows["shadow_model_version"]) == [SHADOW] * 4 and list(rows["shadow_probability"]) == [0.5] * 4
    assert counted[(PREDICTIONS, (SHADOW, "challenger"))] == 4 and counted[(PREDICTIONS, (CHAMPION, "champion"))] == 4
    assert counted[(SHADOW_ERRORS, (SHADOW,))] == 0


@pytest.mark.parametrize(
    "failure", [RuntimeError("the shadow broke"), lambda inputs: [0.5], lambda inputs: [math.inf] * 4]
)
def test_a_shadow_that_raises_or_answers_nothing_usable_changes_no_answer_and_is_counted(tmp_path, failure):
    answers, counted, logged, _ = _score(tmp_path, StandInModel(SHADOW_SPEC, failure))
    assert [a.probability for a in answers] == [0.30, 0.31, 0.32, 0.33]
    assert {(a.model_version, a.variant) for a in answers} == {(CHAMPION, "champion")}
    rows = logged.loc[[a.request_id for a in answers]]
    assert rows["shadow_model_version"].isna().all() and rows["shadow_probability"].isna().all()
    assert counted[(SHADOW_ERRORS, (SHADOW,))] == 4
    assert counted[(PREDICTIONS, (SHADOW, "challenger"))] == 0
    assert counted[(PREDICTIONS, (CHAMPION, "champion"))] == 4


def test_the_flights_a_shadow_scores_are_kept_and_only_the_others_counted_as_errors(tmp_path):
    shadow = StandInModel(SHADOW_SPEC, lambda inputs: [0.1, math.nan, 0.3, -math.inf])
    answers, counted, logged, _ = _score(tmp_path, shadow)
    rows = logged.loc[[a.request_id for a in answers]]
    assert list(rows["shadow_model_version"]) == [SHADOW, None, SHADOW, None]
    assert rows["shadow_probability"].tolist()[::2] == [0.1, 0.3] and rows["shadow_probability"].iloc[1::2].isna().all()
    assert counted[(SHADOW_ERRORS, (SHADOW,))] == 2 and counted[(PREDICTIONS, (SHADOW, "challenger"))] == 2


def test_a_call_waits_on_the_loop_while_the_log_is_behind_and_is_served_once_it_catches_up(tmp_path):
    """Backpressure: with half the log's bound waiting (here: the database locked by another
    connection), a call is not scored and not refused; it waits without holding the loop, and
    is answered once the writer has caught up."""
    import sqlite3

    champion = StandInModel(FeatureSpec(numeric=("temp",), categorical=()), lambda inputs: [0.2] * len(inputs["temp"]))
    routing = Routing(Variant("champion", CHAMPION, champion), None, None, 0.0)
    log = PredictionLogWriter(tmp_path / "predictions.db", flush_seconds=0.01, max_backlog=20, retention_days=0)
    telemetry = Telemetry()
    scorer = Scorer(FixedRouter(routing), RowsRead(_rows(1)), telemetry, log, 0.3, None, None)  # type: ignore[arg-type]
    locker = sqlite3.connect(tmp_path / "predictions.db", timeout=5, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")
    for i in range(10):  # half the bound, not written while the lock is held
        log.predicted(f"queued-{i}", f"k{i}", CHAMPION, "champion", 0.5, {})

    async def scenario() -> tuple[bool, float, list[Any]]:
        started = asyncio.get_running_loop().time()
        call = asyncio.ensure_future(scorer.score(_flights(1), "predict"))
        ticks = 0
        for _ in range(20):  # the loop keeps turning meanwhile: 0.2 s of other work
            await asyncio.sleep(0.01)
            ticks += 1
        waiting = not call.done() and ticks == 20
        locker.execute("ROLLBACK")
        answers = await asyncio.wait_for(call, 10)
        return waiting, asyncio.get_running_loop().time() - started, answers

    try:
        waiting, seconds, answers = asyncio.run(scenario())
    finally:
        locker.close()
        log.close()
        telemetry.close()
    assert waiting, "the call was scored while the log was behind"
    assert [a.probability for a in answers] == [0.2] and seconds >= 0.2
    assert len(read_log(tmp_path / "predictions.db")) == 11  # the ten queued and the call's
