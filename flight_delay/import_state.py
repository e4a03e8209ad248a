"""Moving a deployment from the local profile to PostgreSQL: its prediction log and champion
history, kept in files until now, copied into the database the aws and k8s profiles share.

``python -m flight_delay.import_state --from DATA_DIR [--database-url URL] [--batch-size N]``
(the URL defaults to ``FLIGHT_DELAY_DATABASE_URL``) copies

* every prediction and feedback row of the SQLite log (``DATA_DIR/prediction_log/predictions.db``)
  and of the spill files beside it into the log tables, created as the service's writer creates
  them and written by the same statements (:mod:`flight_delay.prediction_log`), one transaction per
  batch. A row is keyed by its prediction's request id: a row already in the database is left as
  it is, so running the command again copies nothing new and duplicates nothing, and an
  interrupted copy is finished by running it again.
* the champion history of every model (``DATA_DIR/bentoml/champions/<model>.jsonl``, the files of
  :class:`flight_delay.registry.ModelRegistry`) into ``champion_events``, in order, all models in
  one transaction. A model whose history is in the database already is left alone; when the
  database holds a *different* history for any model, the command refuses before it writes
  anything, log included.

The files are only read. What was copied is printed, per table and per model.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flight_delay import log_database as db
from flight_delay import paths
from flight_delay.log_reading import reading
from flight_delay.log_spill import read_spill, spill_files
from flight_delay.prediction_log import (
    FEEDBACK_FIELDS,
    PREDICTION_FIELDS,
    LogRows,
    insert_rows,
    open_for_writing,
    write_transaction,
)
from flight_delay.registry import ChampionEvent, _read_history

BATCH_SIZE = 5_000
HISTORY_FOLDER = "champions"  # ModelRegistry's, under the BentoML home


@dataclass
class Copied:
    """Rows read from the files and rows the database did not have yet, per table; events written
    per model (0: the database held the same history)."""

    read: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "feedback": 0})
    copied: dict[str, int] = field(default_factory=lambda: {"predictions": 0, "feedback": 0})
    events: dict[str, int] = field(default_factory=dict)
    events_read: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        lines = [f"{table}: {self.copied[table]} rows copied of {self.read[table]} read" for table in self.read]
        for name, n in self.events.items():
            held = "" if n else " (the database holds the same history)"
            lines.append(f"champion_events {name}: {n} events copied of {self.events_read[name]} read{held}")
        if not self.events:
            lines.append("champion_events: no champion history to copy")
        return lines


class ImportRefused(RuntimeError):
    """Rows the database refuses (a value it cannot store): the batch is not written."""


def read_histories(bentoml_home: Path) -> dict[str, list[ChampionEvent]]:
    """The champion history of every model under ``bentoml_home``, oldest event first."""
    folder = bentoml_home / HISTORY_FOLDER
    histories = {path.stem: _read_history(path)[0] for path in sorted(folder.glob("*.jsonl"))}
    return {name: events for name, events in histories.items() if events}


def _select(conn: Any, table: str, fields: tuple[str, ...]) -> str:
    """A batch of ``table`` after a rowid, in the order the rows were written; columns an older
    log lacks read as NULL. Of several outcomes of one prediction (a log from before feedback was
    unique) only the one the log reader and the migration keep: the latest, last written on a tie."""
    have = db.columns(conn, table)
    columns = ", ".join(name if name in have else f"NULL AS {name}" for name in fields)
    only_kept = (
        " AND NOT EXISTS (SELECT 1 FROM feedback AS later WHERE later.request_id = feedback.request_id AND "
        "(later.received_at > feedback.received_at OR "
        "(later.received_at = feedback.received_at AND later.rowid > feedback.rowid)))"
        if table == "feedback"
        else ""
    )
    return f"SELECT rowid, {columns} FROM {table} WHERE rowid > ?{only_kept} ORDER BY rowid LIMIT ?"


def _batches(log: Path, batch_size: int) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """``(table, rows)`` of the SQLite log at ``log``, predictions first, then its spill files."""
    with reading(log) as conn:
        if conn is not None:
            for table, fields in (("predictions", PREDICTION_FIELDS), ("feedback", FEEDBACK_FIELDS)):
                query, after = _select(conn, table, fields), 0
                while rows := conn.execute(query, (after, batch_size)).fetchall():
                    after = rows[-1][0]
                    yield table, [tuple(row[1:]) for row in rows]
    for file in spill_files(log):
        spilled = read_spill(file)
        for table, rows in (("predictions", spilled.predictions), ("feedback", spilled.feedback)):
            for start in range(0, len(rows), batch_size):
                yield table, [tuple(row) for row in rows[start : start + batch_size]]


def copy_log(log: Path, url: str, batch_size: int = BATCH_SIZE, copied: Copied | None = None) -> Copied:
    """Copy the SQLite log at ``log`` (and its spill files) into the log tables at ``url``."""
    copied = copied or Copied()
    conn = open_for_writing(url)  # the tables and indexes, as the writer creates them
    try:
        for table, rows in _batches(log, batch_size):
            batch = LogRows(predictions=rows) if table == "predictions" else LogRows(feedback=rows)
            with write_transaction(conn):
                inserted, refused = insert_rows(conn, batch)
                if refused:
                    shown = "; ".join(f"{r.row[0]}: {r.error}" for r in refused[:5])
                    raise ImportRefused(
                        f"the database refuses {len(refused)} {table} rows ({shown}); nothing of it kept"
                    )
            copied.read[table] += len(rows)
            copied.copied[table] += inserted
    finally:
        conn.close()
    return copied


def import_state(data_dir: Path, url: str, batch_size: int = BATCH_SIZE) -> Copied:
    """Copy the prediction log and the champion histories of ``data_dir`` into ``url``."""
    from flight_delay.champion_history import DatabaseHistory, HistoryConflict, conflict

    layout = paths.DataLayout(Path(data_dir).resolve())
    histories = read_histories(layout.bentoml_home)
    database = DatabaseHistory(url)  # creates champion_events as the registry does
    # Refused before anything is written; checked again in the transaction that writes.
    conflicts = [conflict(name, database.events(name), events) for name, events in histories.items()]
    if any(conflicts):
        raise HistoryConflict("; ".join(c for c in conflicts if c) + ": nothing was copied")
    copied = copy_log(layout.prediction_log, url, batch_size)
    copied.events = database.import_events(histories)
    copied.events_read = {name: len(events) for name, events in histories.items()}
    return copied


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flight_delay.import_state", description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="data_dir", type=Path, required=True, help="the local data folder to copy")
    parser.add_argument(
        "--database-url", help=f"postgresql://user:password@host:port/database (default: ${paths.DATABASE_URL_ENV})"
    )
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="rows per transaction")
    args = parser.parse_args(argv)
    try:
        url = paths.database_url(args.database_url)
    except ValueError as exc:
        parser.error(str(exc))
    if url is None:
        parser.error(f"no database: pass --database-url or set {paths.DATABASE_URL_ENV}")
    if args.batch_size < 1:
        parser.error("--batch-size: expected a positive number of rows")
    if not args.data_dir.is_dir():
        parser.error(f"--from {args.data_dir}: no such folder")
    from flight_delay.champion_history import HistoryConflict

    try:
        copied = import_state(args.data_dir, url, args.batch_size)
    except (HistoryConflict, ImportRefused) as exc:
        print(f"import refused: {exc}", file=sys.stderr)
        return 1
    print(f"copied {args.data_dir} into {db.redact(url)}")
    for line in copied.lines():
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
