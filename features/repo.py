"""Module-level objects for the ``feast`` CLI (``feast plan``, ``feast ui``), over the project's
own ``data/offline`` folder. The pipeline does not import this: it applies
``features.definitions(root)`` for the root its resources are configured with."""

from pathlib import Path

from features import definitions

_OBJECTS = definitions(str(Path(__file__).resolve().parents[1] / "data" / "offline"))
globals().update({f"_{i}": obj for i, obj in enumerate(_OBJECTS)})
