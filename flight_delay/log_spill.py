"""Spill files: the rows a prediction log writer could not commit before it stopped, kept beside
the database as JSON lines (``<db>.spill-<pid>-<unix ms>.jsonl``, a line ``{"table": ..., "row":
[...]}``) until the next writer replays them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from flight_delay.prediction_log import (
    FEEDBACK_FIELDS,
    PREDICTION_FIELDS,
    LogRows,
    RefusedRow,
    insert_rows,
    write_transaction,
)

if TYPE_CHECKING:
    from flight_delay.log_database import Connection


def spill_files(path: Path) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.spill-*.jsonl"))


def spill(path: Path, rows: LogRows, now: float) -> Path:
    """Write ``rows`` to a new spill file of the log at ``path``, durably: a temporary name,
    fsync, rename, fsync of the folder. Readers never see half a file."""
    target = path.with_name(f"{path.name}.spill-{os.getpid()}-{int(now * 1000)}.jsonl")
    tmp = target.with_name(f"{target.name}.tmp")
    with open(tmp, "wb") as out:
        for table, batch in (("predictions", rows.predictions), ("feedback", rows.feedback)):
            for row in batch:
                out.write(orjson.dumps({"table": table, "row": row}) + b"\n")
        out.flush()
        os.fsync(out.fileno())
    tmp.replace(target)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
    return target


_ROW_WIDTH = {"predictions": len(PREDICTION_FIELDS), "feedback": len(FEEDBACK_FIELDS)}
# A prediction spilled before the shadow's two columns existed: replayed with them missing.
_BEFORE_SHADOW = len(PREDICTION_FIELDS) - 2


def read_spill(file: Path) -> LogRows:
    rows = LogRows()
    for n, line in enumerate(file.read_bytes().splitlines(), 1):
        try:
            record = orjson.loads(line)
            table, row = record["table"], record["row"]
            if table == "predictions" and len(row) == _BEFORE_SHADOW:
                row = [*row, None, None]
            if len(row) != _ROW_WIDTH[table]:
                raise ValueError(f"{len(row)} fields")
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"{file}:{n}: expected a JSON object with a table (predictions or feedback) and a row "
                f"of its fields, got {line[:200]!r} ({exc})"
            ) from exc
        (rows.predictions if table == "predictions" else rows.feedback).append(tuple(row))
    return rows


@dataclass
class Replayed:
    """What :func:`replay_spills` did."""

    rows: int = 0  # rows inserted (rows already in the log are not counted)
    files: list[Path] = field(default_factory=list)  # committed and deleted
    refused: list[RefusedRow] = field(default_factory=list)
    invalid: list[tuple[Path, str]] = field(default_factory=list)  # renamed *.invalid, with why


def replay_spills(conn: Connection, path: Path) -> Replayed:
    """Insert the rows of every spill file of the log at ``path`` (the log's local file, also with
    the log in PostgreSQL: spills stay beside it) through ``conn``, one transaction per file, and
    delete each once committed. Safe with several workers replaying at once, and after a crash
    between a commit and the delete: rows already in the log are skipped. A file that cannot be
    parsed is renamed ``*.invalid`` (kept for a person to read) and reported."""
    done = Replayed()
    for file in spill_files(path):
        try:
            rows = read_spill(file)
        except FileNotFoundError:
            continue  # replayed by another worker
        except ValueError as exc:
            bad = file.with_name(f"{file.name}.invalid")
            file.replace(bad)
            done.invalid.append((bad, str(exc)))
            continue
        with write_transaction(conn):
            if not file.exists():
                continue
            inserted, refused = insert_rows(conn, rows)
            done.refused += refused
        done.rows += inserted
        file.unlink(missing_ok=True)
        done.files.append(file)
    return done
