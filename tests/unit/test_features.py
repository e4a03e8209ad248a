"""Point-in-time correctness of the feature tables: nothing is stamped before it is known."""

import numpy as np
import pandas as pd
import pytest

from flight_delay import data
from flight_delay import feature_tables as F
from flight_delay.flights import LOCAL_TZ, schedule_features


def _departures(rows: list[dict]) -> pd.DataFrame:
    """Raw-like flights rows → prepared departures."""
    base = {
        "year": 2013,
        "month": 1,
        "day": 1,
        "dep_time": 0.0,
        "sched_dep_time": 0,
        "arr_time": np.nan,
        "sched_arr_time": 0,
        "arr_delay": np.nan,
        "carrier": "UA",
        "tailnum": "N1",
        "origin": "EWR",
        "dest": "IAH",
        "air_time": np.nan,
        "distance": 1400.0,
    }
    frame = pd.DataFrame([base | r for r in rows])
    local = pd.to_datetime(frame["sched"], utc=True).dt.tz_convert(LOCAL_TZ)
    frame["month"], frame["day"] = local.dt.month, local.dt.day  # the flight's (local) day
    frame["hour"] = frame["sched"].str.slice(11, 13).astype(int)
    frame["minute"] = frame["sched"].str.slice(14, 16).astype(int)
    frame["time_hour"] = pd.to_datetime(frame.pop("sched"), utc=True).dt.floor("h")
    frame["flight"] = range(1, len(frame) + 1)
    return F.prepare_departures(frame)


def _local_midnight(day: str) -> pd.Timestamp:
    return pd.Timestamp(day).tz_localize(LOCAL_TZ).tz_convert("UTC")


@pytest.fixture()
def three_flights() -> pd.DataFrame:
    # UTC times; delays in minutes, the second cancelled.
    return _departures(
        [
            {"sched": "2013-01-01T15:00", "dep_delay": 30.0},
            {"sched": "2013-01-01T15:10", "dep_delay": np.nan, "dep_time": np.nan},
            {"sched": "2013-01-01T15:20", "dep_delay": 5.0},
        ]
    )


def test_prepare_departures_labels_and_timestamps(three_flights):
    d = three_flights
    assert list(d["actual_dep_ts"].dt.strftime("%H:%M").fillna("-")) == ["15:30", "-", "15:25"]
    assert d["is_late"].tolist()[0] == 1.0 and np.isnan(d["is_late"].tolist()[1]) and d["is_late"].tolist()[2] == 0.0
    assert d["cancelled"].tolist() == [False, True, False]


def test_origin_activity_counts_only_departures_already_made(three_flights):
    table = F.departure_activity(
        three_flights, F.ORIGIN_1H, _local_midnight("2013-01-01"), _local_midnight("2013-01-02")
    )
    asof = pd.merge_asof(
        pd.DataFrame(
            {
                "event_timestamp": pd.to_datetime(
                    ["2013-01-01T15:20", "2013-01-01T15:25", "2013-01-01T15:30", "2013-01-01T16:26"], utc=True
                ).astype("datetime64[ns, UTC]")
            }
        ),
        table,
        on="event_timestamp",
    )
    # 15:20: nothing has left yet, all three are due or waiting: pending counts the 15:00 and 15:10
    # (cancelled) and the 15:20 flight scheduled at this instant.
    assert asof["origin_1h_departures"].tolist() == [0, 1, 2, 1]
    assert asof.loc[0, "origin_1h_pending"] == 3
    assert asof.loc[1, "origin_1h_mean_delay"] == 5.0  # the 15:25 departure, not the later 15:30 one
    assert asof.loc[2, "origin_1h_late_rate"] == 0.5
    # 16:26: the 15:25 departure slid out of the hour; the 15:30 one is still in.
    assert asof.loc[3, "origin_1h_mean_delay"] == 30.0
    assert asof.loc[3, "origin_1h_pending"] == 1  # the cancelled flight never left


def test_activity_rows_are_emitted_only_on_change(three_flights):
    start, end = _local_midnight("2013-01-01"), _local_midnight("2013-01-02")
    table = F.departure_activity(three_flights, F.ORIGIN_1H, start, end)
    cols = F.activity_columns(F.ORIGIN_1H)
    assert len(table) < len(pd.date_range(start, end, freq="5min"))
    assert not table[cols].fillna(-1).diff().eq(0).all(axis=1).iloc[1:].any()


def test_activity_is_computed_over_whole_local_days_only(three_flights):
    with pytest.raises(ValueError, match="whole local days"):
        F.departure_activity(
            three_flights, F.ORIGIN_1H, pd.Timestamp("2013-01-01T06:00", tz="UTC"), _local_midnight("2013-01-02")
        )


