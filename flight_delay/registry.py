"""The model registry: immutable, versioned BentoML models and the champion history.

Each trained model is a BentoML model (``bentoml.models.create``) whose folder holds the exported
SavedModel; labels and metadata carry its metrics, feature service, training window and lineage.
A version appears in the store in one rename, complete, or not at all.

What serves is decided by events in an append-only JSON-lines history per model name
(``champions/<name>.jsonl``): ``promote``, ``rollback``, ``challenge``, ``retire`` and ``reject``.
The current state (champion, challenger, barred models, earlier champions) is the fold of those
events (:func:`fold`). Every change is a compare-and-set: the caller says which champion (or
challenger) it decided against, and the decision is checked and written under one file lock, so
two concurrent changes can never both win. With a database URL (``FLIGHT_DELAY_DATABASE_URL``)
the history is a PostgreSQL table instead, shared by every replica, with the same compare-and-set
(:mod:`flight_delay.champion_history`). Pipeline and service both use this module; it imports
neither Dagster nor the serving code.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flight_delay.object_store import S3Location
from flight_delay.paths import DataLayout

log = logging.getLogger(__name__)

MODEL_SUBDIR = "saved_model"
MODEL_YAML = "model.yaml"
STAGING_DIR = ".incoming"  # beside models/, on the same file system, so a version moves in by rename
ACTIONS = ("promote", "rollback", "challenge", "retire", "reject")
MODES = ("split", "shadow")


class ConflictError(LookupError):
    """The registry is not in the state the caller decided against (compare-and-set failed)."""

    def __init__(self, name: str, what: str, expected: str | None, actual: str | None) -> None:
        super().__init__(
            f"{name}: expected {what} {expected or 'none'}, actual {actual or 'none'}: the registry changed "
            "since it was read; read the state again and decide again"
        )
        self.expected, self.actual = expected, actual


def _check_challenge(mode: Any, share: Any) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not (isinstance(share, int | float) and math.isfinite(share) and 0 <= share <= 1):
        raise ValueError(f"share must be a number from 0 to 1; got {share!r}")


@dataclass(frozen=True)
class ChampionEvent:
    """One line of the history: a decision about which model serves."""

    model_name: str
    tag: str
    action: str  # one of ACTIONS
    reason: str
    at: str
    previous: str | None  # the champion when the decision was made
    details: dict[str, Any] = field(default_factory=dict)  # challenge: mode, share, forced; any: the caller's (run id)

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
        if self.action == "challenge":
            _check_challenge(self.details.get("mode"), self.details.get("share"))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Challenger:
    tag: str
    mode: str  # "split": takes ``share`` of the flights; "shadow": scored beside the champion, answers none
    share: float


@dataclass(frozen=True)
class RegistryState:
    """What the history says now."""

    champion: str | None
    challenger: Challenger | None
    barred: dict[str, str]  # tag -> why it may not take traffic again unless named explicitly
    previous_champions: tuple[str, ...]  # most recent first, the champion excluded

    @property
    def serving(self) -> tuple[str, ...]:
        """The tags that take traffic: the champion, then the challenger."""
        return tuple(t for t in (self.champion, self.challenger.tag if self.challenger else None) if t)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def fold(events: Iterable[ChampionEvent]) -> RegistryState:
    """The state a history leads to."""
    champion: str | None = None
    challenger: Challenger | None = None
    barred: dict[str, str] = {}
    previous: list[str] = []
    for e in events:
        if e.action in ("promote", "rollback"):
            if e.action == "rollback" and champion is not None:
                barred[champion] = f"rolled back from at {e.at}: {e.reason}"
            else:
                barred.pop(e.tag, None)  # an explicit promotion lifts a bar
            previous = [t for t in previous if t != e.tag]
            if champion is not None and champion != e.tag:
                previous.insert(0, champion)
            champion = e.tag
        elif e.action == "challenge":
            challenger = Challenger(e.tag, e.details["mode"], float(e.details["share"]))
            barred.pop(e.tag, None)
            continue
        else:  # retire, reject
            barred[e.tag] = f"{'retired' if e.action == 'retire' else 'rejected'} at {e.at}: {e.reason}"
        if challenger is not None and challenger.tag == e.tag:
            challenger = None
    return RegistryState(champion, challenger, barred, tuple(previous))


def _read_history(path: Path) -> tuple[list[ChampionEvent], int | None]:
    """The events of a history file, and the offset where a torn last line starts (None if whole).

    A crash or a full disk can leave the last line partial or NUL-filled: it is ignored (the next
    append cuts it off). An unreadable line followed by others is damage no crash explains: an error.
    """
    if not path.exists():
        return [], None
    data = path.read_bytes()
    lines: list[tuple[int, int, bytes]] = []  # (line number, offset, bytes)
    offset = 0
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            lines.append((number, offset, raw))
        offset += len(raw) + 1
    events = []
    for i, (number, offset, raw) in enumerate(lines):
        try:
            fields = json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if i == len(lines) - 1:
                log.warning("%s:%d: torn last line ignored (%d bytes: %r)", path, number, len(raw), raw[:60])
                return events, offset
            raise ValueError(
                f"{path}:{number}: not a champion event: {raw[:200]!r}; {len(lines) - 1 - i} more lines follow "
                "it, so it is no torn write: repair the file by hand"
            ) from exc
        try:
            events.append(ChampionEvent(**fields))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}:{number}: not a champion event: {raw[:200]!r} ({exc})") from exc
    return events, None


class ModelRegistry:
    """Models of a local BentoML store (``<home>/models``) and their champion history: files in
    ``<home>/champions``, or with ``database_url`` a table in PostgreSQL. With ``s3`` (the aws and
    k8s profiles) the versions are archives in S3 registered in the database, and the local store is
    a verified cache of them (:mod:`flight_delay.model_store`)."""

    def __init__(
        self, home: str | os.PathLike[str], database_url: str | None = None, s3: S3Location | None = None
    ) -> None:
        from bentoml._internal.models.model import ModelStore

        self.home = Path(home)
        (self.home / "models").mkdir(parents=True, exist_ok=True)
        self._store = ModelStore(str(self.home / "models"))
        self._history_dir = self.home / "champions"
        self._history_dir.mkdir(parents=True, exist_ok=True)
        self.database_url = database_url  # holds a password: never logged
        self._database: Any = None
        if database_url is not None:
            from flight_delay.champion_history import DatabaseHistory  # psycopg only when used

            self._database = DatabaseHistory(database_url)
        self._versions: Any = None
        if s3 is not None:
            if database_url is None:
                raise ValueError(
                    f"model versions in {s3} need a database URL (FLIGHT_DELAY_DATABASE_URL) to register them"
                )
            from flight_delay.model_store import S3ModelVersions

            self._versions = S3ModelVersions(s3, database_url)

    # -- models -------------------------------------------------------------------------------

    @classmethod
    def of(cls, layout: DataLayout) -> ModelRegistry:
        """The registry of a deployment: its BentoML home, and its shared database and bucket when
        its profile and settings name them (what the service, the pipeline and the tools open)."""
        return cls(layout.bentoml_home, layout.database_url, layout.s3)

    def register(
        self,
        name: str,
        write: Callable[[Path], None],
        labels: dict[str, str],
        metadata: dict[str, Any],
    ) -> str:
        """Create a new immutable model version; ``write`` fills its folder. Returns the tag.

        BentoML writes the model in a temporary folder and then copies it into the store, where a
        reader could see it half-copied; here the copy goes to a staging store beside it and the
        finished version is moved in with one rename.
        """
        import bentoml
        from bentoml._internal.models.model import ModelStore

        bad = {k: v for k, v in labels.items() if not isinstance(v, str)}
        if bad:
            raise TypeError(f"BentoML labels must be strings; got {bad}")
        staging = self.home / STAGING_DIR
        staging.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as tmp:
            with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=ModelStore(tmp)) as model:
                write(Path(model.path) / MODEL_SUBDIR)
                if not (Path(model.path) / MODEL_SUBDIR).is_dir():
                    raise ValueError(f"registering {model.tag}: write() created no {MODEL_SUBDIR}/ folder")
            tag = model.tag
            if self._versions is not None:  # uploaded and registered before it is in the local store
                self._versions.publish(tag, ModelStore(tmp), staging)
            target = self.home / "models" / tag.path()
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(Path(tmp) / tag.path(), target)
        latest = staging / f"{tag.version}.latest"  # BentoML's own "latest" pointer, for its CLI
        latest.write_text(str(tag.version))
        os.replace(latest, self.home / "models" / tag.latest_path())
        return str(tag)

    def publish(self, tag: str) -> None:
        """Upload a version of the local store to S3 and register it there (``register`` does so
        itself: this is for a version made without S3); a registered version is refused."""
        if self._versions is None:
            raise ValueError("this registry has no S3 location to publish to")
        self._versions.publish(self.get(tag).tag, self._store, self.home / STAGING_DIR)

    def _complete(self, model: Any, where: str) -> Any:
        if not Path(model.path, MODEL_SUBDIR).is_dir():
            raise LookupError(f"model {where} is incomplete: no {MODEL_SUBDIR}/ (a copy cut short?)")
        return model

    def get(self, tag: str) -> Any:
        """The BentoML model of ``tag`` (``name:version``); raises if the store has no complete such tag."""
        from bentoml._internal.tag import Tag
        from bentoml.exceptions import NotFound

        parsed = Tag.from_taglike(tag)
        if self._versions is not None:  # a floating tag means the latest registered version
            if parsed.version in (None, "latest"):
                parsed = Tag.from_taglike(self._versions.latest(parsed.name))
            present = (self.home / "models" / parsed.path()).is_dir
            if not present():
                self._versions.fetch(parsed, self.home, present)
        try:
            model = self._store.get(parsed)
        except NotFound as exc:
            raise LookupError(f"model {tag!r} is not in the registry at {self.home}") from exc
        except Exception as exc:  # still being copied, or cut short: no model.yaml, a torn one
            raise LookupError(f"model {tag!r} in {self.home} is incomplete: {type(exc).__name__}: {exc}") from exc
        return self._complete(model, f"{tag!r} in {self.home}")

    def canonical(self, name: str, tag: str) -> str:
        """``tag`` resolved through the store to ``name:version``; a floating tag (``name`` alone,
        ``name:latest``) is refused: the history must say which model served."""
        from bentoml._internal.tag import Tag

        parsed = Tag.from_taglike(tag)
        if parsed.version in (None, "latest"):
            raise ValueError(
                f"expected a model version as name:version, got {tag!r}, a floating pointer; "
                f"the versions of {name} are listed by `python -m flight_delay.registry --model {name} state`"
                " and ModelRegistry.list"
            )
        if parsed.name != name:
            raise ValueError(f"{tag} is not a version of {name}")
        if self._versions is not None:  # registered is enough: a decision needs no download
            return self._versions.require(parsed).tag
        return str(self.get(str(parsed)).tag)

    def model_dir(self, tag: str) -> Path:
        """Folder of the exported SavedModel of ``tag``."""
        return Path(self.get(tag).path) / MODEL_SUBDIR

    def list(self, name: str) -> list[str]:
        """Every complete version of ``name``, oldest first; incomplete ones are skipped with a warning.
        With S3: every registered version, fetched or not."""
        from bentoml._internal.models.model import Model

        if self._versions is not None:
            return self._versions.versions(name)

        folder = self.home / "models" / name
        models = []
        for version in sorted(folder.iterdir()) if folder.is_dir() else []:
            if not version.is_dir():
                continue  # BentoML's "latest" pointer
            try:
                model = self._complete(Model.from_path(version), str(version))
                if str(model.tag) != f"{name}:{version.name}":
                    raise LookupError(f"{version / MODEL_YAML} names {model.tag}, not {name}:{version.name}")
            except Exception as exc:  # a version cut short can fail in any way while it is parsed
                log.warning("skipping %s: not a complete model version (%s: %s)", version, type(exc).__name__, exc)
                continue
            models.append(model)
        models.sort(key=lambda m: m.info.creation_time)
        return [str(m.tag) for m in models]

    # -- history ------------------------------------------------------------------------------
    def _history_file(self, name: str) -> Path:
        return self._history_dir / f"{name}.jsonl"

    @contextmanager
    def _locked(self, name: str) -> Iterator[Path]:
        path = self._history_file(name)
        with open(path.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield path
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def stamp(self, name: str) -> tuple[int, ...]:
        """Changes whenever a decision about ``name`` is recorded or a version of it is added (cheap:
        two stats, or a stat and one index lookup, for watchers that poll)."""
        stamp: list[int] = []
        if self._database is not None:
            stamp += self._database.stamp(name)
        if self._versions is not None:
            stamp += self._versions.stamp(name)
        history = () if self._database is not None else (self._history_file(name),)
        for path in (*history, self.home / "models" / name):
            try:
                st = path.stat()
            except FileNotFoundError:
                stamp += [0, 0, 0]
            else:  # the size too: two appends within one mtime tick still differ
                stamp += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamp)

    def history(self, name: str) -> list[ChampionEvent]:
        """Every decision about ``name``, oldest first."""
        if self._database is not None:
            return self._database.events(name)
        return _read_history(self._history_file(name))[0]

    def state(self, name: str) -> RegistryState:
        """Champion, challenger, barred models and earlier champions of ``name`` now."""
        return fold(self.history(name))

    def champion(self, name: str) -> str | None:
        """Tag of the current champion of ``name``, or None before the first promotion."""
        return self.state(name).champion

    def _record(self, name: str, decide: Callable[[RegistryState], ChampionEvent]) -> ChampionEvent:
        """Read the state, decide and append the event, all under the lock (or as one
        compare-and-set in the database)."""
        if self._database is not None:
            return self._database.record(name, decide)
        with self._locked(name) as path:
            events, torn_at = _read_history(path)
            event = decide(fold(events))
            with open(path, "a+b") as fh:
                if torn_at is not None:
                    fh.truncate(torn_at)
                    log.warning("%s: cut off the torn last line at byte %d", path, torn_at)
                end = fh.seek(0, os.SEEK_END)
                newline = b""
                if end:
                    fh.seek(end - 1)
                    newline = b"" if fh.read(1) == b"\n" else b"\n"  # a whole last line without its newline
                fh.write(newline + event.to_json().encode() + b"\n")
                fh.flush()
                os.fsync(fh.fileno())
        return event

    @staticmethod
    def _event(
        name: str,
        tag: str,
        action: str,
        reason: str,
        state: RegistryState,
        extra: Mapping[str, Any] | None,
        **details: Any,
    ) -> ChampionEvent:
        """``extra``: what the caller records beside the decision (the Dagster run that made it, the
        figures behind it); it cannot override the decision's own details."""
        clash = sorted(set(extra or {}) & set(details))
        if clash:
            raise ValueError(f"details {clash} are the {action} event's own; record them under other names")
        at = datetime.now(UTC).isoformat()
        return ChampionEvent(name, tag, action, reason, at, state.champion, {**(extra or {}), **details})

    @staticmethod
    def _expect_champion(name: str, state: RegistryState, expected: str | None) -> None:
        if state.champion != expected:
            raise ConflictError(name, "champion", expected, state.champion)

    def promote(
        self,
        name: str,
        tag: str,
        reason: str,
        expected_champion: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> ChampionEvent:
        """Make ``tag`` the champion of ``name`` if ``expected_champion`` still is (None: no champion
        yet). An explicit promotion also lifts a bar (rejected, rolled back, retired)."""
        tag = self.canonical(name, tag)

        def decide(state: RegistryState) -> ChampionEvent:
            self._expect_champion(name, state, expected_champion)
            if state.champion == tag:
                raise ValueError(f"{tag} is already the champion of {name}")
            return self._event(name, tag, "promote", reason, state, details)

        return self._record(name, decide)

    def promote_guarded(
        self,
        name: str,
        tag: str,
        reason: str,
        expected_champion: str | None,
        details: Mapping[str, Any] | None = None,
    ) -> list[ChampionEvent]:
        """:meth:`promote`, then the champion it replaced scored in shadow beside ``tag``: the
        rollback guard that the loop's rollback sensor judges on live feedback (none before the
        first champion)."""
        events = [self.promote(name, tag, reason, expected_champion, details)]
        if expected_champion is not None:
            tag = self.canonical(name, tag)
            guard = f"rollback guard: the replaced champion is scored in shadow beside {tag}"
            events.append(self.challenge(name, expected_champion, "shadow", 1.0, guard, tag, details=details))
        return events

    def rollback(
        self,
        name: str,
        reason: str,
        expected_champion: str | None,
        to_tag: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> ChampionEvent:
        """Restore ``to_tag``, or by default the most recent earlier champion that is not barred; the
        champion rolled back from is barred."""
        target = self.canonical(name, to_tag) if to_tag is not None else None

        def decide(state: RegistryState) -> ChampionEvent:
            self._expect_champion(name, state, expected_champion)
            if state.champion is None:
                raise LookupError(f"{name} has no champion to roll back from")
            if target is None:
                allowed = [t for t in state.previous_champions if t not in state.barred]
                if not allowed:
                    raise LookupError(
                        f"{name} has no earlier champion to roll back to (earlier: "
                        f"{list(state.previous_champions) or 'none'}, all barred or none)"
                    )
                return self._event(name, allowed[0], "rollback", reason, state, details)
            if target == state.champion:
                raise ValueError(f"{target} is already the champion of {name}")
            if target not in state.previous_champions:
                raise LookupError(f"{target} was never a champion of {name}; rollback restores earlier champions")
            if target in state.barred:
                raise ValueError(
                    f"{target} was {state.barred[target]}; a rollback restores a model that served well: "
                    "promote it explicitly if you mean it"
                )
            return self._event(name, target, "rollback", reason, state, details)

        return self._record(name, decide)

    def challenge(
        self,
        name: str,
        tag: str,
        mode: str,
        share: float,
        reason: str,
        expected_champion: str | None,
        force: bool = False,
        details: Mapping[str, Any] | None = None,
    ) -> ChampionEvent:
        """Make ``tag`` the challenger of ``expected_champion``: in ``mode`` "split" it takes ``share``
        of the flights (0 to 1); in "shadow" it is scored beside the champion and answers none. A
        barred model (rejected, rolled back from, retired) needs ``force``."""
        _check_challenge(mode, share)
        tag = self.canonical(name, tag)

        def decide(state: RegistryState) -> ChampionEvent:
            self._expect_champion(name, state, expected_champion)
            if state.champion is None:
                raise LookupError(f"{name} has no champion to challenge")
            if tag == state.champion:
                raise ValueError(f"{tag} is the champion of {name}; a challenger is another model")
            if tag in state.barred and not force:
                raise ValueError(
                    f"{tag} was {state.barred[tag]}; pass force=True (--force) to make it the challenger anyway"
                )
            return self._event(
                name, tag, "challenge", reason, state, details, mode=mode, share=float(share), forced=force
            )

        return self._record(name, decide)

    def retire(
        self, name: str, reason: str, expected_challenger: str, details: Mapping[str, Any] | None = None
    ) -> ChampionEvent:
        """Remove the challenger ``expected_challenger`` and bar it."""

        def decide(state: RegistryState) -> ChampionEvent:
            actual = state.challenger.tag if state.challenger else None
            if actual != expected_challenger:
                raise ConflictError(name, "challenger", expected_challenger, actual)
            return self._event(name, expected_challenger, "retire", reason, state, details)

        return self._record(name, decide)

    def reject(self, name: str, tag: str, reason: str, details: Mapping[str, Any] | None = None) -> ChampionEvent:
        """Record that a candidate was judged and not promoted: it is barred from traffic."""
        tag = self.canonical(name, tag)

        def decide(state: RegistryState) -> ChampionEvent:
            if tag == state.champion:
                raise ValueError(f"{tag} is the champion of {name}; roll it back instead of rejecting it")
            return self._event(name, tag, "reject", reason, state, details)

        return self._record(name, decide)


def main(argv: list[str] | None = None) -> int:
    """``python -m flight_delay.registry``: the command line of :mod:`flight_delay.registry_cli`."""
    from flight_delay.registry_cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    raise SystemExit(main())
