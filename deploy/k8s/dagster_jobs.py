"""The Kubernetes Jobs Dagster creates for the k8s profile, rendered without a cluster:
``python -m deploy.k8s.dagster_jobs OUT_DIR [--values deploy/k8s/dagster/values-dev.yaml]``.

From a Dagster chart values file, for the Definitions its user deployment loads: one run-worker
Job per job of the code location, built as ``K8sRunLauncher`` builds it, and one step Job per
asset, built as ``k8s_job_executor`` builds it with the asset's ``dagster-k8s/config`` op tag
merged in. The parts are dagster-k8s's own: the launcher constructed from the config the chart
writes into the instance ConfigMap (and so checked against its schema), ``K8sContainerContext``
for the code location's context the chart hands to launched runs and its merges,
``construct_dagster_k8s_job``. What the chart's templates do (values to launcher config and to
container context) is written out here, after its 1.13 templates; so is the order in which
``K8sStepHandler`` merges configs, as it is not callable without a running executor.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes
import yaml
from dagster._config import process_config
from dagster._core.code_pointer import ModuleCodePointer
from dagster._core.execution.retries import RetryMode
from dagster._core.instance.ref import InstanceRef
from dagster._core.origin import JobPythonOrigin, RepositoryPythonOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._grpc.types import ExecuteRunArgs, ExecuteStepArgs
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import (
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_job_name_from_run_id,
    get_k8s_job_name,
    get_user_defined_k8s_config,
)

from flight_delay.paths import PROJECT_ROOT

DAGSTER_VALUES = PROJECT_ROOT / "deploy" / "k8s" / "dagster"
RELEASE = "dagster"  # the release name the values files ask for
NAMESPACE = "flight-delay"  # the release's namespace (deploy/k8s/base)
FULLNAME = RELEASE  # the chart's fullname: the release name contains the chart's name
USER_FULLNAME = f"{RELEASE}-dagster-user-deployments"  # the subchart's fullname
DAGSTER_HOME = "/opt/dagster/dagster_home"
WORKING_DIRECTORY = "/app"  # where the user code image keeps the project


def _camel_to_snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


def launcher_config(values: Mapping[str, Any]) -> dict[str, Any]:
    """``K8sRunLauncher``'s config as the chart's instance ConfigMap writes it from ``values``,
    the kubeconfig aside (set by the caller: no cluster here)."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    chart_global = values.get("global", {})
    config: dict[str, Any] = {
        "job_namespace": launcher.get("jobNamespace") or NAMESPACE,
        "image_pull_policy": launcher["imagePullPolicy"],
        "service_account_name": chart_global.get("serviceAccountName") or FULLNAME,
        "dagster_home": chart_global.get("dagsterHome", DAGSTER_HOME),
        "instance_config_map": f"{FULLNAME}-instance",
        "postgres_password_secret": chart_global.get("postgresqlSecretName", "dagster-postgresql-secret"),
    }
    if values.get("imagePullSecrets"):
        config["image_pull_secrets"] = values["imagePullSecrets"]
    simple = {
        "envVars": "env_vars",
        "volumeMounts": "volume_mounts",
        "volumes": "volumes",
        "labels": "labels",
        "resources": "resources",
        "securityContext": "security_context",
        "schedulerName": "scheduler_name",
    }
    config |= {name: launcher[key] for key, name in simple.items() if launcher.get(key)}
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if launcher.get(key):
            config[name] = [source["name"] for source in launcher[key] if "name" in source]
    if launcher.get("failPodOnRunFailure"):
        config["fail_pod_on_run_failure"] = True
    if launcher.get("runK8sConfig"):
        config["run_k8s_config"] = {_camel_to_snake(k): v for k, v in launcher["runK8sConfig"].items() if v}
    return config


def code_location_context(deployment: Mapping[str, Any]) -> dict[str, Any]:
    """The container context the chart gives a user deployment whose ``includeConfigInLaunchedRuns``
    is on: its env, volumes, security context and resources reach every run it launches."""
    k8s: dict[str, Any] = {
        "image_pull_policy": deployment["image"]["pullPolicy"],
        "env_config_maps": [f"{USER_FULLNAME}-{deployment['name']}-user-env"]
        + [source["name"] for source in deployment.get("envConfigMaps", []) if "name" in source],
        "namespace": NAMESPACE,
        "service_account_name": f"{USER_FULLNAME}-user-deployments",
    }
    if deployment.get("envSecrets"):
        k8s["env_secrets"] = [source["name"] for source in deployment["envSecrets"] if "name" in source]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    for key, name in (("resources", "resources"), ("securityContext", "security_context")):
        if deployment.get(key):
            k8s[name] = deployment[key]
    if isinstance(deployment.get("env"), list):
        k8s["env"] = deployment["env"]
    if deployment.get("podSecurityContext"):  # inherited by run pods since chart 1.13.0
        k8s["run_k8s_config"] = {"pod_spec_config": {"security_context": deployment["podSecurityContext"]}}
    return {"k8s": k8s}


