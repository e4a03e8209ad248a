"""The service's prediction log, read as a dataset."""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from flight_delay.prediction_log import read_log


class PredictionLogResource(dg.ConfigurableResource):
    """The service's SQLite prediction log (``DataLayout.prediction_log`` of the data folder both
    use), opened read-only."""

    path: str = Field(description="The service's predictions.db; a missing file reads as an empty log.")

    def read(self, since: float | None = None, start: float | None = None, end: float | None = None) -> pd.DataFrame:
        """The logged predictions (``since``: made at or after, unix seconds), those of data time
        in ``[start, end)`` when given (``flight_delay.prediction_log.read_log``)."""
        return read_log(Path(self.path), since, start=start, end=end)

    def exists(self) -> bool:
        return Path(self.path).exists()
