"""The prediction log's writer thread alone and beside a busy event loop:
``python -m bench.log_writer``.

A worker's event loop keeps the GIL busy under load, and the writer thread shares it. The figure
that matters is how many rows a second the writer commits then, against the same writer with the
GIL to itself, measured in the same run: when it falls below the rate the service predicts at,
the backlog grows until predictions are refused (503).

The rows are like the benchmark's: flights of a month in random order, so their flight keys and
prediction times come in no order, written after ``--preload`` rows are logged already (a log
that is not new). It prints the bytes written per row too: an index that takes rows at random
places rewrites a page for each, and that is most of a writer's work once the log is large.

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
from dataclasses import dataclass
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


MONTH_START = 1_362_114_000.0  # 2013-03-01 00:00 in New York, unix seconds
FLIGHTS_A_DAY = 1_000


def _prediction(rng: random.Random) -> tuple[str, float]:
    """A flight key and a prediction time: a random flight of a random day of the month."""
    day = rng.randrange(31)
    key = f"2013-03-{day + 1:02d}:UA{rng.randrange(FLIGHTS_A_DAY)}:EWR"
    return key, MONTH_START + day * 86_400 + rng.uniform(5, 23) * 3600


@dataclass(frozen=True)
class Run:
    rows_per_second: float
    bytes_per_row: float
    cpu_us_per_row: float  # the whole process's CPU: the writer's, and the little queueing costs


def run_writer(
    rows: int, busy: bool, database_url: str | None = None, preload: int = 0, rate: float | None = None
) -> Run:
    """``rows`` rows queued after ``preload`` rows: at once, or ``rate`` rows a second in chunks of
    10 ms (as a worker's requests queue them; the writer commits what waits every 0.1 s)."""
    rng = random.Random(13)
    features = {f"f{i}": rng.random() for i in range(38)} | {"carrier": "UA", "dest": "IAH"}
    stop = threading.Event()

    def spin() -> None:  # pure Python work, as a loaded event loop does
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    with tempfile.TemporaryDirectory() as folder:
        if database_url:
            _empty(database_url)
        writer = PredictionLogWriter(
            Path(folder) / "predictions.db", max_backlog=max(rows, preload) + 1, database_url=database_url
        )
        for i in range(preload):
            key, at = _prediction(rng)
            writer.predicted(f"p{i:012d}", key, "m:1", "champion", 0.2, features, at)
        writer.flush(timeout=600)
        if busy:
            threading.Thread(target=spin, daemon=True).start()
        chunk = rows if rate is None else max(1, round(rate / 100))
        written, cpu = _bytes_written(), time.process_time()
        started = time.perf_counter()
        for i in range(rows):
            key, at = _prediction(rng)
            writer.predicted(f"r{i:012d}", key, "m:1", "champion", 0.2, features, at)
            if rate is not None and (i + 1) % chunk == 0:
                time.sleep(max(0.0, started + (i + 1) / rate - time.perf_counter()))
        writer.flush(timeout=600)
        seconds = time.perf_counter() - started
        written, cpu = _bytes_written() - written, time.process_time() - cpu
        stop.set()
        writer.close()
    return Run(rows / seconds, written / rows, cpu / rows * 1e6)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument(
        "--rate", type=float, default=10_000, help="rows a second of the paced run (a worker in the batch phase)"
    )
    parser.add_argument("--preload", type=int, default=100_000, help="rows logged before the measured ones")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL database to write to (emptied)")
    args = parser.parse_args(argv)
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)  # as the service sets it
    alone = run_writer(args.rows, busy=False, database_url=args.database_url, preload=args.preload)
    beside = run_writer(args.rows, busy=True, database_url=args.database_url, preload=args.preload)
    paced = run_writer(args.rows, busy=False, database_url=args.database_url, preload=args.preload, rate=args.rate)
    print(
        f"writer alone: {alone.rows_per_second:,.0f} rows/s, {alone.bytes_per_row:,.0f} bytes written per row; "
        f"beside a busy event loop: {beside.rows_per_second:,.0f} rows/s; "
        f"at {args.rate:,.0f} rows/s: {paced.cpu_us_per_row:,.0f} µs of CPU and {paced.bytes_per_row:,.0f} bytes "
        "written per row"
    )
    print(
        json.dumps(
            {
                "rows_per_s_alone": round(alone.rows_per_second),
                "rows_per_s_busy_gil": round(beside.rows_per_second),
                "ratio": beside.rows_per_second / alone.rows_per_second,
                "bytes_written_per_row": round(alone.bytes_per_row),
                "paced_rows_per_s": args.rate,
                "paced_cpu_us_per_row": round(paced.cpu_us_per_row, 1),
                "paced_bytes_written_per_row": round(paced.bytes_per_row),
            }
        )
    )


if __name__ == "__main__":
    main()
