"""What identifies a flight, and what its schedule alone says about it.

One definition of each, shared by the pipeline (over a day's departures) and the service (one
request at a time): the flight key, the route, the placeholder for a missing tail number, the
scheduled departure, the label and the calendar features. Training and serving cannot disagree
on them because neither has its own copy.
"""

from __future__ import annotations

from bisect import bisect_left
from datetime import date, datetime
from typing import TypeVar
from zoneinfo import ZoneInfo

import pandas as pd
from pandas.tseries.holiday import USFederalHolidayCalendar

LOCAL_TZ = "America/New_York"
LOCAL_ZONE = ZoneInfo(LOCAL_TZ)
LATE_MINUTES = 15.0
# The key of a flight without a tail number: one shared "aircraft" the feature store never
# describes, so such flights are served through the model's missing-value path.
UNKNOWN_TAIL = "UNKNOWN"
FLIGHT_KEY_PATTERN = r"^\d{4}-\d{2}-\d{2}:[A-Z0-9]{2}\d{1,4}:[A-Z0-9]{3}$"
# The feature store's entities and the request fields that name them.
ENTITY_KEYS: tuple[str, ...] = ("origin", "carrier", "tailnum", "route")

T = TypeVar("T", float, pd.Series)


def flight_key(local_date: str, carrier: str, number: int, origin: str) -> str:
    """``2013-03-31:UA1545:EWR``: local date of scheduled departure, carrier and number, origin."""
    return f"{local_date}:{carrier}{number}:{origin}"


def local_date(ts: datetime) -> str:
    """``YYYY-MM-DD`` of an aware instant in the airports' local time."""
    if ts.tzinfo is None:
        raise ValueError(f"{ts.isoformat()} has no time zone; expected an aware datetime")
    return ts.astimezone(LOCAL_ZONE).date().isoformat()  # a quarter of strftime's cost


def route(origin: str, dest: str) -> str:
    """``EWR-IAH``: the route entity's key."""
    return f"{origin}-{dest}"


def tail_key(tailnum: str | None) -> str:
    """The aircraft entity's key: the tail number, or :data:`UNKNOWN_TAIL` when there is none."""
    return tailnum if tailnum else UNKNOWN_TAIL


def entity_keys(origin: str, carrier: str, tailnum: str | None, dest: str) -> dict[str, str]:
    """The feature store's join keys of one flight, by :data:`ENTITY_KEYS`."""
    return {"origin": origin, "carrier": carrier, "tailnum": tail_key(tailnum), "route": route(origin, dest)}


def is_late(departure_delay_minutes: T) -> T:
    """The label: leaving 15 minutes late or more (a number, or element-wise over a Series)."""
    return departure_delay_minutes >= LATE_MINUTES


def scheduled_departure(time_hour: pd.Series, minute: pd.Series) -> pd.Series:
    """Scheduled departures (UTC) from the source's ``time_hour`` and ``minute``.

    ``time_hour`` is the scheduled hour in UTC, so adding the local minute gives the scheduled
    departure without any daylight-saving ambiguity.
    """
    return (pd.to_datetime(time_hour, utc=True) + pd.to_timedelta(minute.astype("int64"), unit="m")).astype(
        "datetime64[ns, UTC]"
    )


_HOLIDAYS: list[date] = [d.date() for d in USFederalHolidayCalendar().holidays(start="2000-01-01", end="2040-12-31")]
HOLIDAY_HORIZON_DAYS = 14
SCHEDULE_COLUMNS: tuple[str, ...] = ("dep_hour", "weekday", "month", "days_to_holiday", "distance")
SCHEDULE_CATEGORICAL: tuple[str, ...] = ("weekday",)
SCHEDULE_NUMERIC: tuple[str, ...] = tuple(c for c in SCHEDULE_COLUMNS if c not in SCHEDULE_CATEGORICAL)


def schedule_features_row(sched_dep: datetime, distance: float) -> dict[str, float | str]:
    """Calendar and schedule features of one request, from its own fields (no lookup).

    Plain Python on purpose: the service calls it once per request, where pandas' per-call
    overhead would cost more than the whole prediction; training maps it over every row.
    """
    if sched_dep.tzinfo is None:
        raise ValueError(f"scheduled departure {sched_dep.isoformat()} has no time zone")
    local = sched_dep.astimezone(LOCAL_ZONE)
    day = local.date()
    i = bisect_left(_HOLIDAYS, day)
    gaps = [abs((_HOLIDAYS[j] - day).days) for j in (i - 1, i) if 0 <= j < len(_HOLIDAYS)]
    return {
        "dep_hour": local.hour + local.minute / 60.0,
        "weekday": str(local.weekday()),
        "month": float(local.month),
        "days_to_holiday": float(min(min(gaps), HOLIDAY_HORIZON_DAYS)),
        "distance": float(distance),
    }


def schedule_features(sched_dep_ts: pd.Series, distance: pd.Series) -> pd.DataFrame:
    """:func:`schedule_features_row` over many requests."""
    rows = [
        schedule_features_row(ts.to_pydatetime(), d)
        for ts, d in zip(pd.to_datetime(sched_dep_ts, utc=True), pd.Series(distance).astype("float64"))
    ]
    return pd.DataFrame(rows, columns=list(SCHEDULE_COLUMNS), index=sched_dep_ts.index)
