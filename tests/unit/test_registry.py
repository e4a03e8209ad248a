"""The registry keeps every version immutable and complete, and every champion and challenger
decision in an append-only history that survives a torn write and concurrent writers."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import pytest

from flight_delay.registry import Challenger, ConflictError, ModelRegistry, main
from tests.support.processes import race


def _write(text: str, files: int = 1):
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        for i in range(files):
            (path / f"weights{i}.txt").write_text(text)

    return write


@pytest.fixture(params=["files", "postgres"])
def registry(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ModelRegistry:
    """A registry whose champion history is a file, or a table in a real PostgreSQL (the command
    line then finds it through FLIGHT_DELAY_DATABASE_URL, as a deployment's would)."""
    url = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    if url:
        monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", url)
    return ModelRegistry(tmp_path / "bentoml", url)


# The tests of the history file itself.
files_only = pytest.mark.parametrize("registry", ["files"], indirect=True)


def _models(registry: ModelRegistry, n: int) -> list[str]:
    return [registry.register("m", _write(str(i)), {}, {}) for i in range(n)]


def _history_file(registry: ModelRegistry) -> Path:
    return registry.home / "champions" / "m.jsonl"


# -- model versions -----------------------------------------------------------------------------
@files_only
def test_register_keeps_labels_metadata_and_files(registry):
    tag = registry.register("m", _write("one"), {"feature_service": "svc_v1"}, {"metrics": {"auc": 0.8}})
    model = registry.get(tag)
    assert model.info.labels["feature_service"] == "svc_v1"
    assert model.info.metadata["metrics"]["auc"] == 0.8
    assert (registry.model_dir(tag) / "weights0.txt").read_text() == "one"


@files_only
def test_labels_must_be_strings(registry):
    with pytest.raises(TypeError, match="labels must be strings"):
        registry.register("m", _write("x"), {"auc": 0.8}, {})  # type: ignore[dict-item]


@files_only
def test_versions_are_listed_oldest_first(registry):
    tags = _models(registry, 3)
    assert registry.list("m") == tags


@files_only
def test_a_failed_write_leaves_no_version_behind(registry):
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "half.txt").write_text("half")
        raise RuntimeError("training run killed")

    with pytest.raises(RuntimeError, match="killed"):
        registry.register("m", write, {}, {})
    assert registry.list("m") == []


@files_only
def test_a_version_appears_only_when_complete(registry):
    """A reader listing the store while a large model is registered never sees it half-copied."""
    files = 3000
    seen: list[str] = []
    faults: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            try:
                for tag in registry.list("m"):
                    count = sum(1 for _ in registry.model_dir(tag).iterdir())
                    if count != files:
                        faults.append(f"{tag} listed with {count} of {files} files")
                    seen.append(tag)
            except Exception as exc:
                faults.append(f"{type(exc).__name__}: {exc}")

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        tag = registry.register("m", _write("w", files=files), {}, {})
    finally:
        done.set()
        watcher.join()
    assert not faults, faults[:3]
    assert registry.list("m") == [tag]


@files_only
def test_a_half_copied_version_is_skipped_with_a_warning(registry, caplog):
    (good,) = _models(registry, 1)
    store = registry.home / "models" / "m"
    no_yaml = store / "killedduringcopy"
    shutil.copytree(store / good.split(":")[1], no_yaml)
    (no_yaml / "model.yaml").unlink()
    torn_yaml = store / "tornyaml"
    shutil.copytree(store / good.split(":")[1], torn_yaml)
    (torn_yaml / "model.yaml").write_text((torn_yaml / "model.yaml").read_text()[:40])
    no_artifact = store / "noartifact"
    shutil.copytree(store / good.split(":")[1], no_artifact)
    shutil.rmtree(no_artifact / "saved_model")
    with caplog.at_level(logging.WARNING, logger="flight_delay.registry"):
        assert registry.list("m") == [good]
    for name in ("killedduringcopy", "tornyaml", "noartifact"):
        assert name in caplog.text
    for name in ("killedduringcopy", "tornyaml", "noartifact"):
        with pytest.raises(LookupError, match="incomplete"):
            registry.get(f"m:{name}")


