"""The prediction log's writer thread alone and beside a busy event loop:
``python -m bench.log_writer``.

A worker's event loop keeps the GIL busy under load, and the writer thread shares it. The figure
that matters is how many rows a second the writer commits then, against the same writer with the
GIL to itself, measured in the same run: when it falls below the rate the service predicts at,
the backlog grows until predictions are refused (503).

``--database-url postgresql://...`` measures the writer into PostgreSQL instead (its tables are
emptied before each of the two runs).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from serving.log_writer import PredictionLogWriter
from serving.service import SWITCH_INTERVAL_SECONDS


def _empty(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT to_regclass('predictions')").fetchone()[0] is not None:
            conn.execute("TRUNCATE predictions, feedback")


def _bytes_written() -> int:
    """What this process has written so far (to files and the WAL, before the page cache)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def rows_per_second(rows: int, busy: bool, database_url: str | None = None) -> tuple[float, float]:
    """Rows a second, and bytes written per row."""
    features = {f"f{i}": random.random() for i in range(38)} | {"carrier": "UA", "dest": "IAH"}
    stop = threading.Event()

    def spin() -> None:  # pure Python work, as a loaded event loop does
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    with tempfile.TemporaryDirectory() as folder:
        if database_url:
            _empty(database_url)
        writer = PredictionLogWriter(Path(folder) / "predictions.db", max_backlog=rows + 1, database_url=database_url)
        if busy:
            threading.Thread(target=spin, daemon=True).start()
        written = _bytes_written()
        started = time.perf_counter()
        for i in range(rows):
            writer.predicted(f"r{i:012d}", f"2013-01-01:UA{i % 5000}:EWR", "m:1", "champion", 0.2, features, 1e9 + i)
        writer.flush(timeout=600)
        seconds = time.perf_counter() - started
        written = _bytes_written() - written
        stop.set()
        writer.close()
    return rows / seconds, written / rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--database-url", default=None, help="a PostgreSQL database to write to (emptied)")
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # as the service sets it
    alone, per_row = rows_per_second(args.rows, busy=False, database_url=args.database_url)
    beside, _ = rows_per_second(args.rows, busy=True, database_url=args.database_url)
    print(
        f"writer alone: {alone:,.0f} rows/s, {per_row:,.0f} bytes written per row; "
        f"beside a busy event loop: {beside:,.0f} rows/s"
    )
    print(
        json.dumps(
            {
                "rows_per_s_alone": round(alone),
                "rows_per_s_busy_gil": round(beside),
                "ratio": beside / alone,
                "bytes_written_per_row": round(per_row),
            }
        )
    )


if __name__ == "__main__":
    main()
