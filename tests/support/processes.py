"""Races between processes: each started with the same barrier to meet at and one queue to answer on."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any


def race(target: Callable[..., None], arguments: Sequence[tuple[Any, ...]], answers_each: int = 1) -> list[Any]:
    """Run ``target(*args, barrier, results)`` for each ``args`` in a spawned process of its own
    (the barrier has a party per process) and return every answer the processes put on
    ``results`` (``answers_each`` per process), once all have exited cleanly."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(arguments)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, barrier, results)) for args in arguments]
    for p in procs:
        p.start()
    answers = [results.get(timeout=120) for _ in range(answers_each * len(procs))]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"{p.name} exited with {p.exitcode}"
    return answers
