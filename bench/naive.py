"""A naive baseline for the benchmark: the same service, inference through Keras ``predict``.

``bentoml serve bench.naive:NaiveFlightDelayService`` serves the very same API as
:mod:`serving.service` (pydantic validation, the Feast lookup of :class:`serving.online.OnlineFeatures`,
champion/challenger routing, the prediction log, metrics): the class subclasses it. The one
difference is how a model is called: the champion's SavedModel is loaded as a Keras layer
(``keras.layers.TFSMLayer`` on the ``serve`` endpoint, one named input per feature) wrapped in a
small functional ``keras.Model``, and every request goes through ``model.predict(...)``, the way a
Keras model is commonly served. ``predict`` builds a ``tf.data`` pipeline and an epoch iterator on
each call, which is what the production path (:class:`flight_delay.forward.ServingModel`: a numpy
forward pass over the exported weights, checked against the SavedModel when loaded) avoids. Not
meant for production; only the benchmark starts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import bentoml

from serving.service import SERVICE_CONFIG, FlightDelayService, add_request_limits

with bentoml.importing():
    import numpy as np

    from flight_delay.forward import read_reference
    from flight_delay.model import SERVING_ENDPOINT, FeatureSpec
    from serving.routing import ModelRouter

log = logging.getLogger(__name__)


class KerasPredictModel:
    """The interface of :class:`flight_delay.forward.ServingModel` (``spec``, ``reference``,
    ``predict_inputs``) over a Keras model whose ``predict`` runs once per call."""

    def __init__(self, path: Path) -> None:
        import keras

        path = Path(path)
        self.spec = FeatureSpec.from_json(json.loads((path / "feature_spec.json").read_text()))
        self.reference = read_reference(path)
        inputs = {c: keras.Input(shape=(), name=c, dtype="float32") for c in self.spec.numeric}
        inputs |= {c: keras.Input(shape=(), name=c, dtype="string") for c in self.spec.categorical}
        layer = keras.layers.TFSMLayer(str(path), call_endpoint=SERVING_ENDPOINT)
        self.keras_model = keras.Model(inputs, layer(inputs))

    def predict_inputs(self, inputs: dict[str, Any]) -> np.ndarray:
        x = {c: np.asarray(inputs[c], dtype=np.float32) for c in self.spec.numeric}
        x |= {c: np.asarray(inputs[c], dtype=object) for c in self.spec.categorical}
        out = self.keras_model.predict(x, verbose=0)
        return np.asarray(out, dtype="float64").reshape(-1)


class KerasModelRouter(ModelRouter):
    """The production router (registry watch, sticky split, hot swap) loading Keras models."""

    def _load(self, tag: str) -> Any:
        return KerasPredictModel(self.registry.model_dir(tag))


@add_request_limits
@bentoml.service(name="flight_delay_naive", **SERVICE_CONFIG)
class NaiveFlightDelayService(FlightDelayService.inner):
    """:class:`serving.service.FlightDelayService` with Keras ``model.predict`` per request."""

    def __init__(self) -> None:
        super().__init__()
        s = self.settings
        self.router.close()  # the production router's models are dropped with it
        self.router = self.scorer.router = KerasModelRouter(
            self.registry, s.model_name, s.refresh_seconds, can_serve=self.online.can_serve
        )
        log.info("naive baseline: Keras model.predict per request")
