"""What the loop's sensors read, made directly: a prediction log with shadow scores, and a fixed
window of the service's feature-bin counters."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path

from flight_delay.monitoring import CounterWindow
from flight_delay.prediction_log import open_for_writing
from pipeline.resources import MetricsSource

SHADOW_COLUMNS = {"shadow_model_version": "TEXT", "shadow_probability": "REAL"}


def write_log(
    path: Path,
    champion: str,
    shadow: str | None,
    champion_p: Sequence[float],
    shadow_p: Sequence[float] | None,
    late: Sequence[int | None],
    prediction_time: float = 1_368_000_000.0,
    received_at: float = 1_700_000_000.0,
    first: int = 0,
) -> None:
    """Append one prediction per flight (prediction times a minute apart from ``prediction_time``),
    scored by ``champion`` and, in shadow, ``shadow``; feedback (received a second apart) for every
    flight whose ``late`` is not None. Adds the shadow columns to a log without them."""
    conn = open_for_writing(path)
    try:
        have = {row[1] for row in conn.execute("PRAGMA table_info(predictions)")}
        for name, kind in SHADOW_COLUMNS.items():
            if name not in have:
                conn.execute(f"ALTER TABLE predictions ADD COLUMN {name} {kind}")
        conn.execute("BEGIN")
        for i, (p, y) in enumerate(zip(champion_p, late), start=first):
            request = f"r{i:06d}"
            conn.execute(
                "INSERT INTO predictions (request_id, predicted_at, flight_key, model_version, variant, probability,"
                " features, prediction_time, shadow_model_version, shadow_probability)"
                " VALUES (?, ?, ?, ?, 'champion', ?, '{}', ?, ?, ?)",
                (
                    request,
                    received_at + i,
                    f"flight{i}",
                    champion,
                    float(p),
                    prediction_time + 60 * i,
                    shadow,
                    None if shadow_p is None else float(shadow_p[i - first]),
                ),
            )
            if y is not None:
                conn.execute(
                    "INSERT INTO feedback VALUES (?, ?, ?, ?, ?)",
                    (request, received_at + i + 0.5, f"flight{i}", 30.0 if y else 0.0, int(y)),
                )
        conn.execute("COMMIT")
    finally:
        conn.close()


def columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


class FixedMetrics(MetricsSource):
    """One window of feature-bin counts: [[model, feature, bin, count], ...]."""

    bins: list[list] = []
    disjoint: bool = True

    def window(self) -> CounterWindow:
        return CounterWindow(feature_bins={(m, f, b): float(n) for m, f, b, n in self.bins})

    def describe(self) -> str:
        return "fixed"

    def disjoint_windows(self) -> bool:
        return self.disjoint
