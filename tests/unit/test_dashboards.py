"""The committed Grafana dashboards: what the generator writes, loadable by the SDK's own model
without losing a key, and wired to the provisioned datasource."""

from __future__ import annotations

import json

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus
from grafana_foundation_sdk.models.dashboard import Dashboard as DashboardModel
from grafana_foundation_sdk.models.dashboard import RowPanel

from deploy.grafana import dashboards
from deploy.grafana.dashboards import DASHBOARD_DIR, DASHBOARDS, DATASOURCE_UID

PROVISIONING = DASHBOARD_DIR.parent / "provisioning"


def lost_keys(original: object, decoded: object, path: str) -> list[str]:
    """Where ``decoded`` lacks or changes something of ``original`` (the model may add defaults,
    such as an empty ``custom`` field config, but a key it does not know is dropped)."""
    if isinstance(original, dict) and isinstance(decoded, dict):
        return [
            lost
            for key, value in original.items()
            for lost in ([f"{path}/{key}"] if key not in decoded else lost_keys(value, decoded[key], f"{path}/{key}"))
        ]
    if isinstance(original, list) and isinstance(decoded, list) and len(original) == len(decoded):
        return [lost for i, (a, b) in enumerate(zip(original, decoded)) for lost in lost_keys(a, b, f"{path}[{i}]")]
    return [] if original == decoded else [f"{path}: {original!r} became {decoded!r}"]


@pytest.fixture(scope="module", params=sorted(DASHBOARDS))
def committed(request: pytest.FixtureRequest) -> tuple[str, dict]:
    path = DASHBOARD_DIR / f"{request.param}.json"
    assert path.exists(), f"{path} is missing: run python -m deploy.grafana.dashboards"
    return request.param, json.loads(path.read_text())


def test_the_committed_json_is_what_the_generator_writes():
    for name in DASHBOARDS:
        text = (DASHBOARD_DIR / f"{name}.json").read_text()
        assert text == dashboards.render(name), f"{name}.json is stale: run python -m deploy.grafana.dashboards"
    assert dashboards.main(["--check"]) == 0


def test_each_dashboard_loads_into_the_sdk_model_without_losing_a_key(committed):
    name, data = committed
    register_default_plugins()  # so that panels and queries decode into their typed models
    loaded = DashboardModel.from_json(data)
    again = json.loads(JSONEncoder(sort_keys=True).encode(loaded))
    lost = lost_keys(data, again, name)
    assert not lost, f"keys or values the Grafana 11.6 dashboard model does not know: {lost[:10]}"
    panels = [p for p in loaded.panels or [] if not isinstance(p, RowPanel)]
    assert panels and all(p.targets for p in panels)
    for p in panels:
        for target in p.targets or []:
            assert isinstance(target, prometheus.Dataquery), f"{name}: {p.title!r} has a non-Prometheus query"
            assert target.expr, f"{name}: {p.title!r} has an empty query"


def test_panels_are_numbered_and_read_the_datasource_variable(committed):
    name, data = committed
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), f"{name}: panel ids repeat"
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["current"]["value"] == DATASOURCE_UID
    for p in data["panels"]:
        if p["type"] == "row":
            continue
        refs = [p["datasource"], *(t["datasource"] for t in p["targets"])]
        assert all(r == {"type": "prometheus", "uid": "${datasource}"} for r in refs), (name, p["title"])


def test_provisioning_names_the_datasource_the_dashboards_default_to():
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    (source,) = datasources
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    assert source["url"] == "http://127.0.0.1:19090"  # where `make monitor` runs Prometheus
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "flight_delay.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