def _given(departures: pd.DataFrame, day: str, lookback_days: int) -> pd.DataFrame:
    """What the day's partition is given alone: its flight day and the ``lookback_days`` before."""
    first = (pd.Timestamp(day) - pd.Timedelta(days=lookback_days)).strftime("%Y-%m-%d")
    return departures[departures["flight_date"].between(first, day)].reset_index(drop=True)


def _on(table: pd.DataFrame, day: str) -> pd.DataFrame:
    local_day = table["event_timestamp"].dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d")
    return table[local_day == day].reset_index(drop=True)


@pytest.fixture()
def three_days() -> pd.DataFrame:
    """EWR busy on three days (the 2nd's last flight leaves after midnight); LGA only on the 1st."""
    return _departures(
        [
            {"sched": "2013-01-01T14:00", "dep_delay": 20.0},
            {"sched": "2013-01-01T16:00", "dep_delay": 0.0, "origin": "LGA", "carrier": "AA"},
            {"sched": "2013-01-02T14:00", "dep_delay": 3.0},
            {"sched": "2013-01-03T04:30", "dep_delay": 45.0},  # 23:30 local on the 2nd, leaves 00:15 on the 3rd
            {"sched": "2013-01-03T14:00", "dep_delay": np.nan, "dep_time": np.nan},
            {"sched": "2013-01-03T15:00", "dep_delay": 1.0},
        ]
    )


def test_activity_of_a_day_is_the_same_built_alone_or_in_a_range(three_days):
    days = ["2013-01-01", "2013-01-02", "2013-01-03"]
    in_range = F.departure_activity(three_days, F.ORIGIN_1H, _local_midnight(days[0]), _local_midnight("2013-01-04"))
    for day, next_day in zip(days, [*days[1:], "2013-01-04"]):
        alone = F.departure_activity(
            _given(three_days, day, 1), F.ORIGIN_1H, _local_midnight(day), _local_midnight(next_day)
        )
        pd.testing.assert_frame_equal(_on(in_range, day), alone, check_exact=True)


def test_activity_restarts_each_day_and_has_the_keys_of_its_lookback_only(three_days):
    table = F.departure_activity(three_days, F.ORIGIN_1H, _local_midnight("2013-01-01"), _local_midnight("2013-01-04"))
    for day in ("2013-01-01", "2013-01-02", "2013-01-03"):
        rows = _on(table, day)
        # Every key's first grid row of the day is emitted, even unchanged from the night before.
        first = rows[rows["event_timestamp"] == _local_midnight(day)]
        expected = ["EWR", "LGA"] if day != "2013-01-03" else ["EWR"]
        assert sorted(first["origin"]) == expected, day
        # LGA's one flight (on the 1st) is read by the 1st and the 2nd, not by the 3rd.
        assert sorted(rows["origin"].unique()) == expected, day


def test_daily_rates_of_a_day_are_the_same_built_alone_or_in_a_range(three_days):
    days = [d.strftime("%Y-%m-%d") for d in pd.date_range("2013-01-01", "2013-01-11")]
    in_range = F.daily_delay_rates(three_days, F.CARRIER_7D, days[0], days[-1])
    for day in days:
        alone = F.daily_delay_rates(_given(three_days, day, 7), F.CARRIER_7D, day, day)
        pd.testing.assert_frame_equal(_on(in_range, day), alone, check_exact=True)


