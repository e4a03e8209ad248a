"""Partitions: one per local day of the year the data covers."""

import warnings
from typing import Any

import dagster as dg
import pandas as pd

from flight_delay.flights import LOCAL_TZ
from pipeline.step_resources import step_op_tags

daily_partitions = dg.DailyPartitionsDefinition(start_date="2013-01-01", end_date="2014-01-01", timezone=LOCAL_TZ)


def days_between(first: str, last: str) -> list[str]:
    """Every day from ``first`` to ``last`` (``YYYY-MM-DD``), both included."""
    return [d.strftime("%Y-%m-%d") for d in pd.date_range(first, last, freq="D")]


# A range of days in one run is how the daily assets are backfilled, on purpose; Dagster flags the
# parameter as beta at every decoration, which says nothing to someone running the pipeline.
warnings.filterwarnings(
    "ignore", message=r"Parameter `backfill_policy` .* is currently in beta", category=dg.BetaWarning
)


def daily_asset(group: str, partition_column: str, **kwargs: Any) -> dict[str, Any]:
    """``@asset`` arguments of a table partitioned by local day: a range of days is one run (any
    day can be re-run alone), and ``partition_column`` tells the IO manager each row's day.
    ``kwargs`` go to ``@asset`` (``kinds`` replaces the default pandas and parquet). The group's
    step size goes along as op tags (``pipeline.step_resources``)."""
    return dict(
        group_name=group,
        op_tags=step_op_tags(group),
        partitions_def=daily_partitions,
        backfill_policy=dg.BackfillPolicy.single_run(),
        metadata={"partition_column": partition_column},
        **{"kinds": {"pandas", "parquet"}, **kwargs},
    )
