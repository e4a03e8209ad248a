"""The champion history in PostgreSQL (``FLIGHT_DELAY_DATABASE_URL``), shared by every replica of
the service and the pipeline: the same events as the JSON-lines file of
:class:`flight_delay.registry.ModelRegistry`, one row each in an append-only table.

The compare-and-set is the primary key (model name, sequence number): a decision is taken on the
state folded from the events up to sequence ``n`` and written as event ``n + 1``, in one
transaction. Two writers that read the same state both try to write ``n + 1``; PostgreSQL lets
the first commit and fails the second, which then reads the new state and decides again, exactly
as a writer waiting for the file lock does: a promotion that expected the old champion becomes a
:class:`~flight_delay.registry.ConflictError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from flight_delay.log_database import SharedConnection, redact
from flight_delay.registry import ChampionEvent, RegistryState, fold

_TABLE = """
CREATE TABLE IF NOT EXISTS champion_events (
    model_name TEXT NOT NULL,
    seq BIGINT NOT NULL,
    event JSONB NOT NULL,
    PRIMARY KEY (model_name, seq)
)
"""
_SCHEMA_LOCK = 7_286_432  # CREATE TABLE IF NOT EXISTS alone races in PostgreSQL's catalog


class DatabaseHistory:
    """The champion events of every model name, in the database at ``url``. One connection,
    opened again after the server went away, shared by the threads of one process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection = SharedConnection(url, _TABLE, _SCHEMA_LOCK)

    def __repr__(self) -> str:
        return f"DatabaseHistory({redact(self.url)!r})"

    @staticmethod
    def _read(conn: Any, name: str) -> tuple[list[ChampionEvent], int]:
        rows = conn.execute(
            "SELECT seq, event FROM champion_events WHERE model_name = %s ORDER BY seq", (name,)
        ).fetchall()
        events = []
        for seq, fields in rows:
            try:
                events.append(ChampionEvent(**fields))
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"champion_events ({name}, {seq}): not a champion event: {fields!r:.200} ({exc})"
                ) from exc
        return events, rows[-1][0] if rows else 0

    def events(self, name: str) -> list[ChampionEvent]:
        """Every decision about ``name``, oldest first."""
        with self._connection() as conn:
            return self._read(conn, name)[0]

    def stamp(self, name: str) -> tuple[int, ...]:
        """The sequence number of the latest event about ``name`` (0 before the first): one index
        lookup, for watchers that poll."""
        with self._connection() as conn:
            (seq,) = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM champion_events WHERE model_name = %s", (name,)
            ).fetchone()
        return (int(seq),)

    def record(self, name: str, decide: Callable[[RegistryState], ChampionEvent]) -> ChampionEvent:
        """Decide on the current state and append the event, as one compare-and-set; when another
        writer appended first, decide again on the new state."""
        while True:
            try:
                with self._connection() as conn, conn.transaction():
                    events, last = self._read(conn, name)
                    event = decide(fold(events))
                    conn.execute(
                        "INSERT INTO champion_events (model_name, seq, event) VALUES (%s, %s, %s)",
                        (name, last + 1, Jsonb(asdict(event))),
                    )
                return event
            except psycopg.errors.UniqueViolation:
                continue  # another decision took sequence number last + 1 first

    def import_events(self, histories: Mapping[str, Sequence[ChampionEvent]]) -> dict[str, int]:
        """Write the whole history of each model of ``histories`` (events oldest first, as another
        store holds them) in one transaction: per model, the number of events written, 0 when the
        database holds the same history already. Raises :class:`HistoryConflict`, having written
        nothing, when it holds a different one for any of them."""
        with self._connection() as conn, conn.transaction():
            held = {name: self._read(conn, name)[0] for name in histories}
            conflicts = [conflict(name, held[name], list(events)) for name, events in histories.items()]
            if any(conflicts):
                raise HistoryConflict("; ".join(c for c in conflicts if c))
            written = {}
            for name, events in histories.items():
                if held[name]:
                    written[name] = 0
                    continue
                with conn.cursor() as cursor:
                    cursor.executemany(
                        "INSERT INTO champion_events (model_name, seq, event) VALUES (%s, %s, %s)",
                        [(name, seq, Jsonb(asdict(event))) for seq, event in enumerate(events, start=1)],
                    )
                written[name] = len(events)
        return written


class HistoryConflict(ValueError):
    """The database holds a champion history that differs from the one to import."""


def conflict(name: str, held: Sequence[ChampionEvent], incoming: Sequence[ChampionEvent]) -> str | None:
    """Why ``incoming`` cannot be imported over ``held`` (the database's history of ``name``),
    None when it can: the database holds none, or the same events in the same order."""
    if not held or list(held) == list(incoming):
        return None
    at = next(
        (i for i, (a, b) in enumerate(zip(held, incoming, strict=False)) if a != b), min(len(held), len(incoming))
    )
    first = f"event {at + 1} is {_brief(held, at)} in the database, {_brief(incoming, at)} in the file"
    return (
        f"model {name}: the database holds a different champion history ({len(held)} events against "
        f"{len(incoming)} to import; {first})"
    )


def _brief(events: Sequence[ChampionEvent], i: int) -> str:
    return f"{events[i].action} {events[i].tag} at {events[i].at}" if i < len(events) else "missing"
