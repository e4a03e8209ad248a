"""Champion and challenger side by side, a sticky traffic split, and hot swaps.

A watcher thread follows the registry's state: the champion, and the challenger with its mode
and share (a challenger exists only by a recorded decision). A new model is loaded first and
then one reference is swapped, so requests in flight finish on the model they started with.

Champion and challenger load, and fail, independently: a challenger that does not load never
holds back a change of champion (the worker serves without it and says why), and a champion that
does not load leaves the previous one serving. A load can fail for a while only (a version still
being copied), so each failed tag is retried with exponential backoff, and at once when the
registry changes. A model whose features the service cannot build is refused like a failed load.
Nothing here raises out of a refresh: the worker starts without a champion if it must (not ready,
the reason in ``last_error``) and keeps trying.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flight_delay.forward import ServingModel
from flight_delay.model import FeatureSpec
from flight_delay.registry import Challenger, ModelRegistry, RegistryState
from serving.telemetry import MODEL_LOAD_FAILURES, create_load_failure_series

log = logging.getLogger(__name__)

CanServe = Callable[[FeatureSpec], str | None]  # None: the service can build the inputs; else why not
REGISTRY = "registry"  # the key of a failure to read the registry itself, beside the model tags


class UnservableModel(ValueError):
    """A model whose inputs the service cannot build (its feature spec asks for what it lacks)."""


@dataclass(frozen=True)
class Variant:
    name: str  # "champion" or "challenger"
    tag: str
    model: ServingModel


@dataclass(frozen=True)
class Routing:
    champion: Variant | None
    challenger: Variant | None = None
    mode: str | None = None  # the challenger's: "split" or "shadow"
    share: float = 0.0  # the challenger's share of flights in mode "split"

    @property
    def shadow(self) -> Variant | None:
        """The challenger when it runs in shadow mode (scored beside the champion, answers none)."""
        return self.challenger if self.mode == "shadow" else None

    def assign(self, flight_key: str) -> Variant:
        """Sticky: a flight key always lands on the same variant while the share holds."""
        if self.champion is None:
            raise LookupError("no champion model is promoted yet; run the pipeline (make demo)")
        if self.challenger is None or self.mode != "split" or self.share <= 0:
            return self.champion
        bucket = int.from_bytes(hashlib.blake2b(flight_key.encode(), digest_size=8).digest(), "big") % 10_000
        return self.challenger if bucket < self.share * 10_000 else self.champion

    def tags(self) -> tuple[str | None, str | None, str | None, float]:
        return (
            self.champion.tag if self.champion else None,
            self.challenger.tag if self.challenger else None,
            self.mode,
            self.share,
        )


def _routing(champion: Variant | None, challenger: Variant | None, chosen: Challenger | None) -> Routing:
    if challenger is None or chosen is None:
        return Routing(champion)
    return Routing(champion, challenger, chosen.mode, chosen.share)


@dataclass(frozen=True)
class Backoff:
    """Seconds between attempts at a load that failed: ``first``, doubling, at most ``most``."""

    first: float = 1.0
    most: float = 60.0

    def delay(self, attempts: int) -> float:
        return min(self.first * 2 ** (attempts - 1), self.most)


@dataclass
class _Failure:
    attempts: int  # failed attempts in a row
    retry_at: float  # clock time of the next attempt


@dataclass(frozen=True)
class VariantStatus:
    wanted: str | None  # what the registry says
    serving: str | None  # what this worker serves
    error: str | None  # why it does not serve what the registry says
    attempts: int  # failed attempts at loading ``wanted``, in a row
    retry_in: float | None  # seconds to the next attempt


@dataclass(frozen=True)
class RouterStatus:
    ready: bool  # a champion is loaded
    champion: VariantStatus
    challenger: VariantStatus
    mode: str | None
    share: float
    registry_error: str | None  # the registry could not be read; the loaded models keep serving


class ModelRouter:
    def __init__(
        self,
        registry: ModelRegistry,
        name: str,
        refresh_seconds: float,
        can_serve: CanServe,
        backoff: Backoff = Backoff(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.name = name
        self.refresh_seconds = refresh_seconds
        self.can_serve = can_serve
        self.backoff = backoff
        self._clock = clock
        self._cache: dict[str, ServingModel] = {}
        self.routing = Routing(None)
        self._wanted: RegistryState | None = None
        self._failures: dict[str, _Failure] = {}  # by model tag, or REGISTRY
        self._errors: dict[str, str] = {}  # by "champion", "challenger", "registry", "refresh"
        self._last_stamp: tuple[int, ...] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        create_load_failure_series()
        self._refresh_guarded()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    # -- what readiness and operators see -------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.routing.champion is not None

    @property
    def last_error(self) -> str | None:
        """Every reason this worker does not serve what the registry says, or None."""
        errors = dict(self._errors)
        return "; ".join(errors.values()) if errors else None

    def status(self) -> RouterStatus:
        now, routing, wanted = self._clock(), self.routing, self._wanted
        failures, errors = dict(self._failures), dict(self._errors)

        def variant(role: str, wanted_tag: str | None, serving: Variant | None) -> VariantStatus:
            failure = (
                failures.get(wanted_tag) if wanted_tag and (serving is None or serving.tag != wanted_tag) else None
            )
            return VariantStatus(
                wanted_tag,
                serving.tag if serving else None,
                errors.get(role),
                failure.attempts if failure else 0,
                max(0.0, failure.retry_at - now) if failure else None,
            )

        challenger = wanted.challenger if wanted else None
        return RouterStatus(
            ready=routing.champion is not None,
            champion=variant("champion", wanted.champion if wanted else None, routing.champion),
            challenger=variant("challenger", challenger.tag if challenger else None, routing.challenger),
            mode=routing.mode,
            share=routing.share,
            registry_error=errors.get(REGISTRY),
        )

    # -- following the registry ----------------------------------------------------------------
    def refresh(self) -> bool:
        """Follow the registry; True when the routing changed. A model that fails to load or is
        refused, or a registry that cannot be read, is recorded (``status``), never raised."""
        with self._lock:
            now = self._clock()
            stamp = self.registry.stamp(self.name)
            if stamp != self._last_stamp or self._due(REGISTRY, now):
                self._last_stamp = stamp
                try:
                    self._wanted = self.registry.state(self.name)
                except Exception as exc:  # an unreadable history: keep serving what is loaded
                    self._fail(REGISTRY, REGISTRY, f"cannot read the registry: {type(exc).__name__}: {exc}", now)
                    return False
                self._errors.pop(REGISTRY, None)
                self._failures.pop(REGISTRY, None)
                for failure in self._failures.values():
                    failure.retry_at = now  # a change (a fix, a copy finished) is worth a try at once
            elif not any(f.retry_at <= now for f in self._failures.values()):
                return False  # nothing changed and nothing is due: the common tick costs two stats
            return self._apply(self._wanted, now) if self._wanted is not None else False

    def _due(self, key: str, now: float) -> bool:
        failure = self._failures.get(key)
        return failure is not None and failure.retry_at <= now

    def _fail(self, key: str, role: str, error: str, now: float) -> None:
        failure = self._failures.get(key)
        attempts = failure.attempts + 1 if failure else 1
        delay = self.backoff.delay(attempts)
        self._failures[key] = _Failure(attempts, now + delay)
        self._errors[role] = error
        log.warning("%s (attempt %d, next in %g s)", error, attempts, delay)

    def _apply(self, wanted: RegistryState, now: float) -> bool:
        before = self.routing.tags()
        chosen = wanted.challenger
        champion = self._resolve("champion", wanted.champion, self.routing.champion, now)
        # The champion is swapped in before the challenger loads: a rollback never waits for it.
        current = self.routing.challenger
        kept = current if chosen and current and current.tag == chosen.tag else None
        self._publish(_routing(champion, kept, chosen))
        if chosen is not None and champion is not None and chosen.tag == champion.tag:
            # The registry's new champion did not load and its challenger is the one still serving.
            self._errors["challenger"] = f"challenger {chosen.tag} is the champion this worker still serves"
            challenger = None
        else:
            challenger = self._resolve("challenger", chosen.tag if chosen else None, kept, now)
        self._publish(_routing(champion, challenger, chosen))
        wanted_tags = {REGISTRY, wanted.champion, chosen.tag if chosen else None}
        for key in [k for k in self._failures if k not in wanted_tags]:
            del self._failures[key]  # no longer wanted: no more attempts
        keep = {v.tag for v in (champion, challenger) if v}
        for tag in [t for t in self._cache if t not in keep]:
            del self._cache[tag]
        return self.routing.tags() != before

    def _publish(self, routing: Routing) -> None:
        if routing.tags() != self.routing.tags():
            self.routing = routing  # one reference swap: atomic for readers
            log.info("serving champion=%s challenger=%s mode=%s share=%s", *routing.tags())

    def _resolve(self, role: str, tag: str | None, current: Variant | None, now: float) -> Variant | None:
        """The variant ``role`` should serve: ``tag`` once it loads; until then the champion it
        replaces keeps serving, while a challenger that does not load is left out."""
        fallback = current if role == "champion" else None
        if tag is None or (current is not None and current.tag == tag):
            self._errors.pop(role, None)
            return current if tag is not None else None
        model = self._cache.get(tag)
        if model is None:
            failure = self._failures.get(tag)
            if failure is not None and failure.retry_at > now:
                return fallback  # backing off; the error recorded stays
            try:
                model = self._open(tag)
            except Exception as exc:  # a broken or incomplete artifact, or features the service lacks
                MODEL_LOAD_FAILURES.labels(role).inc()
                instead = f"still serving {fallback.tag}" if fallback else f"serving without a {role}"
                self._fail(tag, role, f"{role} {tag} not loaded: {type(exc).__name__}: {exc}; {instead}", now)
                return fallback
            self._failures.pop(tag, None)
            self._cache[tag] = model
        self._errors.pop(role, None)
        return Variant(role, tag, model)

    def _open(self, tag: str) -> ServingModel:
        reason = self.can_serve(FeatureSpec.read(self.registry.model_dir(tag)))
        if reason is not None:
            raise UnservableModel(f"the service cannot build the inputs of {tag}: {reason}")
        model = self._load(tag)
        # The figures the registry recorded on its evaluation window: live quality is judged
        # against them.
        model.offline_metrics = dict(self.registry.get(tag).info.metadata.get("metrics") or {})
        return model

    def _load(self, tag: str) -> ServingModel:
        """The model of ``tag`` (a subclass may load it otherwise: the benchmark's Keras baseline)."""
        return ServingModel(self.registry.model_dir(tag))

    def _refresh_guarded(self) -> None:
        try:
            self.refresh()
        except Exception as exc:  # keep the worker up and the models it has; last_error says why
            self._errors["refresh"] = f"refresh failed: {type(exc).__name__}: {exc}"
            log.exception("model refresh failed; still serving %s", self.routing.champion)
        else:
            self._errors.pop("refresh", None)

    def _watch(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            self._refresh_guarded()

    def close(self) -> None:
        self._stop.set()
