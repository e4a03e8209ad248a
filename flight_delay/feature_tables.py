"""Point-in-time feature tables for departure delay prediction.

Every table here carries an ``event_timestamp``: the moment its values became known. The feature
store joins them to prediction requests "as of" the prediction time, so a value whose timestamp
lies after it can never reach a training row or a live prediction. Every function is pure
(frames in, frames out); the column names defined here are the ones the Feast views, the Pandera
schemas and the model's feature spec use.
"""

from __future__ import annotations

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
    """Hourly observations per origin airport, known at the observation hour."""
    out = weather[["origin", "time_hour", *WEATHER_COLUMNS]].rename(columns={"time_hour": "event_timestamp"})
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
    """A sliding window over departures at some grouping, emitted on a fixed time grid."""

    prefix: str
    keys: tuple[str, ...]
    window: pd.Timedelta
    step: pd.Timedelta
    pending_window: pd.Timedelta | None = None
    lookahead: pd.Timedelta | None = None


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
    published schedule). ``departures`` must cover ``window`` (and the pending window) before
    ``start`` and the lookahead after ``end``. Only rows whose values changed are kept, as a
    stream would emit them; the point-in-time join reads the last one.
    """
    grid = pd.date_range(start, end, freq=spec.step, inclusive="left")
    cols = activity_columns(spec)
    if len(grid) == 0:
        return pd.DataFrame(columns=[*spec.keys, "event_timestamp", *cols])
    columns = _DepartureArrays.of(departures)
    frames = []
    for key, idx in departures.groupby(list(spec.keys), sort=True).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        frame = pd.DataFrame(dict(zip(cols, _activity_on_grid(spec, grid.asi8, columns.take(idx)))))
        frame.insert(0, "event_timestamp", grid)
        for i, k in enumerate(spec.keys):
            frame.insert(i, k, key[i])
        frames.append(frame[_changed(frame, cols)])
    return _feature_table(pd.concat(frames, ignore_index=True), list(spec.keys))


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
            departures["dep_delay"].to_numpy(),
            departures["is_late"].to_numpy(),
        )

    def take(self, idx: np.ndarray) -> _DepartureArrays:
        return _DepartureArrays(*(a[idx] for a in (self.sched, self.actual, self.cancelled, self.delay, self.late)))


def _activity_on_grid(spec: ActivityWindow, grid: np.ndarray, d: _DepartureArrays) -> list[np.ndarray]:
    """One key's activity columns (in :func:`activity_columns` order) at each grid time."""
    window = spec.window.value
    pending = spec.pending_window.value if spec.pending_window is not None else None
    lookahead = spec.lookahead.value if spec.lookahead is not None else None
    lookback = max(window, pending or 0)
    out: list[list[np.ndarray]] = []
    # One day of grid at a time keeps the (grid x flights) matrices small.
    for chunk in np.array_split(grid, max(1, len(grid) // 288)):
        g = chunk[:, None]
        lo, hi = chunk[0], chunk[-1]
        near = ((d.sched > lo - lookback) & (d.sched <= hi + (lookahead or 0))) | (
            (d.actual > lo - window) & (d.actual <= hi)
        )
        sched, actual, cancel = d.sched[near], d.actual[near], d.cancelled[near]
        departed = (~cancel)[None, :] & (actual[None, :] <= g) & (actual[None, :] > g - window)
        n = departed.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_delay = np.where(n > 0, (departed * np.nan_to_num(d.delay[near])).sum(axis=1) / n, np.nan)
            late_rate = np.where(n > 0, (departed * np.nan_to_num(d.late[near])).sum(axis=1) / n, np.nan)
        values = [n.astype("float64"), mean_delay, late_rate]
        if pending is not None:
            waiting = (sched[None, :] <= g) & (sched[None, :] > g - pending)
            not_left = cancel[None, :] | (actual[None, :] > g)
            values.append((waiting & not_left).sum(axis=1).astype("float64"))
        if lookahead is not None:
            ahead = (sched[None, :] > g) & (sched[None, :] <= g + lookahead)
            values.append(ahead.sum(axis=1).astype("float64"))
        out.append(values)
    return [np.concatenate(parts) for parts in zip(*out)]


def _changed(frame: pd.DataFrame, cols: list[str]) -> pd.Series:
    """Rows whose values differ from the row before (NaN equal to NaN), the first row included."""
    both_nan = frame[cols].isna() & frame[cols].shift().isna()
    return (frame[cols].ne(frame[cols].shift()) & ~both_nan).any(axis=1)


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


CARRIER_7D = DelayRateWindow(prefix="carrier_7d", key="carrier", days=7)
ROUTE_28D = DelayRateWindow(prefix="route_28d", key="route", days=28)


def daily_delay_rates(departures: pd.DataFrame, spec: DelayRateWindow, start_day: str, end_day: str) -> pd.DataFrame:
    """Per key and local day D in ``[start_day, end_day]``: late rate and mean delay of the
    departures that left in the ``spec.days`` local days before D, known at D's local midnight.

    ``departures`` must cover the ``spec.days`` days before ``start_day``.
    """
    key, days = spec.key, spec.days
    d = departures[~departures["cancelled"]]
    dep_day = d["actual_dep_ts"].dt.tz_convert(LOCAL_TZ).dt.normalize().dt.tz_localize(None)
    daily = (
        pd.DataFrame(
            {
                key: d[key].to_numpy(),
                "day": dep_day.to_numpy(),
                "late": d["is_late"].to_numpy(),
                "delay": d["dep_delay"].to_numpy(),
            }
        )
        .groupby([key, "day"])
        .agg(n=("late", "size"), late=("late", "sum"), delay=("delay", "sum"))
    )
    days_index = pd.date_range(pd.Timestamp(start_day) - pd.Timedelta(days=days), end_day, freq="D")
    keys = daily.index.get_level_values(0).unique()
    full = daily.reindex(pd.MultiIndex.from_product([keys, days_index], names=[key, "day"]), fill_value=0.0)
    # Sum over the `days` days strictly before D: roll, then shift by one day.
    rolled = (
        full.groupby(level=0, group_keys=False)
        .apply(lambda s: s.rolling(days, min_periods=1).sum().shift(1))
        .reset_index()
    )
    rolled = rolled[(rolled["day"] >= pd.Timestamp(start_day)) & (rolled["day"] <= pd.Timestamp(end_day))]
    departures_col, late_rate_col, mean_delay_col = spec.columns
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame(
            {
                key: rolled[key].astype(str).to_numpy(),
                "event_timestamp": rolled["day"].dt.tz_localize(LOCAL_TZ).dt.tz_convert("UTC").to_numpy(),
                departures_col: rolled["n"].to_numpy(),
                late_rate_col: np.where(rolled["n"] > 0, rolled["late"] / rolled["n"], np.nan),
                mean_delay_col: np.where(rolled["n"] > 0, rolled["delay"] / rolled["n"], np.nan),
            }
        )
    return _feature_table(out, [key])


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
