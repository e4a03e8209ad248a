"""Point-in-time feature tables for departure delay prediction.

Every table here carries an ``event_timestamp``: the moment its values became known. The feature
store joins them to prediction requests "as of" the prediction time, so a value whose timestamp
lies after it can never reach a training row or a live prediction. Every function is pure
(frames in, frames out) and is shared by the pipeline, the service and the tests.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar

LOCAL_TZ = "America/New_York"
LATE_MINUTES = 15.0
MAX_PLAUSIBLE_WIND_MPH = 150.0

WEATHER_COLUMNS: tuple[str, ...] = (
    "temp", "dewp", "humid", "wind_dir", "wind_speed", "wind_gust", "precip", "pressure", "visib",
)


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

    ``time_hour`` is the scheduled hour in UTC, so adding the local minute gives the scheduled
    departure without any daylight-saving ambiguity. Cancelled flights (no departure time) are
    kept with ``cancelled`` set and no label: they never depart, so they still count as waiting
    departures in the congestion features, but there is no delay to learn from.
    """
    f = raw_flights
    sched = f["time_hour"] + pd.to_timedelta(f["minute"], unit="m")
    cancelled = f["dep_time"].isna() | f["dep_delay"].isna()
    delay = f["dep_delay"].astype("float64").where(~cancelled)
    actual = sched + pd.to_timedelta(delay, unit="m")
    flight_date = pd.to_datetime(
        {"year": f["year"], "month": f["month"], "day": f["day"]}
    ).dt.strftime("%Y-%m-%d")
    out = pd.DataFrame(
        {
            "flight_id": flight_date + ":" + f["carrier"].astype(str) + f["flight"].astype(str)
            + ":" + f["origin"].astype(str),
            "flight_date": flight_date,
            "carrier": f["carrier"].astype(str),
            "flight": f["flight"].astype("int64"),
            "tailnum": f["tailnum"].astype("string").fillna("UNKNOWN").astype(str),
            "origin": f["origin"].astype(str),
            "dest": f["dest"].astype(str),
            "route": f["origin"].astype(str) + "-" + f["dest"].astype(str),
            "distance": f["distance"].astype("float64"),
            "sched_dep_ts": sched,
            "actual_dep_ts": actual,
            "dep_delay": delay,
            "cancelled": cancelled.astype(bool),
        }
    )
    out["is_late"] = (delay >= LATE_MINUTES).astype("float64").where(~cancelled)
    for c in ("sched_dep_ts", "actual_dep_ts"):
        out[c] = out[c].astype("datetime64[ns, UTC]")
    return out.sort_values(["sched_dep_ts", "flight_id"], kind="stable").reset_index(drop=True)


