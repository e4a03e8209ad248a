"""Typed resources, each an interface with a local implementation (S3 and Kubernetes ones sit
behind the same interfaces)."""

from pipeline.resources.feature_store import FeatureStoreResource
from pipeline.resources.flight_source import FlightDataSource, NycFlights13Source
from pipeline.resources.model_registry import LocalModelRegistry, ModelRegistryResource
from pipeline.resources.tables import LocalTableStore, ParquetIOManager, TableStore

__all__ = [
    "FeatureStoreResource", "FlightDataSource", "LocalModelRegistry", "LocalTableStore",
    "ModelRegistryResource", "NycFlights13Source", "ParquetIOManager", "TableStore",
]
