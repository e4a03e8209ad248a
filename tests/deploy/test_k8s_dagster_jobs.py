"""The Jobs Dagster creates under the k8s profile (deploy/k8s/dagster_jobs.py), rendered from the
chart values: valid Kubernetes 1.30, one step per asset sized by its group, hardened pods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.k8s import dagster_jobs
from pipeline.definitions import build_definitions
from pipeline.step_resources import SIZE_BY_GROUP
from tests.support.kubernetes import container_env, cpu, hardening_problems, memory, profile_env_problems, validate

VALUES = ("values-dev.yaml", "values-aws.yaml")
JOBS = ("decision_job", "feature_refresh_job", "monitoring_job", "retrain_job")


@pytest.fixture(scope="module", params=VALUES)
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp(request.param.removesuffix(".yaml"))
    paths = dagster_jobs.write(out, dagster_jobs.DAGSTER_VALUES / request.param)
    return out, {path.name: yaml.safe_load(path.read_text()) for path in paths}


def _container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_a_run_worker_per_job_and_a_step_per_asset_all_valid_kubernetes_1_30(rendered) -> None:
    out, jobs = rendered
    graph = build_definitions().resolve_asset_graph()
    assets = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert {n for n in jobs if n.startswith("run-worker-")} == {f"run-worker-{j}.yaml" for j in JOBS}
    assert {n.removeprefix("step-").removesuffix(".yaml") for n in jobs if n.startswith("step-")} == assets
    output = validate(*sorted(out.glob("*.yaml")))
    assert output.count(" passed ") == len(jobs), output
    for name, job in jobs.items():
        assert job["kind"] == "Job" and job["metadata"]["labels"]["app.kubernetes.io/instance"] == "dagster", name


def test_each_step_gets_its_asset_groups_resources_and_training_more_than_ingestion(rendered) -> None:
    _, jobs = rendered
    graph = build_definitions().resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        step = jobs[f"step-{key.to_user_string()}.yaml"]
        assert _container(step)["resources"] == SIZE_BY_GROUP[graph.get(key).group_name].resources(), key
    training = _container(jobs["step-delay_model.yaml"])["resources"]["requests"]
    ingestion = _container(jobs["step-raw_flights.yaml"])["resources"]["requests"]
    assert cpu(training["cpu"]) > cpu(ingestion["cpu"])
    assert memory(training["memory"]) > memory(ingestion["memory"])


def test_run_and_step_pods_are_hardened_and_only_run_workers_hold_an_api_token(rendered) -> None:
    _, jobs = rendered
    problems = [p for name, job in jobs.items() for p in hardening_problems(name, job["spec"]["template"]["spec"])]
    assert not problems, "\n".join(problems)
    for name, job in jobs.items():
        pod = job["spec"]["template"]["spec"]
        # The run worker creates its steps' Jobs through the API; a step calls no API.
        assert pod["automountServiceAccountToken"] is name.startswith("run-worker-"), name


def test_pods_run_the_user_code_image_with_the_chart_environment(rendered, request: pytest.FixtureRequest) -> None:
    _, jobs = rendered
    values = yaml.safe_load((dagster_jobs.DAGSTER_VALUES / request.node.callspec.params["rendered"]).read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    for name, job in jobs.items():
        container = _container(job)
        env = {e["name"]: e for e in container["env"]}
        assert container["image"] == image, name
        assert env["DAGSTER_PG_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dagster-postgresql-secret"
        assert env["FLIGHT_DELAY_K8S_NAMESPACE"]["value"] == "flight-delay"
        assert env["FLIGHT_DELAY_PROFILE"]["value"] == "k8s", name  # the aws storage, steps as Jobs
        assert container["args"][:3] == ["dagster", "api", "execute_run" if "run-worker" in name else "execute_step"]


def test_every_run_and_step_pod_has_what_the_k8s_profile_requires(rendered, request: pytest.FixtureRequest) -> None:
    # The bucket and its endpoint and keys (dev: SeaweedFS; aws: IRSA, no keys), the online store,
    # the database URL from a Secret: dropping any from the values fails here.
    _, jobs = rendered
    dev = request.node.callspec.params["rendered"] == "values-dev.yaml"
    problems = [
        p
        for name, job in jobs.items()
        for p in profile_env_problems(name, container_env(_container(job)), {"k8s"}, s3_compatible=dev)
    ]
    assert not problems, "\n".join(problems)
    accounts = {job["spec"]["template"]["spec"]["serviceAccountName"] for job in jobs.values()}
    assert accounts == {f"{dagster_jobs.USER_FULLNAME}-user-deployments"}, "the account the IRSA annotation is on"
    for name, job in jobs.items():
        volumes = job["spec"]["template"]["spec"].get("volumes", [])
        assert not [v for v in volumes if "persistentVolumeClaim" in v], f"{name}: state is in S3, not on a volume"


def test_the_chart_launcher_config_is_refused_when_dagster_k8s_would_refuse_it() -> None:
    values = yaml.safe_load((dagster_jobs.DAGSTER_VALUES / "values-dev.yaml").read_text())
    values["runLauncher"]["config"]["k8sRunLauncher"]["imagePullPolicy"] = ["Always"]
    with pytest.raises(ValueError, match="is not K8sRunLauncher's"), dagster_jobs.run_launcher(values):
        pass


# Keys of the chart's K8sRunLauncherConfig (helm/dagster/schema, chart 1.13): the values are
# checked by structure, the chart's values.schema.json not being vendored here.
K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}


@pytest.mark.parametrize("name", VALUES)
def test_the_chart_values_launch_runs_on_kubernetes_from_the_code_location_with_no_password(name: str) -> None:
    values = yaml.safe_load((dagster_jobs.DAGSTER_VALUES / name).read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert set(values["runLauncher"]["config"]["k8sRunLauncher"]) <= K8S_RUN_LAUNCHER_KEYS
    assert values["dagsterDaemon"]["enabled"] is True and values["dagsterDaemon"]["sensors"]["useThreads"] is True
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "pipeline.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    env = {e["name"]: e for e in deployment["env"]}
    assert env["FLIGHT_DELAY_LOOP_SENSORS"]["value"] == "on"
    assert "postgresqlPassword" not in values["postgresql"], "no password in a values file"
    if name == "values-aws.yaml":
        assert values["postgresql"]["enabled"] is False and values["generatePostgresqlPasswordSecret"] is False
        assert values["postgresql"]["postgresqlHost"].endswith(".rds.amazonaws.com")
        for secret_env in ("FLIGHT_DELAY_ONLINE_STORE", "FLIGHT_DELAY_DATABASE_URL"):
            assert env[secret_env]["valueFrom"]["secretKeyRef"]["name"] == "flight-delay-aws"
        # IRSA on the account of the code server and of the runs and steps it launches.
        account = values["dagster-user-deployments"]["serviceAccount"]
        assert account["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    else:
        assert values["postgresql"]["enabled"] is True
        for secret_env in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "FLIGHT_DELAY_DATABASE_URL"):
            assert env[secret_env]["valueFrom"]["secretKeyRef"]["name"] == "flight-delay-dev"