# -- canonical tags -----------------------------------------------------------------------------
@files_only
def test_tags_are_resolved_to_name_and_version(registry):
    (a,) = _models(registry, 1)
    name, version = a.split(":")
    for floating in ("m", "m:latest"):
        with pytest.raises(ValueError, match="name:version"):
            registry.promote("m", floating, "a floating pointer", expected_champion=None)
    with pytest.raises(ValueError, match="other:.*is not a version of m"):
        registry.promote("m", f"other:{version}", "wrong model", expected_champion=None)
    event = registry.promote("m", f"m:{version[:6]}", "a unique prefix", expected_champion=None)
    assert event.tag == a and registry.champion("m") == a
    assert json.loads(_history_file(registry).read_text().splitlines()[-1])["tag"] == a


def test_cannot_promote_an_unknown_model(registry):
    with pytest.raises(LookupError, match="not in the registry"):
        registry.promote("m", "m:doesnotexist", "typo", expected_champion=None)


# -- champion history as events -----------------------------------------------------------------
def test_promote_and_rollback_keep_history(registry):
    a, b, c = _models(registry, 3)
    assert registry.champion("m") is None
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "better", expected_champion=a)
    registry.promote("m", c, "better again", expected_champion=b)
    event = registry.rollback("m", "c degraded", expected_champion=c)
    assert registry.champion("m") == b and event.previous == c and event.action == "rollback"
    registry.rollback("m", "restore the first", expected_champion=b, to_tag=a)
    assert registry.champion("m") == a
    assert [e.tag for e in registry.history("m")] == [a, b, c, b, a]
    state = registry.state("m")
    assert state.previous_champions == (b, c)
    assert set(state.barred) == {c, b}, "each model rolled back from is barred"


def test_a_rollback_never_returns_to_a_model_rolled_back_from(registry):
    a, b, c = _models(registry, 3)
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "better", expected_champion=a)
    registry.promote("m", c, "better", expected_champion=b)
    registry.rollback("m", "c degraded", expected_champion=c)
    assert registry.rollback("m", "b degraded too", expected_champion=b).tag == a
    with pytest.raises(ValueError, match=f"{c} was rolled back from.*promote it explicitly"):
        registry.rollback("m", "back to c", expected_champion=a, to_tag=c)
    registry.promote("m", c, "fixed upstream, promoted by hand", expected_champion=a)
    assert registry.champion("m") == c and c not in registry.state("m").barred


def test_history_survives_a_new_registry_object(registry, tmp_path):
    (a,) = _models(registry, 1)
    registry.promote("m", a, "first", expected_champion=None)
    assert ModelRegistry(tmp_path / "bentoml", registry.database_url).champion("m") == a


def test_rollback_needs_an_earlier_champion(registry):
    (a,) = _models(registry, 1)
    with pytest.raises(LookupError, match="no champion"):
        registry.rollback("m", "nothing yet", expected_champion=None)
    registry.promote("m", a, "first", expected_champion=None)
    with pytest.raises(LookupError, match="no earlier champion"):
        registry.rollback("m", "nothing earlier", expected_champion=a)
    b = registry.register("m", _write("b"), {}, {})
    with pytest.raises(LookupError, match="never a champion"):
        registry.rollback("m", "b never served", expected_champion=a, to_tag=b)


def test_challenger_is_set_only_by_an_explicit_decision(registry):
    a, b, c = _models(registry, 3)
    registry.promote("m", a, "first", expected_champion=None)
    assert registry.state("m").challenger is None, "a newly registered model is no challenger"
    registry.challenge("m", b, "split", 0.25, "try b on a quarter", expected_champion=a)
    assert registry.state("m").challenger == Challenger(b, "split", 0.25)
    registry.challenge("m", c, "shadow", 1.0, "shadow c instead", expected_champion=a)
    assert registry.state("m").challenger == Challenger(c, "shadow", 1.0)
    registry.promote("m", c, "c won", expected_champion=a)
    assert registry.state("m").challenger is None, "promoting the challenger clears it"
    assert registry.state("m").serving == (c,)
    for mode, share in (("canary", 0.1), ("split", 1.5), ("split", float("nan"))):
        with pytest.raises(ValueError, match="mode|share"):
            registry.challenge("m", b, mode, share, "bad", expected_champion=c)
    with pytest.raises(ValueError, match="is the champion"):
        registry.challenge("m", c, "split", 0.1, "itself", expected_champion=c)