@contextmanager
def run_launcher(values: Mapping[str, Any]) -> Iterator[K8sRunLauncher]:
    """The chart's ``K8sRunLauncher``, its config checked against dagster-k8s's schema, pointed at
    a kubeconfig of a cluster it never calls."""
    with tempfile.TemporaryDirectory() as folder:
        kubeconfig = Path(folder) / "kubeconfig"
        kubeconfig.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
                    "users": [{"name": "none", "user": {"token": "unused"}}],
                    "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                    "current-context": "none",
                }
            )
        )
        config = {**launcher_config(values), "load_incluster_config": False, "kubeconfig_file": str(kubeconfig)}
        processed = process_config(K8sRunLauncher.config_type(), config)
        if not processed.success:
            raise ValueError(f"the chart's run launcher config is not K8sRunLauncher's: {processed.errors}")
        yield K8sRunLauncher(**processed.value)


def instance_ref(values: Mapping[str, Any]) -> InstanceRef:
    """The instance the run and step pods load: the chart's Postgres storage under DAGSTER_HOME
    (the pods get DAGSTER_PG_PASSWORD from the password Secret)."""
    postgres = values["postgresql"]
    host = postgres.get("postgresqlHost") if not postgres.get("enabled", True) else f"{FULLNAME}-postgresql"
    storage = {
        "username": postgres.get("postgresqlUsername", "test"),
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": host,
        "db_name": postgres.get("postgresqlDatabase", "test"),
        "port": postgres.get("service", {}).get("port", 5432),
        "params": postgres.get("postgresqlParams", {}),
    }
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "dagster.yaml").write_text(yaml.safe_dump({"storage": {"postgres": {"postgres_db": storage}}}))
        return InstanceRef.from_dir(values.get("global", {}).get("dagsterHome", DAGSTER_HOME), config_dir=folder)


# What a variable the pods read from a Secret holds while the definitions load here: they check
# that it is set and of the right kind, and the pods resolve the real value when they start.
_SECRET_STANDINS = {
    "FLIGHT_DELAY_DATABASE_URL": "postgresql://from-secret@database:5432/flight_delay",
    "FLIGHT_DELAY_ONLINE_STORE": "redis://from-secret:6379/0",
}


def _env(deployment: Mapping[str, Any]) -> dict[str, str]:
    """The deployment's environment: plain values as given, values from a Secret as stand-ins."""
    env = {}
    for e in deployment.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "valueFrom" in e:
            env[e["name"]] = _SECRET_STANDINS.get(e["name"], "from-secret")
    return env


def render(values_path: Path) -> dict[str, dict[str, Any]]:
    """File name to manifest: ``run-worker-<job>.yaml`` per job, ``step-<asset>.yaml`` per asset
    step (when the profile runs steps as Jobs)."""
    values = yaml.safe_load(values_path.read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    context = code_location_context(deployment)
    serialize = kubernetes.client.ApiClient().sanitize_for_serialization
    ref = instance_ref(values)
    manifests: dict[str, dict[str, Any]] = {}

    # The Definitions the code server loads, with its environment (profile, namespace, image).
    saved = dict(os.environ)
    os.environ.update({**_env(deployment), "KUBERNETES_SERVICE_HOST": "in-a-pod"})
    try:
        from pipeline.definitions import build_definitions

        defs = build_definitions()
        named = sorted(job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__"))
        # Every asset is a step of the implicit asset job, including those no named job selects.
        everything = defs.resolve_implicit_global_asset_job_def()
        with run_launcher(values) as launcher:
            for job in [*(defs.resolve_job_def(name) for name in named), everything]:
                run = DagsterRun(
                    job_name=job.name,
                    run_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"flight-delay/{job.name}")),
                    job_code_origin=JobPythonOrigin(
                        job.name,
                        RepositoryPythonOrigin(
                            executable_path="python",
                            code_pointer=ModuleCodePointer("pipeline.definitions", "defs", WORKING_DIRECTORY),
                            container_image=image,
                            entry_point=["dagster"],
                            container_context=context,
                        ),
                    ),
                )
                if job is not everything:
                    manifests[f"run-worker-{job.name}.yaml"] = serialize(_run_worker(launcher, run, ref))
                    continue
                if job.executor_def.name != "k8s_step_jobs":
                    break  # steps run inside the run worker
                resolved = job.executor_def.config_schema.resolve_config({})
                if not resolved.success:
                    raise ValueError(f"the k8s executor's config does not resolve: {resolved.errors}")
                for node in job.graph.nodes:
                    step = _step_worker(launcher, run, ref, node.name, node.tags, resolved.value["config"])
                    manifests[f"step-{node.name}.yaml"] = serialize(step)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return manifests