def origin_hourly_weather(weather: pd.DataFrame) -> pd.DataFrame:
    """Hourly observations per origin airport, known at the observation hour."""
    out = weather[["origin", "time_hour", *WEATHER_COLUMNS]].rename(
        columns={"time_hour": "event_timestamp"}
    )
    out["origin"] = out["origin"].astype(str)
    # An anemometer reading above any recorded surface wind is an instrument error, not weather.
    for col in ("wind_speed", "wind_gust"):
        out[col] = out[col].astype("float64").where(out[col] <= MAX_PLAUSIBLE_WIND_MPH)
    out = out.astype({c: "float64" for c in WEATHER_COLUMNS})
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
    d = departures[~departures["cancelled"] & (departures["tailnum"] != "UNKNOWN")]
    out = pd.DataFrame(
        {
            "tailnum": d["tailnum"],
            "event_timestamp": d["actual_dep_ts"],
            "last_dep_delay": d["dep_delay"],
            "last_dep_unix": d["actual_dep_ts"].astype("int64") / 1e9,
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
    g = grid.asi8[:, None]
    window = spec.window.value
    frames = []
    d = departures
    sched_all = d["sched_dep_ts"].astype("int64").to_numpy()
    actual_all = d["actual_dep_ts"].astype("int64").to_numpy()
    nat = actual_all == np.iinfo(np.int64).min
    delay_all = d["dep_delay"].to_numpy()
    late_all = d["is_late"].to_numpy()
    for key, idx in d.groupby(list(spec.keys), sort=True).indices.items():
        key = key if isinstance(key, tuple) else (key,)
        sched_k, actual_k, cancel_k = sched_all[idx], actual_all[idx], nat[idx]
        delay_k, late_k = delay_all[idx], late_all[idx]
        out = {}
        # One day of grid at a time keeps the (grid x flights) matrices small.
        lookback = max(window, spec.pending_window.value if spec.pending_window is not None else 0)
        lookahead = spec.lookahead.value if spec.lookahead is not None else 0
        for chunk in np.array_split(np.arange(len(grid)), max(1, len(grid) // 288)):
            gc = g[chunk]
            lo, hi = gc[0, 0], gc[-1, 0]
            near = ((sched_k > lo - lookback) & (sched_k <= hi + lookahead)) | (
                (actual_k > lo - window) & (actual_k <= hi)
            )
            sched, actual, cancel, delay, late = (
                sched_k[near], actual_k[near], cancel_k[near], delay_k[near], late_k[near]
            )
            departed = (~cancel)[None, :] & (actual[None, :] <= gc) & (actual[None, :] > gc - window)
            n = departed.sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean_delay = np.where(n > 0, (departed * np.nan_to_num(delay)).sum(axis=1) / n, np.nan)
                late_rate = np.where(n > 0, (departed * np.nan_to_num(late)).sum(axis=1) / n, np.nan)
            values = [n.astype("float64"), mean_delay, late_rate]
            if spec.pending_window is not None:
                waiting = (sched[None, :] <= gc) & (sched[None, :] > gc - spec.pending_window.value)
                not_left = cancel[None, :] | (actual[None, :] > gc)
                values.append((waiting & not_left).sum(axis=1).astype("float64"))
            if spec.lookahead is not None:
                ahead = (sched[None, :] > gc) & (sched[None, :] <= gc + spec.lookahead.value)
                values.append(ahead.sum(axis=1).astype("float64"))
            for c, v in zip(cols, values):
                out.setdefault(c, []).append(v)
        frame = pd.DataFrame({c: np.concatenate(v) for c, v in out.items()})
        frame.insert(0, "event_timestamp", grid)
        for i, k in enumerate(spec.keys):
            frame.insert(i, k, key[i])
        # NaN != NaN: rows where only NaNs repeat are unchanged too.
        both_nan = frame[cols].isna() & frame[cols].shift().isna()
        changed = (frame[cols].ne(frame[cols].shift()) & ~both_nan).any(axis=1)
        frames.append(frame[changed])
    result = pd.concat(frames, ignore_index=True)
    return _feature_table(result, list(spec.keys))


def daily_delay_rates(
    departures: pd.DataFrame, key: str, days: int, prefix: str, start_day: str, end_day: str
) -> pd.DataFrame:
    """Per ``key`` and local day D in ``[start_day, end_day]``: late rate and mean delay of the
    departures that left in the ``days`` local days before D, known at D's local midnight.

    ``departures`` must cover the ``days`` days before ``start_day``.
    """
    d = departures[~departures["cancelled"]]
    dep_day = d["actual_dep_ts"].dt.tz_convert(LOCAL_TZ).dt.normalize().dt.tz_localize(None)
    daily = (
        pd.DataFrame({key: d[key].to_numpy(), "day": dep_day.to_numpy(),
                      "late": d["is_late"].to_numpy(), "delay": d["dep_delay"].to_numpy()})
        .groupby([key, "day"])
        .agg(n=("late", "size"), late=("late", "sum"), delay=("delay", "sum"))
    )
    days_index = pd.date_range(pd.Timestamp(start_day) - pd.Timedelta(days=days), end_day, freq="D")
    keys = daily.index.get_level_values(0).unique()
    full = daily.reindex(pd.MultiIndex.from_product([keys, days_index], names=[key, "day"]),
                         fill_value=0.0)
    # Sum over the `days` days strictly before D: roll, then shift by one day.
    rolled = (
        full.groupby(level=0, group_keys=False)
        .apply(lambda s: s.rolling(days, min_periods=1).sum().shift(1))
        .reset_index()
    )
    rolled = rolled[(rolled["day"] >= pd.Timestamp(start_day)) & (rolled["day"] <= pd.Timestamp(end_day))]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = pd.DataFrame(
            {
                key: rolled[key].astype(str).to_numpy(),
                "event_timestamp": rolled["day"].dt.tz_localize(LOCAL_TZ).dt.tz_convert("UTC").to_numpy(),
                f"{prefix}_departures": rolled["n"].to_numpy(),
                f"{prefix}_late_rate": np.where(rolled["n"] > 0, rolled["late"] / rolled["n"], np.nan),
                f"{prefix}_mean_delay": np.where(rolled["n"] > 0, rolled["delay"] / rolled["n"], np.nan),
            }
        )
    return _feature_table(out, [key])


_HOLIDAYS: list[date] = [
    d.date() for d in USFederalHolidayCalendar().holidays(start="2000-01-01", end="2040-12-31")
]
_ZONE = ZoneInfo(LOCAL_TZ)
SCHEDULE_COLUMNS: tuple[str, ...] = ("dep_hour", "weekday", "month", "days_to_holiday", "distance")


def schedule_features_row(sched_dep: datetime, distance: float) -> dict[str, float | str]:
    """Calendar and schedule features of one request, from its own fields (no lookup).

    Plain Python on purpose: the service calls it once per request, where pandas' per-call
    overhead would cost more than the whole prediction; training maps it over every row.
    """
    if sched_dep.tzinfo is None:
        raise ValueError(f"scheduled departure {sched_dep.isoformat()} has no time zone")
    local = sched_dep.astimezone(_ZONE)
    day = local.date()
    i = bisect_left(_HOLIDAYS, day)
    gaps = [abs((_HOLIDAYS[j] - day).days) for j in (i - 1, i) if 0 <= j < len(_HOLIDAYS)]
    return {
        "dep_hour": local.hour + local.minute / 60.0,
        "weekday": str(local.weekday()),
        "month": float(local.month),
        "days_to_holiday": float(min(min(gaps), 14)),
        "distance": float(distance),
    }


def schedule_features(sched_dep_ts: pd.Series, distance: pd.Series) -> pd.DataFrame:
    """:func:`schedule_features_row` over many requests."""
    rows = [
        schedule_features_row(ts.to_pydatetime(), d)
        for ts, d in zip(pd.to_datetime(sched_dep_ts, utc=True), pd.Series(distance).astype("float64"))
    ]
    return pd.DataFrame(rows, columns=list(SCHEDULE_COLUMNS), index=sched_dep_ts.index)


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
    out["hours_since_last_dep"] = hours_since(frame["last_dep_unix"].astype("float64").to_numpy(), now)
    return out


