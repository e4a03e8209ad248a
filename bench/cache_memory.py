"""What the service's online-feature cache costs in memory: ``python -m bench.cache_memory`` (after
``make demo``).

Reads every real flight of the demo's last day, then every aircraft and route of the quarter,
through :class:`serving.online.OnlineFeatures` (the service's reader, the demo's SQLite online
store), and measures with ``tracemalloc`` the memory the cache's entries hold: bytes per (view,
entity) entry, found and unknown entities alike, and what ``FLIGHT_DELAY_FEATURE_CACHE_ENTRIES``
(default 20,000) therefore costs a worker at most. Prints a line per figure and, last, one JSON
object.
"""

from __future__ import annotations

import argparse
import json
import tracemalloc
from datetime import UTC, datetime

import pandas as pd

from features import FLIGHT_DELAY_SERVICE
from features.store import build_store
from flight_delay import data
from flight_delay.flights import LOCAL_TZ, scheduled_departure
from flight_delay.paths import PROJECT_ROOT, DataLayout
from serving.api_models import Flight
from serving.online import MAX_CACHED, OnlineFeatures


def flights_of_quarter(limit: int) -> list[Flight]:
    """Real departures of January–March 2013, one per (tail number, route), up to ``limit``."""
    frame = data.read_table("flights")
    sched = scheduled_departure(frame["time_hour"], frame["minute"]).dt.tz_convert(LOCAL_TZ)
    frame = frame.assign(sched=sched)[(sched < pd.Timestamp("2013-04-01", tz=LOCAL_TZ)) & frame["tailnum"].notna()]
    frame = frame.drop_duplicates(["tailnum", "origin", "dest"]).head(limit)
    return [
        Flight(
            carrier=r.carrier,
            flight=int(r.flight),
            tailnum=r.tailnum,
            origin=r.origin,
            dest=r.dest,
            scheduled_departure=r.sched.to_pydatetime(),
            distance=float(r.distance),
        )
        for r in frame.itertuples(index=False)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--unknown", type=int, default=5000, help="Made-up tail numbers read as well.")
    args = parser.parse_args(argv)
    layout = DataLayout.resolve(args.data_dir)
    store = build_store(PROJECT_ROOT, layout.feast_state)
    online = OnlineFeatures(store, FLIGHT_DELAY_SERVICE, max_staleness=3600, max_entries=10_000_000)
    flights = flights_of_quarter(100_000)
    flights += [f.model_copy(update={"tailnum": f"ZZ{i:05d}"}) for i, f in enumerate(flights[: args.unknown])]
    now = datetime(2013, 4, 1, tzinfo=UTC)
    online.read(flights[:50], now)  # imports and first-use allocations outside the measurement
    online._cache.clear()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for i in range(0, len(flights), 256):
        online.read(flights[i : i + 256], now)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = sum(s.size_diff for s in after.compare_to(before, "filename"))
    entries = online.cached_entries()
    per_entry = held / entries
    result = {
        "flights_read": len(flights),
        "entries": entries,
        "bytes_held": held,
        "bytes_per_entry": round(per_entry),
        "default_bound_entries": MAX_CACHED,
        "mib_at_default_bound": round(per_entry * MAX_CACHED / 2**20, 1),
    }
    print(f"{len(flights)} flights read: {entries} cached (view, entity) rows hold {held / 2**20:.1f} MiB")
    print(
        f"{per_entry:.0f} bytes per entry: the default bound of {MAX_CACHED} entries costs at most "
        f"{result['mib_at_default_bound']} MiB per worker"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
