"""The deployment profile picks the executor; every asset carries its group's step size."""

import json

import dagster as dg
import pytest

from pipeline.definitions import build_definitions
from pipeline.execution import deployment_profile
from pipeline.step_resources import K8S_CONFIG_TAG, SIZE_BY_GROUP, step_op_tags

JOBS = ("feature_refresh_job", "retrain_job", "monitoring_job", "decision_job")


def _cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def _bytes(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


def test_without_a_profile_every_job_runs_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLIGHT_DELAY_PROFILE", raising=False)
    defs = build_definitions()
    assert deployment_profile() == "local"
    for job in JOBS:
        assert defs.resolve_job_def(job).executor_def is dg.in_process_executor, job


def test_an_unknown_profile_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "kubernetes")
    with pytest.raises(ValueError, match="'kubernetes' is no profile; expected one of local, aws, k8s"):
        build_definitions()


def _shared_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the aws and k8s profiles require besides the bucket (never contacted at load)."""
    monkeypatch.setenv("FLIGHT_DELAY_ONLINE_STORE", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", "postgresql://flight_delay:secret@127.0.0.1:5432/flight_delay")


def test_the_k8s_profile_runs_steps_as_kubernetes_jobs_configured_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "k8s")
    monkeypatch.setenv("FLIGHT_DELAY_S3_BUCKET", "flight-delay-test")
    _shared_state(monkeypatch)
    monkeypatch.setenv("FLIGHT_DELAY_K8S_NAMESPACE", "flight-delay")
    monkeypatch.setenv("FLIGHT_DELAY_IMAGE", "flight-delay-user-code:dev")
    defs = build_definitions()
    dg.Definitions.validate_loadable(defs)
    for job in JOBS:
        executor = defs.resolve_job_def(job).executor_def
        assert executor.name == "k8s_step_jobs", job
        # Resolved against dagster-k8s's own executor schema, as a run resolves it when it starts.
        resolved = executor.config_schema.resolve_config({})
        assert resolved.success, resolved.errors
        config = resolved.value["config"]
        assert (config["job_namespace"], config["job_image"]) == ("flight-delay", "flight-delay-user-code:dev")
    monkeypatch.setenv("FLIGHT_DELAY_IMAGE", "flight-delay-user-code:next")
    config = defs.resolve_job_def("retrain_job").executor_def.config_schema.resolve_config({}).value["config"]
    assert config["job_image"] == "flight-delay-user-code:next", "read when the run starts, not at load"


def test_the_aws_profile_keeps_steps_in_the_runs_process_even_inside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    """aws is storage; only k8s (the profile the Helm values set) runs steps as Jobs."""
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "aws")
    monkeypatch.setenv("FLIGHT_DELAY_S3_BUCKET", "flight-delay-test")
    _shared_state(monkeypatch)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert build_definitions().resolve_job_def("retrain_job").executor_def is dg.in_process_executor


def test_every_asset_carries_its_groups_step_size_as_dagster_k8s_reads_it() -> None:
    from dagster_k8s.job import get_user_defined_k8s_config

    graph = build_definitions().resolve_asset_graph()
    groups = set()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        groups.add(node.group_name)
        tags = node.assets_def.op.tags
        assert K8S_CONFIG_TAG in tags, f"{key.to_user_string()} has no {K8S_CONFIG_TAG} op tag"
        config = get_user_defined_k8s_config(tags)
        assert config.container_config["resources"] == SIZE_BY_GROUP[node.group_name].resources(), key
    assert groups == set(SIZE_BY_GROUP), "every group has a size, and every size a group"


def test_training_steps_get_more_cpu_and_memory_than_ingestion_steps() -> None:
    training, ingestion = SIZE_BY_GROUP["training"], SIZE_BY_GROUP["ingestion"]
    assert _cpu(training.cpu) > _cpu(ingestion.cpu)
    assert _bytes(training.memory) > _bytes(ingestion.memory)
    for size in SIZE_BY_GROUP.values():
        assert _cpu(size.cpu_limit) >= _cpu(size.cpu) and _bytes(size.memory_limit) >= _bytes(size.memory), size


def test_a_group_without_a_size_is_refused_with_the_place_to_add_it() -> None:
    with pytest.raises(KeyError, match="add it to SIZE_BY_GROUP in pipeline/step_resources.py"):
        step_op_tags("scoring")
    assert json.loads(step_op_tags("training")[K8S_CONFIG_TAG])["container_config"]["resources"]["requests"]["cpu"]
