"""The model registry: immutable, versioned BentoML models and a champion pointer with history.

Each trained model is a BentoML model (``bentoml.models.create``) whose folder holds the exported
SavedModel; labels and metadata carry its metrics, feature service, training window and lineage.
The champion pointer is an append-only JSON-lines log: the last line is the current champion and
every earlier line stays, so a rollback can restore any previous champion. Pipeline and service
both use this module; it imports neither Dagster nor the serving code.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MODEL_SUBDIR = "saved_model"


@dataclass(frozen=True)
class ChampionEvent:
    """One line of the champion history."""

    model_name: str
    tag: str
    action: str  # "promote" or "rollback"
    reason: str
    at: str
    previous: str | None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


class ModelRegistry:
    """Models of a local BentoML store (``<home>/models``) and their champion history."""

    def __init__(self, home: str | os.PathLike[str]) -> None:
        from bentoml._internal.models.model import ModelStore

        self.home = Path(home)
        (self.home / "models").mkdir(parents=True, exist_ok=True)
        self._store = ModelStore(str(self.home / "models"))
        self._history_dir = self.home / "champions"
        self._history_dir.mkdir(parents=True, exist_ok=True)

    # -- models -------------------------------------------------------------------------------
    def register(
        self,
        name: str,
        write: Callable[[Path], None],
        labels: dict[str, str],
        metadata: dict[str, Any],
    ) -> str:
        """Create a new immutable model version; ``write`` fills its folder. Returns the tag."""
        import bentoml

        bad = {k: v for k, v in labels.items() if not isinstance(v, str)}
        if bad:
            raise TypeError(f"BentoML labels must be strings; got {bad}")
        with bentoml.models.create(name, labels=labels, metadata=metadata, _model_store=self._store) as model:
            write(Path(model.path) / MODEL_SUBDIR)
        return str(model.tag)

    def get(self, tag: str) -> Any:
        """The BentoML model of ``tag`` (``name:version``); raises if the store has no such tag."""
        import bentoml

        try:
            return bentoml.models.get(tag, _model_store=self._store)
        except bentoml.exceptions.NotFound as exc:
            raise LookupError(f"model {tag!r} is not in the registry at {self.home}") from exc

    def model_dir(self, tag: str) -> Path:
        """Folder of the exported SavedModel of ``tag``."""
        return Path(self.get(tag).path) / MODEL_SUBDIR

    def list(self, name: str) -> list[str]:
        """Every version of ``name``, oldest first."""
        models = list(self._store.list(name))
        models.sort(key=lambda m: m.info.creation_time)
        return [str(m.tag) for m in models]

    # -- champion pointer ---------------------------------------------------------------------
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

    def history(self, name: str) -> list[ChampionEvent]:
        """Every champion change of ``name``, oldest first."""
        path = self._history_file(name)
        if not path.exists():
            return []
        events = []
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                events.append(ChampionEvent(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a champion event: {line[:200]!r}") from exc
        return events

    def champion(self, name: str) -> str | None:
        """Tag of the current champion of ``name``, or None before the first promotion."""
        events = self.history(name)
        return events[-1].tag if events else None

    def _append(self, name: str, tag: str, action: str, reason: str) -> ChampionEvent:
        self.get(tag)  # refuse to point at a model the store does not have
        with self._locked(name) as path:
            previous = self.champion(name)
            event = ChampionEvent(
                model_name=name,
                tag=tag,
                action=action,
                reason=reason,
                at=datetime.now(UTC).isoformat(),
                previous=previous,
            )
            with open(path, "a") as fh:
                fh.write(event.to_json() + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        return event

    def promote(self, name: str, tag: str, reason: str) -> ChampionEvent:
        """Make ``tag`` the champion of ``name``."""
        return self._append(name, tag, "promote", reason)

    def rollback(self, name: str, reason: str, to_tag: str | None = None) -> ChampionEvent:
        """Restore ``to_tag``, or by default the champion before the current one."""
        events = self.history(name)
        if not events:
            raise LookupError(f"{name} has no champion to roll back from")
        if to_tag is None:
            current = events[-1].tag
            earlier = [e.tag for e in reversed(events) if e.tag != current]
            if not earlier:
                raise LookupError(f"{name} has had a single champion ({current}); nothing to roll back to")
            to_tag = earlier[0]
        elif to_tag not in {e.tag for e in events}:
            raise LookupError(f"{to_tag} was never a champion of {name}; rollback restores earlier champions")
        return self._append(name, to_tag, "rollback", reason)


def main(argv: list[str] | None = None) -> int:
    """``python -m flight_delay.registry {history,promote,rollback}`` over a data folder."""
    import argparse
    import sys

    from flight_delay.model import MODEL_NAME
    from flight_delay.paths import DataLayout

    parser = argparse.ArgumentParser(prog="python -m flight_delay.registry")
    parser.add_argument(
        "--home", default=None, help="BentoML home (default: $FLIGHT_DELAY_DATA_DIR/bentoml or data/bentoml)"
    )
    parser.add_argument("--model", default=MODEL_NAME)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("history")
    promote = sub.add_parser("promote")
    promote.add_argument("tag")
    promote.add_argument("--reason", required=True)
    rollback = sub.add_parser("rollback")
    rollback.add_argument("--to", dest="to_tag", default=None)
    rollback.add_argument("--reason", required=True)
    args = parser.parse_args(argv)
    registry = ModelRegistry(args.home or DataLayout.resolve().bentoml_home)
    try:
        if args.command == "promote":
            print(registry.promote(args.model, args.tag, args.reason).to_json())
        elif args.command == "rollback":
            print(registry.rollback(args.model, args.reason, args.to_tag).to_json())
        else:
            for event in registry.history(args.model):
                print(event.to_json())
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
