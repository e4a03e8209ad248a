"""Typed resources, each an interface with a local implementation (and an S3 one for tables)."""

from pipeline.resources.feature_store import FeatureStoreResource
from pipeline.resources.flight_source import FlightDataSource, NycFlights13Source
from pipeline.resources.metrics import MetricsSource, PrometheusMetrics, ServiceMetrics
from pipeline.resources.model_registry import LocalModelRegistry, ModelRegistryResource
from pipeline.resources.prediction_log import PredictionLogResource
from pipeline.resources.tables import LocalTableStore, ParquetIOManager, S3TableStore, TableStore

__all__ = [
    "FeatureStoreResource",
    "FlightDataSource",
    "LocalModelRegistry",
    "LocalTableStore",
    "MetricsSource",
    "ModelRegistryResource",
    "NycFlights13Source",
    "ParquetIOManager",
    "PredictionLogResource",
    "PrometheusMetrics",
    "S3TableStore",
    "ServiceMetrics",
    "TableStore",
]
