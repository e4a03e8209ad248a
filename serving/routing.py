"""Champion and challenger side by side, a sticky traffic split, and hot swaps.

A watcher thread follows the registry (champion history and model list); when the champion or
challenger changes it loads the new SavedModel first and then swaps one reference, so requests
in flight finish on the model they started with and none fails.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass

from flight_delay.forward import ServingModel
from flight_delay.registry import ModelRegistry
from serving.telemetry import MODEL_LOAD_FAILURES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Variant:
    name: str  # "champion" or "challenger"
    tag: str
    model: ServingModel


@dataclass(frozen=True)
class Routing:
    champion: Variant | None
    challenger: Variant | None
    weight: float

    def assign(self, flight_key: str) -> Variant:
        """Sticky: a flight key always lands on the same variant while the weights hold."""
        if self.champion is None:
            raise LookupError("no champion model is promoted yet; run the pipeline (make demo)")
        if self.challenger is None or self.weight <= 0:
            return self.champion
        bucket = int.from_bytes(hashlib.blake2b(flight_key.encode(), digest_size=8).digest(), "big") % 10_000
        return self.challenger if bucket < self.weight * 10_000 else self.champion


class ModelRouter:
    def __init__(
        self, registry: ModelRegistry, name: str, challenger: str | None, weight: float, refresh_seconds: float
    ) -> None:
        self.registry = registry
        self.name = name
        self.challenger_spec = challenger
        self.weight = weight
        self.refresh_seconds = refresh_seconds
        self._cache: dict[str, ServingModel] = {}
        self.routing = Routing(None, None, weight)
        self.last_error: str | None = None
        self._last_stamp: tuple[float, ...] | None = None
        self._stop = threading.Event()
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    def _wanted(self) -> tuple[str | None, str | None]:
        champion = self.registry.champion(self.name)
        spec = self.challenger_spec
        if spec in (None, "", "none") or champion is None:
            return champion, None
        if spec == "latest":
            versions = self.registry.list(self.name)
            newer = versions[versions.index(champion) + 1 :] if champion in versions else []
            return champion, (newer[-1] if newer else None)
        return champion, (spec if spec != champion else None)

    def _load(self, tag: str) -> ServingModel:
        if tag not in self._cache:
            self._cache[tag] = ServingModel(self.registry.model_dir(tag))
        return self._cache[tag]

    def _stamp(self) -> tuple[float, ...]:
        """Modification times of what a promotion, rollback or new model changes."""
        paths = (self.registry.home / "champions" / f"{self.name}.jsonl", self.registry.home / "models" / self.name)
        return tuple(p.stat().st_mtime_ns if p.exists() else 0 for p in paths)

    def refresh(self) -> bool:
        """Follow the registry; True when the routing changed."""
        stamp = self._stamp()
        if stamp == self._last_stamp:  # listing models costs ms under the GIL; skip when unchanged
            return False
        try:
            changed = self._apply(*self._wanted())
        except Exception as exc:
            # A model that fails to load (broken artifact) is not retried every tick, loading
            # TensorFlow each time, but when the registry changes again (a fix, a rollback).
            self._last_stamp = stamp
            self.last_error = f"{type(exc).__name__}: {exc}"
            raise
        self._last_stamp = stamp
        self.last_error = None
        return changed

    def _apply(self, champion: str | None, challenger: str | None) -> bool:
        current = self.routing
        if champion == (current.champion.tag if current.champion else None) and challenger == (
            current.challenger.tag if current.challenger else None
        ):
            return False
        new = Routing(
            Variant("champion", champion, self._load(champion)) if champion else None,
            Variant("challenger", challenger, self._load(challenger)) if challenger else None,
            self.weight,
        )
        self.routing = new  # one reference swap: atomic for readers
        keep = {t for t in (champion, challenger) if t}
        for tag in list(self._cache):
            if tag not in keep:
                del self._cache[tag]
        log.info("serving champion=%s challenger=%s weight=%s", champion, challenger, self.weight)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception:  # keep serving the current models; last_error says why
                MODEL_LOAD_FAILURES.inc()
                log.exception("model refresh failed; still serving %s", self.routing.champion)

    def close(self) -> None:
        self._stop.set()
