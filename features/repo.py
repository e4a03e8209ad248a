"""Module-level objects for the ``feast`` CLI (``feast plan``, ``feast ui``), over the project's
own ``data/offline`` folder. The pipeline does not import this: it applies
``features.definitions(root)`` for the root its resources are configured with."""

from features import definitions
from flight_delay.paths import DataLayout

_OBJECTS = definitions(str(DataLayout.resolve().offline))
globals().update({f"_{i}": obj for i, obj in enumerate(_OBJECTS)})
