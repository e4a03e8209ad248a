"""Partitions: one per local day of the year the data covers."""

import dagster as dg

from flight_delay.features import LOCAL_TZ

daily_partitions = dg.DailyPartitionsDefinition(
    start_date="2013-01-01", end_date="2014-01-01", timezone=LOCAL_TZ
)
