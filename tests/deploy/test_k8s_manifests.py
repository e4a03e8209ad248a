"""deploy/k8s: each overlay renders with kustomize, every document is valid Kubernetes 1.30, and
the rendered objects keep the invariants the deployment relies on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.prometheus.rules import SERVICE_JOB
from flight_delay.paths import PROJECT_ROOT
from tests.support.kubernetes import (
    K8S_DIR,
    container_env,
    documents,
    hardening_problems,
    one,
    pod_specs,
    profile_env_problems,
    render_overlay,
    validate,
)

OVERLAYS = ("dev", "aws")
DASHBOARDS = PROJECT_ROOT / "deploy" / "grafana" / "dashboards"
PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
SERVICE = "flight-delay-service"


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    path = tmp_path_factory.mktemp(request.param) / "rendered.yaml"
    path.write_text(render_overlay(request.param))
    return request.param, path


@pytest.fixture(scope="module")
def docs(overlay: tuple[str, Path]) -> list[dict[str, Any]]:
    return documents(overlay[1].read_text())


def test_every_rendered_document_passes_strict_validation_against_kubernetes_1_30(overlay, docs) -> None:
    output = validate(overlay[1])
    assert output.count(" passed ") == len(docs), output


def test_every_container_runs_non_root_read_only_without_capabilities_and_with_resources(docs) -> None:
    workloads = list(pod_specs(docs))
    assert {where for where, _ in workloads} >= {f"Deployment/{SERVICE}", "Deployment/prometheus"}
    problems = [p for where, pod in workloads for p in hardening_problems(where, pod)]
    assert not problems, "\n".join(problems)


def test_only_prometheus_mounts_an_api_token(docs) -> None:
    mounting = {where for where, pod in pod_specs(docs) if pod.get("automountServiceAccountToken") is not False}
    assert mounting == {"Deployment/prometheus"}, "only pod discovery needs the API"


def test_the_service_is_probed_at_livez_and_readyz_and_scraped_on_its_port(docs) -> None:
    deployment = one(docs, "Deployment", SERVICE)
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"] == [{"name": "http", "containerPort": 3000, "protocol": "TCP"}]
    annotations = template["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "3000")
    assert annotations["prometheus.io/path"] == "/metrics"
    assert one(docs, "Service", SERVICE)["spec"]["ports"][0]["port"] == 3000
    env = {e["name"]: e for e in container["env"]}
    assert env["FLIGHT_DELAY_DATA_DIR"]["value"] == "/data" and "BENTOML_HOME" in env
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/data", env["BENTOML_HOME"]["value"]} <= mounts, "every path the service writes is a volume"
    spread = template["spec"]["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert spread == deployment["spec"]["selector"]["matchLabels"]


def test_no_secret_is_written_and_secret_values_arrive_by_reference(overlay, docs) -> None:
    secrets = [d for d in docs if d["kind"] == "Secret" and (d.get("data") or d.get("stringData"))]
    assert not secrets, [s["metadata"]["name"] for s in secrets]
    for _, pod in pod_specs(docs):
        for container in pod["containers"]:
            for env in container.get("env", []):
                if any(word in env["name"] for word in ("TOKEN", "PASSWORD", "DATABASE_URL")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), f"{env['name']} is written in the manifest"
    if overlay[0] == "aws":
        (container,) = one(docs, "Deployment", SERVICE)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e for e in container["env"]}
        for name in ("FLIGHT_DELAY_ONLINE_STORE", "FLIGHT_DELAY_DATABASE_URL"):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "flight-delay-aws", name


def test_the_autoscaler_scales_the_service_on_cpu_and_on_requests_per_second_per_pod(docs) -> None:
    hpa = one(docs, "HorizontalPodAutoscaler", SERVICE)
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    deployment = one(docs, "Deployment", target["name"])
    assert (target["kind"], target["apiVersion"]) == (deployment["kind"], deployment["apiVersion"])
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    adapter = yaml.safe_load((K8S_DIR / "prometheus-adapter" / "values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    assert metrics["Pods"]["pods"]["metric"]["name"] == rule["name"]["as"]
    assert rule["seriesQuery"].startswith("flight_delay_requests_total{")
    # The counter the rule rates is the service's request counter, the one the recording rules read.
    assert '"requests_total"' in (PROJECT_ROOT / "serving" / "telemetry.py").read_text()
    assert "rate(flight_delay_requests_total[" in (PROMETHEUS_DIR / "rules" / "recording.yml").read_text()
    budget = one(docs, "PodDisruptionBudget", SERVICE)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]


def test_traffic_is_denied_unless_a_policy_allows_it(docs) -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    deny = policies["default-deny"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    service = policies[SERVICE]
    assert [p["port"] for rule in service["ingress"] for p in rule["ports"]] == [3000, 3000]
    egress_ports = {p["port"] for rule in service["egress"] for p in rule["ports"]}
    assert egress_ports == {6379, 5432, 443}
    assert {p["port"] for p in policies["allow-dns"]["egress"][0]["ports"]} == {53}


def test_the_dashboards_configmap_holds_every_dashboard_file_unchanged(docs) -> None:
    (configmap,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    files = {path.name: path.read_text() for path in DASHBOARDS.glob("*.json")}
    assert files and configmap["data"] == files


def test_prometheus_reads_the_project_rules_unchanged_and_scrapes_the_service_job(docs) -> None:
    (configmap,) = [
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("prometheus-config")
    ]
    data = configmap["data"]
    for rules in ("recording.yml", "alerts.yml"):
        assert data[rules] == (PROMETHEUS_DIR / "rules" / rules).read_text(), rules
    config = yaml.safe_load(data["prometheus.yml"])
    local = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["global"] == local["global"], "the rules' windows assume the same intervals"
    assert config["rule_files"] == ["recording.yml", "alerts.yml"]
    (service_job,) = [job for job in config["scrape_configs"] if job["job_name"] == SERVICE_JOB]
    relabelled = {r.get("target_label") for r in service_job["relabel_configs"]}
    assert {"namespace", "pod"} <= relabelled, "prometheus-adapter maps these labels to the HPA's pods"
    volumes = one(docs, "Deployment", "prometheus")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "config", "configMap": {"name": configmap["metadata"]["name"]}} in volumes


def test_each_overlay_runs_its_own_images_and_state(overlay, docs) -> None:
    name = overlay[0]
    (container,) = one(docs, "Deployment", SERVICE)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    if name == "dev":
        assert container["image"] == "flight-delay-service:dev"
        assert one(docs, "Service", "redis")
        assert env["FLIGHT_DELAY_ONLINE_STORE"]["value"] == "redis://redis:6379/0"
        assert env["AWS_ENDPOINT_URL_S3"]["value"] == "http://seaweedfs:8333"
        assert one(docs, "Service", "seaweedfs")["spec"]["ports"][0]["port"] == 8333
        assert "Deployment/seaweedfs" in dict(pod_specs(docs))
    else:
        assert container["image"].split("/")[0].endswith(".amazonaws.com")
        assert "Deployment/redis" not in dict(pod_specs(docs)), "aws uses ElastiCache"
        account = one(docs, "ServiceAccount", SERVICE)
        assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
        (source,) = container["envFrom"]
        profile = one(docs, "ConfigMap", source["configMapRef"]["name"])["data"]
        assert profile["FLIGHT_DELAY_PROFILE"] == "aws" and profile["FLIGHT_DELAY_S3_BUCKET"]


def test_every_object_lands_in_the_flight_delay_namespace(docs) -> None:
    outside = [
        f"{d['kind']}/{d['metadata']['name']}"
        for d in docs
        if d["kind"] != "Namespace" and d["metadata"].get("namespace") != "flight-delay"
    ]
    assert not outside, f"no namespace set (an overlay without `namespace:`): {outside}"


def test_the_service_has_every_variable_its_profile_requires(overlay, docs) -> None:
    # The service runs the aws profile in both (S3 and PostgreSQL, no steps to launch): bucket,
    # online store and database URL present, S3 keys by Secret in dev, none on EKS (IRSA).
    name = overlay[0]
    (container,) = one(docs, "Deployment", SERVICE)["spec"]["template"]["spec"]["containers"]
    env = container_env(container, docs)
    assert not profile_env_problems(SERVICE, env, {"aws"}, s3_compatible=name == "dev")
    assert env["FLIGHT_DELAY_PROFILE"]["value"] == "aws"
    if name == "aws":
        assert one(docs, "ServiceAccount", SERVICE)["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]


@pytest.mark.parametrize("dropped", ["FLIGHT_DELAY_DATABASE_URL", "FLIGHT_DELAY_S3_BUCKET", "AWS_SECRET_ACCESS_KEY"])
def test_a_deployment_missing_a_required_variable_is_caught(dropped: str) -> None:
    env = {
        "FLIGHT_DELAY_PROFILE": {"value": "aws"},
        "FLIGHT_DELAY_S3_BUCKET": {"value": "b"},
        "FLIGHT_DELAY_ONLINE_STORE": {"value": "redis://redis:6379/0"},
        "FLIGHT_DELAY_DATABASE_URL": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "database-url"}}},
        "AWS_ENDPOINT_URL_S3": {"value": "http://seaweedfs:8333"},
        "AWS_ACCESS_KEY_ID": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "id"}}},
        "AWS_SECRET_ACCESS_KEY": {"valueFrom": {"secretKeyRef": {"name": "s", "key": "secret"}}},
    }
    assert not profile_env_problems("pod", env, {"aws"}, s3_compatible=True)
    del env[dropped]
    assert profile_env_problems("pod", env, {"aws"}, s3_compatible=True)


def test_seaweedfs_is_reached_only_by_the_service_and_dagster_on_its_s3_port(overlay, docs) -> None:
    if overlay[0] != "dev":
        pytest.skip("SeaweedFS runs in the dev overlay only")
    policies = {d["metadata"]["name"]: d["spec"] for d in docs if d["kind"] == "NetworkPolicy"}
    (rule,) = policies["seaweedfs"]["ingress"]
    sources = [peer["podSelector"]["matchLabels"] for peer in rule["from"]]
    assert sources == [{"app.kubernetes.io/name": SERVICE}, {"app.kubernetes.io/instance": "dagster"}]
    assert [p["port"] for p in rule["ports"]] == [8333]
    assert "egress" not in policies["seaweedfs"] and "Egress" in policies["seaweedfs"]["policyTypes"]
    for client, selector in (
        ("service", {"app.kubernetes.io/name": SERVICE}),
        ("dagster", {"app.kubernetes.io/instance": "dagster"}),
    ):
        policy = policies[f"seaweedfs-from-{client}"]
        assert policy["podSelector"]["matchLabels"] == selector
        (egress,) = policy["egress"]
        assert egress["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "seaweedfs"}}}]
        assert [p["port"] for p in egress["ports"]] == [8333]
