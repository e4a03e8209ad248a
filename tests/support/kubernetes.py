"""Kubernetes manifests for the tests: the kustomize overlays rendered by kubectl, documents
validated by kubernetes-validate against the 1.30 schemas, and the pod specs inside them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flight_delay.paths import PROJECT_ROOT

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


def render_overlay(name: str) -> str:
    """``kubectl kustomize deploy/k8s/overlays/NAME``: the YAML stream."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed (it ships kustomize): install it to render deploy/k8s")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "overlays" / name)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kubectl kustomize overlays/{name} failed:\n{done.stderr}"
    return done.stdout


def validate(*paths: Path) -> str:
    """``kubernetes-validate --strict -k 1.30.0 PATHS``: its output, after asserting it passed."""
    exe = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run(
        [str(exe), "--strict", "-k", KUBERNETES_VERSION, *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"kubernetes-validate failed:\n{output}"
    return output


def documents(stream: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(stream) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(kind/name, pod spec)`` of every workload."""
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]["spec"]


def hardening_problems(where: str, pod: dict[str, Any]) -> list[str]:
    """What keeps ``pod`` from the restricted Pod Security level and from bounded resources."""
    problems = []
    pod_security = pod.get("securityContext", {})
    if pod_security.get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problems.append(f"{where}: no RuntimeDefault seccomp profile")
    for container in [*pod.get("initContainers", []), *pod["containers"]]:
        at = f"{where} container {container['name']}"
        security = container.get("securityContext", {})
        if not (security.get("runAsNonRoot") or pod_security.get("runAsNonRoot")):
            problems.append(f"{at}: may run as root")
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{at}: writable root filesystem")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{at}: may escalate privileges")
        if security.get("capabilities", {}).get("drop") != ["ALL"]:
            problems.append(f"{at}: keeps capabilities")
        resources = container.get("resources", {})
        for bound in ("requests", "limits"):
            if not {"cpu", "memory"} <= set(resources.get(bound, {})):
                problems.append(f"{at}: no cpu and memory {bound}")
    return problems


def cpu(quantity: str) -> float:
    return float(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def memory(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    return int(quantity[:-2]) * units[quantity[-2:]] if quantity[-2:] in units else int(quantity)


# What a pod of the aws or k8s profile must have in its environment (flight_delay/paths.py,
# flight_delay/object_store.py): the profile, the bucket, the online store, and the database of
# the prediction log and champion history, whose URL holds a password and so comes from a Secret.
PROFILE_ENV = (
    "FLIGHT_DELAY_PROFILE",
    "FLIGHT_DELAY_S3_BUCKET",
    "FLIGHT_DELAY_ONLINE_STORE",
    "FLIGHT_DELAY_DATABASE_URL",
)
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def container_env(container: dict[str, Any], docs: list[dict[str, Any]] = ()) -> dict[str, dict[str, Any]]:
    """Name to env entry of ``container``, with the literals of the ConfigMaps it loads by ``envFrom``
    that are in ``docs`` as ``{"value": ...}`` (others, such as the Dagster chart's, are not read);
    an explicit ``env`` entry wins, as in Kubernetes."""
    env: dict[str, dict[str, Any]] = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        for configmap in [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]:
            env |= {key: {"name": key, "value": value} for key, value in configmap["data"].items()}
    return env | {e["name"]: e for e in container.get("env", [])}


def profile_env_problems(
    where: str, env: dict[str, dict[str, Any]], profiles: set[str], s3_compatible: bool
) -> list[str]:
    """What keeps ``env`` from running a profile of ``profiles`` against S3 (an S3-compatible
    server in the cluster with keys from a Secret, or AWS through the pod's IAM role, no keys)."""
    problems = [f"{where}: no {name}" for name in PROFILE_ENV if name not in env]
    if problems:
        return problems
    if env["FLIGHT_DELAY_PROFILE"].get("value") not in profiles:
        problems.append(f"{where}: FLIGHT_DELAY_PROFILE is {env['FLIGHT_DELAY_PROFILE']} , not one of {profiles}")
    if not env["FLIGHT_DELAY_S3_BUCKET"].get("value"):
        problems.append(f"{where}: FLIGHT_DELAY_S3_BUCKET is empty")
    if "secretKeyRef" not in env["FLIGHT_DELAY_DATABASE_URL"].get("valueFrom", {}):
        problems.append(f"{where}: FLIGHT_DELAY_DATABASE_URL is not read from a Secret")
    if s3_compatible:
        if not env.get("AWS_ENDPOINT_URL_S3", {}).get("value", "").startswith("http"):
            problems.append(f"{where}: no AWS_ENDPOINT_URL_S3 for the S3-compatible server")
        problems += [
            f"{where}: {key} is not read from a Secret"
            for key in AWS_KEYS
            if "secretKeyRef" not in env.get(key, {}).get("valueFrom", {})
        ]
    else:
        present = [key for key in (*AWS_KEYS, "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") if key in env]
        problems += [f"{where}: {key} set on AWS, where the pod's IAM role (IRSA) signs" for key in present]
    return problems
