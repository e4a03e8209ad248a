"""The service's prediction log, read as a dataset."""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from flight_delay.log_reading import read_log


class PredictionLogResource(dg.ConfigurableResource):
    """The service's prediction log, opened read-only: the SQLite file of the data folder both use
    (``DataLayout.prediction_log``), or the PostgreSQL database all replicas write to."""

    path: str = Field(description="The service's predictions.db; a missing file reads as an empty log.")
    database_url: str | None = Field(
        default=None,
        description="postgresql://user:password@host:port/database holding the log instead of the file "
        "(FLIGHT_DELAY_DATABASE_URL); a database without its tables reads as an empty log.",
    )

    @property
    def location(self) -> str | Path:
        """What the readers of :mod:`flight_delay.prediction_log` take: the URL, else the file."""
        return self.database_url or Path(self.path)

    def read(self, since: float | None = None, start: float | None = None, end: float | None = None) -> pd.DataFrame:
        """The logged predictions (``since``: made at or after, unix seconds), those of data time
        in ``[start, end)`` when given (``flight_delay.log_reading.read_log``)."""
        return read_log(self.location, since, start=start, end=end)

    def exists(self) -> bool:
        return self.database_url is not None or Path(self.path).exists()