def test_daily_rates_have_a_row_for_the_keys_of_their_lookback_only(three_days):
    table = F.daily_delay_rates(three_days, F.CARRIER_7D, "2013-01-01", "2013-01-11")
    by_day = table.assign(day=table["event_timestamp"].dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d"))
    aa = by_day[by_day["carrier"] == "AA"].set_index("day")
    # AA flew on the 1st only: the days whose 7-day lookback holds the 1st (the 1st to the 8th).
    assert aa.index.tolist() == [f"2013-01-0{d}" for d in range(1, 9)]
    assert aa.loc["2013-01-01", "carrier_7d_departures"] == 0.0  # its flight is known the next day
    assert aa.loc["2013-01-08", "carrier_7d_departures"] == 1.0
    ua = by_day[by_day["carrier"] == "UA"].set_index("day")
    assert ua.index.tolist() == [d.strftime("%Y-%m-%d") for d in pd.date_range("2013-01-01", "2013-01-10")]
    # The flight of the 2nd that left after midnight is known on the 4th (it left on the 3rd) and
    # counts as long as the 2nd is in the lookback (up to the 9th).
    assert ua.loc["2013-01-03", "carrier_7d_departures"] == 2.0
    assert ua.loc["2013-01-04", "carrier_7d_departures"] == 4.0
    assert ua.loc["2013-01-09", "carrier_7d_departures"] == 3.0
    assert ua.loc["2013-01-10", "carrier_7d_departures"] == 1.0


def test_aircraft_last_departure_is_known_at_actual_departure(three_flights):
    table = F.aircraft_last_departure(three_flights)
    assert table["event_timestamp"].dt.strftime("%H:%M").tolist() == ["15:25", "15:30"]
    request = pd.DataFrame(
        {
            "tailnum": ["N1"],
            "event_timestamp": pd.to_datetime(["2013-01-01T15:28"], utc=True).astype("datetime64[ns, UTC]"),
        }
    )
    joined = pd.merge_asof(request, table, on="event_timestamp", by="tailnum")
    # At 15:28 the flight scheduled first (15:00, 30 min late) has not left: its delay is unknown.
    assert joined.loc[0, "last_dep_delay"] == 5.0


def test_daily_rates_use_only_previous_days():
    flights = _departures(
        [
            {"sched": "2013-01-01T15:00", "dep_delay": 60.0},
            {"sched": "2013-01-02T15:00", "dep_delay": 0.0},
        ]
    )
    table = F.daily_delay_rates(flights, F.CARRIER_7D, "2013-01-01", "2013-01-03")
    by_day = table.set_index(table["event_timestamp"].dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m-%d"))
    assert np.isnan(by_day.loc["2013-01-01", "carrier_7d_late_rate"])  # nothing before Jan 1
    assert by_day.loc["2013-01-02", "carrier_7d_late_rate"] == 1.0  # Jan 1 only, not Jan 2
    assert by_day.loc["2013-01-03", "carrier_7d_late_rate"] == 0.5
    assert by_day["event_timestamp"].dt.tz_convert(LOCAL_TZ).dt.hour.eq(0).all()


def test_prediction_requests_are_made_horizon_before_departure(three_flights):
    requests = F.prediction_requests(three_flights, pd.Timedelta(minutes=60))
    assert len(requests) == 2  # the cancelled flight has no label
    assert ((requests["sched_dep_ts"] - requests["event_timestamp"]) == pd.Timedelta(minutes=60)).all()
    assert requests["dep_hour"].tolist() == [10.0, 10 + 20 / 60]  # local (EST) hours
    assert requests["weekday"].tolist() == ["1", "1"]  # Tuesday


def test_schedule_features_measure_distance_to_holidays():
    ts = pd.Series(pd.to_datetime(["2013-11-28T17:00", "2013-11-21T17:00", "2013-08-07T17:00"], utc=True))
    out = schedule_features(ts, pd.Series([100.0, 100.0, 100.0]))
    assert out["days_to_holiday"].tolist() == [0.0, 7.0, 14.0]  # Thanksgiving, a week before, capped


def test_weather_drops_impossible_wind(real_weather):
    weather = real_weather.copy()
    weather.loc[weather.index[0], "wind_speed"] = 1048.0
    table = F.origin_hourly_weather(weather)
    assert table["wind_speed"].max() <= F.MAX_PLAUSIBLE_WIND_MPH
    assert table["wind_speed"].isna().sum() == weather["wind_speed"].isna().sum() + 1


def test_weather_is_known_when_its_hour_is_reported(real_weather):
    table = F.origin_hourly_weather(real_weather)
    hour = real_weather.sort_values(["time_hour", "origin"]).iloc[40]
    assert (table["event_timestamp"].dt.minute == 51).all()
    request = pd.DataFrame(
        {
            "origin": [str(hour["origin"])] * 2,
            "event_timestamp": hour["time_hour"] + pd.to_timedelta([50, 51], unit="min"),
        }
    )
    joined = pd.merge_asof(request, table, on="event_timestamp", by="origin")
    # At :50 the hour's reports are not all in: the row known then is the previous hour's.
    previous = real_weather[
        (real_weather["origin"] == hour["origin"])
        & (real_weather["time_hour"] == hour["time_hour"] - pd.Timedelta("1h"))
    ]
    assert joined["pressure"].tolist() == [previous["pressure"].item(), hour["pressure"]]


def test_weather_stays_on_its_local_day_all_year():
    """The stamp moves within the hour only: every row of the year, the daylight-saving days
    included, stays in the partition (local day) of the hour it describes."""
    weather = data.read_table("weather")
    table = F.origin_hourly_weather(weather).set_index(["origin", "event_timestamp"])
    stamps = weather["time_hour"] + F.WEATHER_REPORTED_AFTER_HOUR
    assert table.index.isin(list(zip(weather["origin"].astype(str), stamps))).all()
    assert len(table) == len(weather)
    local = stamps.dt.tz_convert(LOCAL_TZ)
    assert (local.dt.strftime("%Y-%m-%d") == data.local_day(weather)).all()
    assert (local.dt.hour == weather["hour"]).all() and (local.dt.minute == 51).all()
