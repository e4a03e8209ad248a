"""Where a run's steps execute, chosen by the deployment profile ``FLIGHT_DELAY_PROFILE``.

``local`` (the default) keeps every step of a run in the run's own process. ``k8s`` runs each step
as a Kubernetes Job of its own (dagster-k8s's ``k8s_job_executor``) sized by its asset group
(``pipeline.step_resources``); its namespace and image come from ``FLIGHT_DELAY_K8S_NAMESPACE`` and
``FLIGHT_DELAY_IMAGE`` when set, resolved when a run starts, else from the run launcher's namespace
and the code location's image. ``aws`` changes where state is kept (S3, Redis, PostgreSQL), not
where steps run: they stay in the run's process. On a cluster (EKS) the Dagster deployment uses
``k8s``, which is the aws storage with steps as Kubernetes Jobs.
"""

import os
from typing import Any, Final

import dagster as dg

from flight_delay.paths import PROFILE_ENV, Profile, deployment_profile

__all__ = ["PROFILE_ENV", "Profile", "deployment_profile", "executor_for", "k8s_executor_config"]

NAMESPACE_ENV: Final = "FLIGHT_DELAY_K8S_NAMESPACE"
IMAGE_ENV: Final = "FLIGHT_DELAY_IMAGE"


def k8s_executor_config() -> dict[str, Any]:
    """Config of the k8s executor: each setting read from its environment variable at run start,
    and left to dagster-k8s's default when the variable is not set where the definitions load."""
    # Steps call no Kubernetes API (the run worker creates their Jobs): no token in their pods.
    config: dict[str, Any] = {"step_k8s_config": {"pod_spec_config": {"automount_service_account_token": False}}}
    if os.environ.get(NAMESPACE_ENV):
        config["job_namespace"] = {"env": NAMESPACE_ENV}
    if os.environ.get(IMAGE_ENV):
        config["job_image"] = {"env": IMAGE_ENV}
    return config


def executor_for(profile: Profile) -> dg.ExecutorDefinition:
    """The executor of every job of the code location under ``profile``."""
    if profile == "k8s":
        # Imported here: the kubernetes client costs seconds that local runs never need.
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor.configured(k8s_executor_config(), name="k8s_step_jobs")
    # Steps are short and the machine small: one process per run beats one per step.
    return dg.in_process_executor
