"""The model router follows the registry: champion and challenger load and fail independently, a
failed load is retried with backoff, and a model the service cannot serve never takes traffic."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from flight_delay import model as M
from flight_delay.registry import ModelRegistry
from serving.routing import Backoff, ModelRouter, Routing, Variant
from tests.support.synthetic import SPEC, synthetic_frame

WIDE = M.FeatureSpec(numeric=(*SPEC.numeric, "gusts"), categorical=SPEC.categorical)


def _export(folder: Path, spec: M.FeatureSpec) -> Path:
    frame = synthetic_frame(2000, 1)
    frame["gusts"] = np.random.default_rng(2).normal(size=len(frame))
    config = M.TrainingConfig(hidden_units=(8,), max_epochs=2, batch_size=256, patience=1)
    M.export(M.train(frame, "is_late", spec, config), folder / "saved")
    return folder / "saved"


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _export(tmp_path_factory.mktemp("router"), SPEC)


@pytest.fixture(scope="module")
def wide_export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that also reads a feature ("gusts") the service of these tests cannot serve."""
    return _export(tmp_path_factory.mktemp("router_wide"), WIDE)


def register(registry: ModelRegistry, export_dir: Path, corrupt: bool = False) -> str:
    def write(target: Path) -> None:
        shutil.copytree(export_dir, target)
        if corrupt:
            blob = (target / M.FORWARD_FILE).read_bytes()
            (target / M.FORWARD_FILE).write_bytes(blob[: len(blob) // 2])

    return registry.register("m", write, {}, {})


@contextmanager
def still_copying(registry: ModelRegistry, tag: str) -> Iterator[Callable[[], None]]:
    """``tag``'s artifact as it looks while it is still being copied in (nothing there yet);
    calling the yielded function finishes the copy."""
    folder = registry.model_dir(tag)
    aside = folder.with_name("copy-in-progress")
    folder.rename(aside)
    folder.mkdir()
    finished = False

    def finish() -> None:
        nonlocal finished
        folder.rmdir()
        aside.rename(folder)
        finished = True

    try:
        yield finish
    finally:
        if not finished:
            finish()


class Clock:
    """A monotonic clock the test moves by hand, so backoff is tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def serves_everything(spec: M.FeatureSpec) -> None:
    return None


def no_gusts(spec: M.FeatureSpec) -> str | None:
    missing = sorted(set(spec.columns) - set(SPEC.columns))
    return f"no online feature for {missing}" if missing else None


@contextmanager
def router_over(
    registry: ModelRegistry, clock: Clock, can_serve: Callable[[M.FeatureSpec], str | None] = serves_everything
) -> Iterator[ModelRouter]:
    router = ModelRouter(registry, "m", refresh_seconds=3600, can_serve=can_serve, clock=clock)
    try:
        yield router
    finally:
        router.close()


def tags(router: ModelRouter) -> tuple[str | None, str | None]:
    routing = router.routing
    return (
        routing.champion.tag if routing.champion else None,
        routing.challenger.tag if routing.challenger else None,
    )


def load_failures(variant: str) -> float:
    return REGISTRY.get_sample_value("flight_delay_model_load_failures_total", {"variant": variant}) or 0.0


@pytest.fixture()
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "bentoml")


def test_a_broken_champion_keeps_the_previous_one_serving(registry, export_dir):
    clock = Clock()
    good = register(registry, export_dir)
    registry.promote("m", good, "first", expected_champion=None)
    with router_over(registry, clock) as router:
        assert tags(router) == (good, None)

        broken = register(registry, export_dir, corrupt=True)
        registry.promote("m", broken, "a bad export", expected_champion=good)
        before = load_failures("champion")
        router.refresh()
        assert tags(router) == (good, None), "the working model keeps serving"
        assert router.ready
        status = router.status()
        assert status.champion.wanted == broken and status.champion.serving == good
        assert "forward.npz" in status.champion.error and f"still serving {good}" in status.champion.error
        assert router.last_error and "forward.npz" in router.last_error
        assert load_failures("champion") == before + 1

        registry.rollback("m", "the export is broken", expected_champion=broken)
        router.refresh()
        assert tags(router) == (good, None) and router.last_error is None


def test_a_challenger_that_fails_to_load_never_blocks_a_promotion_or_rollback(registry, export_dir):
    clock = Clock()
    a, b = register(registry, export_dir), register(registry, export_dir)
    broken = register(registry, export_dir, corrupt=True)
    registry.promote("m", a, "first", expected_champion=None)
    registry.challenge("m", broken, "split", 0.5, "try it", expected_champion=a)
    before = load_failures("challenger")
    with router_over(registry, clock) as router:
        assert tags(router) == (a, None), "served without the challenger"
        assert "forward.npz" in router.status().challenger.error
        assert load_failures("challenger") == before + 1

        registry.promote("m", b, "b is better", expected_champion=a)
        router.refresh()
        assert tags(router) == (b, None), "the promotion is applied"

        registry.rollback("m", "b degraded", expected_champion=b)
        router.refresh()
        assert tags(router) == (a, None), "the rollback is applied"
        assert router.ready and router.status().champion.error is None
        assert "forward.npz" in router.status().challenger.error


def test_a_new_champion_serves_before_the_challenger_loads(registry, export_dir, wide_export_dir):
    clock = Clock()
    a, b, wide = register(registry, export_dir), register(registry, export_dir), register(registry, wide_export_dir)
    registry.promote("m", a, "first", expected_champion=None)
    routers: list[ModelRouter] = []
    serving_while_loading: list[tuple[str | None, str | None]] = []

    def watching(spec: M.FeatureSpec) -> None:
        if spec == WIDE:
            serving_while_loading.append(tags(routers[0]))

    with router_over(registry, clock, can_serve=watching) as router:
        routers.append(router)
        registry.promote("m", b, "b is better", expected_champion=a)
        registry.challenge("m", wide, "split", 0.5, "and try the wide one", expected_champion=b)
        assert router.refresh() is True
        assert serving_while_loading == [(b, None)]
        assert tags(router) == (b, wide)


def test_a_transient_load_failure_is_retried_with_backoff(registry, export_dir):
    clock = Clock()
    a, b, c = (register(registry, export_dir) for _ in range(3))
    registry.promote("m", a, "first", expected_champion=None)
    with router_over(registry, clock) as router, still_copying(registry, b) as finish_copy:
        registry.promote("m", b, "b is better", expected_champion=a)
        router.refresh()
        status = router.status().champion
        assert (status.serving, status.attempts, status.retry_in) == (a, 1, 1.0)

        clock.advance(0.75)
        assert router.refresh() is False and router.status().champion.attempts == 1, "not before its time"
        clock.advance(0.25)
        router.refresh()
        assert (router.status().champion.attempts, router.status().champion.retry_in) == (2, 2.0)
        clock.advance(2.0)
        router.refresh()
        assert (router.status().champion.attempts, router.status().champion.retry_in) == (3, 4.0)

        registry.reject("m", c, "a registry change in between")
        router.refresh()
        assert router.status().champion.attempts == 4, "a registry change retries at once"

        finish_copy()
        clock.advance(7.75)
        router.refresh()
        assert tags(router) == (a, None)
        clock.advance(0.25)
        assert router.refresh() is True
        assert tags(router) == (b, None) and router.last_error is None
        assert router.status().champion.attempts == 0


def test_backoff_doubles_from_one_second_to_a_minute():
    assert [Backoff().delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_failing_first_refresh_starts_the_router_not_ready(registry, export_dir):
    clock = Clock()
    a = register(registry, export_dir)
    registry.promote("m", a, "first", expected_champion=None)
    with still_copying(registry, a) as finish_copy, router_over(registry, clock) as router:
        assert not router.ready and router.routing.champion is None
        assert a in router.last_error and "feature_spec.json" in router.last_error
        finish_copy()
        clock.advance(1.0)
        router.refresh()
        assert router.ready and tags(router) == (a, None) and router.last_error is None


def test_an_unreadable_history_at_startup_starts_the_router_not_ready(registry, export_dir):
    clock = Clock()
    a, b = register(registry, export_dir), register(registry, export_dir)
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "second", expected_champion=a)
    history = registry.home / "champions" / "m.jsonl"
    good = history.read_text()
    lines = good.splitlines(keepends=True)
    history.write_text(lines[0] + "{garbage\n" + lines[1])
    with router_over(registry, clock) as router:
        assert not router.ready and "m.jsonl:2" in router.last_error
        history.write_text(good)
        router.refresh()
        assert router.ready and tags(router) == (b, None)


def test_a_half_copied_version_in_the_store_does_not_stop_the_router(registry, export_dir):
    clock = Clock()
    a = register(registry, export_dir)
    registry.promote("m", a, "first", expected_champion=None)
    half = registry.home / "models" / "m" / "killedwhilecopying"
    shutil.copytree(registry.model_dir(a), half / "saved_model")  # no model.yaml yet
    assert registry.list("m") == [a]
    with router_over(registry, clock) as router:
        assert router.ready and tags(router) == (a, None)


def test_a_model_whose_features_the_service_cannot_build_is_refused_at_load(registry, export_dir, wide_export_dir):
    clock = Clock()
    a, wide = register(registry, export_dir), register(registry, wide_export_dir)
    registry.promote("m", a, "first", expected_champion=None)
    registry.challenge("m", wide, "split", 0.5, "try the wide model", expected_champion=a)
    before = load_failures("challenger")
    with router_over(registry, clock, can_serve=no_gusts) as router:
        assert tags(router) == (a, None)
        assert "no online feature for ['gusts']" in router.status().challenger.error
        assert load_failures("challenger") == before + 1

        registry.promote("m", wide, "the wide model won offline", expected_champion=a)
        router.refresh()
        assert tags(router) == (a, None), "the servable champion keeps serving"
        assert "no online feature for ['gusts']" in router.status().champion.error


def test_only_the_registrys_challenger_takes_traffic(registry, export_dir):
    clock = Clock()
    a, b, c = (register(registry, export_dir) for _ in range(3))
    registry.promote("m", a, "first", expected_champion=None)
    with router_over(registry, clock) as router:
        assert tags(router) == (a, None), "newer registered models take no traffic"
        registry.reject("m", b, "the gate said no")
        registry.challenge("m", c, "split", 0.3, "try c", expected_champion=a)
        router.refresh()
        routing = router.routing
        assert tags(router) == (a, c) and (routing.mode, routing.share) == ("split", 0.3)
        assert routing.shadow is None

        registry.challenge("m", b, "shadow", 1.0, "shadow b after review", expected_champion=a, force=True)
        router.refresh()
        routing = router.routing
        assert tags(router) == (a, b) and routing.mode == "shadow" and routing.shadow is routing.challenger
        assert {routing.assign(f"k{i}").tag for i in range(200)} == {a}, "a shadow answers no request"

        registry.retire("m", "b is worse", expected_challenger=b)
        router.refresh()
        assert tags(router) == (a, None) and router.routing.mode is None


def test_the_split_is_sticky_and_follows_the_share():
    champion, challenger = Variant("champion", "m:a", None), Variant("challenger", "m:b", None)
    keys = [f"2013-01-06:UA{i}:EWR" for i in range(4000)]
    half = Routing(champion, challenger, "split", 0.5)
    assigned = {k: half.assign(k).name for k in keys}
    assert 0.45 < list(assigned.values()).count("challenger") / len(keys) < 0.55
    assert all(Routing(champion, challenger, "split", 0.5).assign(k).name == v for k, v in assigned.items())
    tenth = Routing(champion, challenger, "split", 0.1)
    assert all(assigned[k] == "challenger" for k in keys if tenth.assign(k).name == "challenger"), "nested shares"
    assert {Routing(champion, None).assign(k).name for k in keys[:50]} == {"champion"}
    with pytest.raises(LookupError, match="no champion"):
        Routing(None, None).assign(keys[0])
