"""Daily partitions on disk: written whole or not at all, published only after their check, and the
same whether a day was built alone or inside a range."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd

from pipeline.resources import LocalTableStore

DAY = "2013-01-03"


def test_concurrent_writers_of_one_partition_never_expose_a_partial_file(tmp_path):
    """Runs re-materializing the same day at once: a reader of ``<table>/*.parquet`` (Feast's glob,
    another run) sees one writer's whole frame at every moment, never half of one."""
    store = LocalTableStore(root=str(tmp_path))
    rows = 200_000  # a few MB, so that a write takes long enough to be caught in the middle
    frames = [pd.DataFrame({"writer": np.full(rows, w), "value": np.arange(rows) * (w + 1)}) for w in range(4)]
    store.write("table", frames[0], DAY)
    folder = tmp_path / "table"
    seen: list[int] = []
    problems: list[str] = []
    done = threading.Event()

    def read_until_done() -> None:
        while not done.is_set():
            try:
                (path,) = folder.glob("*.parquet")
                got = pd.read_parquet(path)
            except Exception as err:  # any failure to read is what the test looks for
                problems.append(f"{type(err).__name__}: {err}")
                continue
            writer = int(got["writer"].iloc[0])
            if not got.equals(frames[writer]):
                problems.append(f"a frame that is not writer {writer}'s whole frame ({len(got)} rows)")
            seen.append(writer)

    def write_many(writer: int) -> None:
        for _ in range(10):
            store.write("table", frames[writer], DAY)

    reader = threading.Thread(target=read_until_done)
    reader.start()
    try:
        with ThreadPoolExecutor(len(frames)) as pool:
            writes = [pool.submit(write_many, w) for w in range(len(frames))]
            errors = [f"{type(e).__name__}: {e}" for e in (w.exception() for w in writes) if e is not None]
    finally:
        done.set()
        reader.join()
    assert not problems, problems[:5]
    assert not errors, errors
    assert seen, "the reader never read the partition"
    assert [p.name for p in folder.iterdir()] == [f"{DAY}.parquet"]  # no temporary file left behind