def test_retire_bars_the_challenger(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    registry.challenge("m", b, "split", 0.1, "try b", expected_champion=a)
    with pytest.raises(ConflictError, match=f"expected challenger {a}.*actual {b}"):
        registry.retire("m", "wrong one", expected_challenger=a)
    registry.retire("m", "b is worse live", expected_challenger=b)
    state = registry.state("m")
    assert state.challenger is None and "retired" in state.barred[b]
    with pytest.raises(ConflictError, match="actual none"):
        registry.retire("m", "again", expected_challenger=b)


def test_rejected_and_rolled_back_models_become_challenger_only_when_forced(registry):
    a, b, c = _models(registry, 3)
    registry.promote("m", a, "first", expected_champion=None)
    registry.reject("m", b, "AUC below the champion's")
    with pytest.raises(ValueError, match=f"{b} was rejected.*AUC below.*force"):
        registry.challenge("m", b, "split", 0.1, "try anyway", expected_champion=a)
    registry.promote("m", c, "c better", expected_champion=a)
    registry.rollback("m", "c degraded live", expected_champion=c)
    with pytest.raises(ValueError, match=f"{c} was rolled back from.*c degraded live.*force"):
        registry.challenge("m", c, "split", 0.1, "c again", expected_champion=a)
    assert registry.state("m").challenger is None
    event = registry.challenge("m", c, "shadow", 1.0, "shadow c after the fix", expected_champion=a, force=True)
    assert event.details == {"mode": "shadow", "share": 1.0, "forced": True}
    assert registry.state("m").challenger == Challenger(c, "shadow", 1.0)
    with pytest.raises(ValueError, match="is the champion"):
        registry.reject("m", a, "the champion cannot be rejected")


# -- compare and set ----------------------------------------------------------------------------
def test_a_stale_expectation_is_a_conflict_naming_both(registry):
    a, b, c = _models(registry, 3)
    registry.promote("m", a, "first", expected_champion=None)
    with pytest.raises(ConflictError, match="expected champion none.*actual " + a) as info:
        registry.promote("m", b, "stale", expected_champion=None)
    assert isinstance(info.value, LookupError) and (info.value.expected, info.value.actual) == (None, a)
    with pytest.raises(ConflictError, match=f"expected champion {b}.*actual {a}"):
        registry.rollback("m", "stale", expected_champion=b)
    with pytest.raises(ConflictError):
        registry.challenge("m", c, "split", 0.1, "stale", expected_champion=b)
    assert [e.tag for e in registry.history("m")] == [a]


def test_concurrent_promote_and_rollback_in_threads_only_one_wins(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "second", expected_champion=a)
    extra = _models(registry, 6)
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def promote(tag: str) -> None:
        barrier.wait()
        try:
            outcomes.append(registry.promote("m", tag, "race", expected_champion=b).tag)
        except ConflictError:
            outcomes.append("conflict")

    def rollback() -> None:
        barrier.wait()
        try:
            outcomes.append(registry.rollback("m", "race", expected_champion=b).tag)
        except ConflictError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=promote, args=(t,)) for t in extra]
    threads += [threading.Thread(target=rollback) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (winner,) = [o for o in outcomes if o != "conflict"]
    assert outcomes.count("conflict") == 7
    assert registry.champion("m") == winner
    assert len(registry.history("m")) == 3


def _race(home: str, url: str | None, action: str, tag: str, expected: str, barrier, results) -> None:
    registry = ModelRegistry(home, url)
    barrier.wait()
    try:
        if action == "promote":
            results.put(registry.promote("m", tag, "race", expected_champion=expected).tag)
        else:
            results.put(registry.rollback("m", "race", expected_champion=expected).tag)
    except ConflictError:
        results.put("conflict")


def test_concurrent_promote_and_rollback_in_processes_only_one_wins(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "second", expected_champion=a)
    c, d = _models(registry, 2)
    jobs = [("promote", c), ("promote", d), ("rollback", ""), ("rollback", "")]
    outcomes = race(_race, [(str(registry.home), registry.database_url, act, tag, b) for act, tag in jobs])
    (winner,) = [o for o in outcomes if o != "conflict"]
    assert registry.champion("m") == winner and len(registry.history("m")) == 3


# -- a torn history -----------------------------------------------------------------------------
@files_only
@pytest.mark.parametrize("tail", [b'{"model_name": "m", "tag": "m:', b"\x00" * 512, b"\x00" * 64 + b"\n"])
def test_a_torn_last_line_is_ignored_and_repaired_at_the_next_append(registry, caplog, tail):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    with open(_history_file(registry), "ab") as fh:
        fh.write(tail)
    with caplog.at_level(logging.WARNING, logger="flight_delay.registry"):
        assert registry.champion("m") == a
        assert [e.tag for e in registry.history("m")] == [a]
    assert "m.jsonl:2" in caplog.text and "torn" in caplog.text
    registry.promote("m", b, "after the crash", expected_champion=a)
    lines = _history_file(registry).read_bytes().split(b"\n")
    assert lines[-1] == b"" and all(json.loads(line) for line in lines[:-1]), lines
    assert [e.tag for e in registry.history("m")] == [a, b]


@files_only
def test_a_last_line_without_newline_but_whole_is_kept(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    path = _history_file(registry)
    path.write_bytes(path.read_bytes().rstrip(b"\n"))
    registry.promote("m", b, "next", expected_champion=a)
    assert [e.tag for e in registry.history("m")] == [a, b]


@files_only
def test_a_corrupt_line_in_the_middle_is_an_error_naming_it(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None)
    registry.promote("m", b, "second", expected_champion=a)
    first, second = _history_file(registry).read_text().splitlines(keepends=True)
    _history_file(registry).write_text(first + "{not json\n" + second)
    with pytest.raises(ValueError, match="m.jsonl:2: not a champion event.*1 more lines follow"):
        registry.champion("m")
    with pytest.raises(ValueError, match="m.jsonl:2"):
        registry.rollback("m", "on a damaged history", expected_champion=b)


# -- the command line ---------------------------------------------------------------------------
def test_cli_promote_challenge_retire_rollback_and_state(registry, capsys):
    a, b, c = _models(registry, 3)
    home = ["--home", str(registry.home), "--model", "m"]
    assert main([*home, "promote", a, "--reason", "first", "--expect", "none"]) == 0
    assert main([*home, "promote", b, "--reason", "stale", "--expect", c]) == 1
    assert f"expected champion {c}" in capsys.readouterr().err
    assert main([*home, "promote", b, "--reason", "b", "--expect", a, "--no-guard"]) == 0
    assert main([*home, "challenge", c, "--mode", "split", "--share", "0.2", "--reason", "try c"]) == 0
    assert main([*home, "retire", "--reason", "c is worse"]) == 0
    assert main([*home, "challenge", c, "--mode", "split", "--share", "0.2", "--reason", "again"]) == 1
    assert "retired" in capsys.readouterr().err
    assert main([*home, "rollback", "--reason", "b degraded"]) == 0
    capsys.readouterr()
    assert main([*home, "state"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["champion"] == a and state["challenger"] is None and set(state["barred"]) == {b, c}
    assert main([*home, "history"]) == 0
    actions = [json.loads(line)["action"] for line in capsys.readouterr().out.splitlines()]
    assert actions == ["promote", "promote", "challenge", "retire", "rollback"]


def test_a_promotion_by_hand_guards_the_new_champion_with_the_one_it_replaced(registry, capsys):
    a, b = _models(registry, 2)
    home = ["--home", str(registry.home), "--model", "m"]
    assert main([*home, "promote", a, "--reason", "first", "--expect", "none"]) == 0
    assert registry.state("m").challenger is None  # nothing to guard the first champion with
    assert main([*home, "promote", b, "--reason", "by hand", "--expect", a]) == 0
    state = registry.state("m")
    assert state.champion == b and (state.challenger.tag, state.challenger.mode) == (a, "shadow")
    assert [e.action for e in registry.history("m")] == ["promote", "promote", "challenge"]
    assert "rollback guard" in registry.history("m")[-1].reason


@files_only
def test_an_event_that_breaks_the_rules_is_an_error_naming_its_line(registry):
    (a,) = _models(registry, 1)
    registry.promote("m", a, "first", expected_champion=None)
    bad = {**json.loads(_history_file(registry).read_text()), "action": "challenge", "details": {"share": 2}}
    with open(_history_file(registry), "a") as fh:
        fh.write(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="m.jsonl:2: not a champion event.*mode must be one of split, shadow"):
        registry.state("m")


def test_events_carry_the_callers_details_but_not_over_their_own(registry):
    a, b = _models(registry, 2)
    registry.promote("m", a, "first", expected_champion=None, details={"dagster_run_id": "run-1"})
    event = registry.challenge(
        "m", b, "shadow", 1.0, "retrained", expected_champion=a, details={"dagster_run_id": "r2"}
    )
    assert event.details == {"dagster_run_id": "r2", "mode": "shadow", "share": 1.0, "forced": False}
    assert [e.details.get("dagster_run_id") for e in registry.history("m")] == ["run-1", "r2"]
    with pytest.raises(ValueError, match="own"):
        registry.challenge("m", b, "shadow", 1.0, "again", expected_champion=a, details={"share": 0.5})
    assert registry.state("m").challenger.tag == b
