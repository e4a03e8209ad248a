"""Training rows from the offline store: prediction requests joined point-in-time to a feature
service with ``get_historical_features``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from flight_delay.flights import LOCAL_TZ


def historical_features(store: Any, requests: pd.DataFrame, service_name: str) -> pd.DataFrame:
    """``requests`` (an ``event_timestamp`` = prediction time per row, the entity keys, the
    request's own fields and a UTC ``sched_dep_ts``) with the service's features as of each
    prediction time.

    One month of requests per retrieval keeps the join's memory bounded. Timestamps come back as
    nanosecond UTC whatever the offline engine returned; ``sched_dep_ts`` travels through the join
    as integer nanoseconds, which every engine keeps exactly.
    """
    service = store.get_feature_service(service_name)
    month = requests["sched_dep_ts"].dt.tz_convert(LOCAL_TZ).dt.strftime("%Y-%m")
    parts = [
        store.get_historical_features(
            entity_df=chunk.drop(columns=["sched_dep_ts"]).assign(sched_dep_unix=chunk["sched_dep_ts"].astype("int64")),
            features=service,
        ).to_df()
        for _, chunk in requests.groupby(month)
    ]
    joined = pd.concat(parts, ignore_index=True)
    joined["event_timestamp"] = pd.to_datetime(joined["event_timestamp"], utc=True).astype("datetime64[ns, UTC]")
    joined["sched_dep_ts"] = pd.to_datetime(joined.pop("sched_dep_unix"), utc=True).astype("datetime64[ns, UTC]")
    return joined