def _run_worker(launcher: K8sRunLauncher, run: DagsterRun, ref: InstanceRef) -> kubernetes.client.V1Job:
    """What ``K8sRunLauncher.launch_run`` submits for ``run``."""
    origin = run.job_code_origin
    assert origin is not None
    context = launcher.get_container_context_for_run(run)
    args = ExecuteRunArgs(
        job_origin=origin,
        run_id=run.run_id,
        instance_ref=ref,
        set_exit_code_on_failure=launcher.fail_pod_on_run_failure,
    ).get_command_args()
    job_name = get_job_name_from_run_id(run.run_id)
    job_config = context.get_k8s_job_config(job_image=origin.repository_origin.container_image, run_launcher=launcher)
    return construct_dagster_k8s_job(
        job_config=job_config,
        args=args,
        job_name=job_name,
        pod_name=job_name,
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": origin.job_name, "dagster/run-id": run.run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": origin.job_name}],
    )


def _step_worker(
    launcher: K8sRunLauncher,
    run: DagsterRun,
    ref: InstanceRef,
    step_key: str,
    step_tags: Mapping[str, str],
    executor_config: Mapping[str, Any],
) -> kubernetes.client.V1Job:
    """What ``k8s_job_executor`` submits for ``step_key`` of ``run``: the run's context without its
    tags, the executor's config, then the step's ``dagster-k8s/config`` tag."""
    origin = run.job_code_origin
    assert origin is not None
    # k8s_job_executor's container context from its config, key for key.
    cfg = executor_config
    executor_context = K8sContainerContext(
        image_pull_policy=cfg.get("image_pull_policy"),
        image_pull_secrets=cfg.get("image_pull_secrets"),
        service_account_name=cfg.get("service_account_name"),
        env_config_maps=cfg.get("env_config_maps"),
        env_secrets=cfg.get("env_secrets"),
        env_vars=cfg.get("env_vars"),
        volume_mounts=cfg.get("volume_mounts"),
        volumes=cfg.get("volumes"),
        labels=cfg.get("labels"),
        namespace=cfg.get("job_namespace"),
        resources=cfg.get("resources"),
        scheduler_name=cfg.get("scheduler_name"),
        security_context=cfg.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("step_k8s_config", {})),
    )
    per_step = UserDefinedDagsterK8sConfig.from_dict(cfg.get("per_step_k8s_config", {}).get(step_key, {}))
    context = (
        K8sContainerContext.create_for_run(run, launcher, include_run_tags=False)
        .merge(executor_context)
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
        .merge(K8sContainerContext(run_k8s_config=per_step))
    )
    job_config = context.get_k8s_job_config(executor_config.get("job_image"), launcher)
    if not job_config.job_image:
        job_config = job_config.with_image(origin.repository_origin.container_image)
    step_args = ExecuteStepArgs(
        job_origin=origin,
        run_id=run.run_id,
        step_keys_to_execute=[step_key],
        instance_ref=ref,
        retry_mode=RetryMode.from_config(executor_config.get("retries", {"enabled": {}})),
        should_verify_step=True,
    )
    job_name = f"dagster-step-{get_k8s_job_name(run.run_id, step_key)}"
    return construct_dagster_k8s_job(
        job_config=job_config,
        args=step_args.get_command_args(skip_serialized_namedtuple=True),
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": run.job_name, "dagster/op": step_key, "dagster/run-id": run.run_id},
        env_vars=[
            *step_args.get_command_env(),
            {"name": "DAGSTER_RUN_JOB_NAME", "value": run.job_name},
            {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key},
        ],
    )


def write(out_dir: Path, values_path: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, manifest in render(values_path).items():
        path = out_dir / name
        path.write_text(yaml.safe_dump(manifest, sort_keys=False))
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.k8s.dagster_jobs", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the Job manifests to")
    parser.add_argument("--values", type=Path, default=DAGSTER_VALUES / "values-dev.yaml", help="Dagster chart values")
    args = parser.parse_args()
    for path in write(args.out_dir, args.values):
        print(path)


if __name__ == "__main__":
    main()
