"""Every query of the Grafana dashboards, run against a real Prometheus scraping the real service.

The service serves a champion and a challenger (a split) over a copy of the tiny deployment; a
Prometheus scrapes it every second and evaluates the recording rules; the traffic has predictions
(single and batched), feedback, an unknown entity, a client error, a write error of the prediction
log, and a promotion of the challenger at the end. Then each panel target and annotation of each
committed dashboard, with its variables set to the values their own queries find and Grafana's
built-in intervals set to a minute, must return data.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy.grafana.dashboards import DASHBOARD_DIR, DASHBOARDS
from flight_delay.model import MODEL_NAME
from tests.support.deployments import Deployment, FlightRequest, clone_deployment, train_candidate
from tests.support.prometheus import RULES_DIR, Prometheus
from tests.support.servers import ServiceProcess

# Grafana's built-in intervals, as a one-minute range: the traffic fills the last minute.
BUILT_INS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1m"}
LOG_BUSY_SECONDS = 7.0  # over the log writer's busy timeout (5 s): a write fails with SQLITE_BUSY
LABEL_VALUES = re.compile(r"^label_values\((?P<metric>[^,]+),\s*(?P<label>\w+)\)$")


def rule_files() -> list[Path]:
    """The project's rules (deploy/prometheus/rules/), which the dashboards' drift and quality panels read."""
    files = sorted(RULES_DIR.glob("*.yml"))
    assert files, f"{RULES_DIR} has no rules"
    return files


def api(prometheus: Prometheus, path: str, **params: Any) -> Any:
    url = f"{prometheus.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.loads(response.read())
    assert body.get("status") == "success", body
    return body["data"]


def regex_value(values: list[str]) -> str:
    """A multi-value variable as Grafana's Prometheus datasource writes it into a query: each value
    regex-escaped for a PromQL string, several joined as ``(a|b)``."""
    escaped = [
        re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\")) for v in values
    ]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, variables: dict[str, list[str]]) -> str:
    for name, value in BUILT_INS.items():
        expr = expr.replace(name, value)
    for name in sorted(variables, key=len, reverse=True):
        expr = expr.replace(f"${{{name}}}", regex_value(variables[name])).replace(
            f"${name}", regex_value(variables[name])
        )
    assert "$" not in expr, f"a variable was left in {expr!r}"
    return expr


@dataclass
class Monitored:
    prometheus: Prometheus
    server: ServiceProcess
    champion: str
    candidate: str
    started: float  # unix time of the first request
    ended: float  # unix time the checks evaluate at: the traffic fills the minute before
    statuses: dict[str, int]


def drive(server: ServiceProcess, deployment: Deployment, requests: list[FlightRequest], candidate: str) -> dict:
    """The traffic every panel needs; returns the status of each special request."""
    statuses: dict[str, int] = {}
    batch = 20
    with server.client() as client:

        def predict_with_feedback(rounds: int, offset: int) -> None:
            for r in range(rounds):
                chunk = [requests[(offset + r * batch + i) % len(requests)].body for i in range(batch)]
                made = client.post("/predict_batch", json={"flights": chunk})
                assert made.status_code == 200, made.text
                single = client.post("/predict", json={"flight": chunk[0]})
                assert single.status_code == 200, single.text
                for i, p in enumerate(made.json()["predictions"]):
                    delay = 45 if (r + i) % 3 == 0 else 0
                    body = {"feedback": {"request_id": p["request_id"], "departure_delay_minutes": delay}}
                    assert client.post("/feedback", json=body).status_code == 200
                time.sleep(0.5)

        predict_with_feedback(12, 0)
        unknown = {**requests[0].body, "tailnum": "N0TREAL"}
        statuses["unknown entity"] = client.post("/predict", json={"flight": unknown}).status_code
        missing = {"feedback": {"request_id": str(uuid.uuid4()), "departure_delay_minutes": 0}}
        statuses["feedback for no prediction"] = client.post("/feedback", json=missing).status_code

        holder = sqlite3.connect(deployment.prediction_log, timeout=5)
        holder.execute("BEGIN EXCLUSIVE")  # the log writer's next commit waits, then fails SQLITE_BUSY
        try:
            statuses["predict while the log is locked"] = client.post(
                "/predict", json={"flight": requests[1].body}
            ).status_code
            time.sleep(LOG_BUSY_SECONDS)
        finally:
            holder.rollback()
            holder.close()

        predict_with_feedback(6, 400)
        deployment.registry().promote(MODEL_NAME, candidate, "test: dashboards", expected_champion=deployment.champion)
        deadline = time.monotonic() + 30
        while client.post("/predict", json={"flight": requests[2].body}).json()["model_version"] != candidate:
            assert time.monotonic() < deadline, "the promoted challenger was not served within 30 s"
            time.sleep(0.2)
        predict_with_feedback(8, 800)
    return statuses


@pytest.fixture(scope="module")
def monitored(
    serve: Any,
    serving_deployment: Deployment,
    source_dir: Path,
    real_requests: list[FlightRequest],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Monitored]:
    root = tmp_path_factory.mktemp("dashboards")
    deployment = clone_deployment(serving_deployment, root / "data")
    candidate = train_candidate(deployment, source_dir)
    deployment.registry().challenge(
        MODEL_NAME, candidate, "split", 0.5, "test: dashboards", expected_champion=deployment.champion
    )
    (server,) = serve(("dashboards", deployment, {}))
    workdir = root / "prometheus"
    workdir.mkdir()
    target = server.url.removeprefix("http://")
    prometheus = Prometheus(workdir, [target], rule_files=rule_files()).start()
    try:
        prometheus.wait_for('flight_delay_model_serving{variant="challenger"} == 1')
        started = time.time()
        statuses = drive(server, deployment, real_requests, candidate)
        time.sleep(3)  # the last counts reach /metrics (1 s tally), a scrape and a rule evaluation
        yield Monitored(prometheus, server, deployment.champion, candidate, started, time.time(), statuses)
    finally:
        prometheus.stop()


def dashboard(name: str) -> dict:
    return json.loads((DASHBOARD_DIR / f"{name}.json").read_text())


def variable_values(monitored: Monitored, board: dict) -> dict[str, list[str]]:
    """Each query variable set to every value its own query finds (as "select all" of a multi-value
    variable writes them, not the catch-all ``.*``)."""
    chosen = {}
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = LABEL_VALUES.match(variable["query"])
        assert match, f"{board['title']}: variable {variable['name']} is not a label_values query"
        values = api(
            monitored.prometheus,
            f"label/{match['label']}/values",
            **{"match[]": match["metric"], "start": monitored.started, "end": monitored.ended},
        )
        assert values, f"{board['title']}: variable {variable['name']} ({variable['query']}) finds no value"
        chosen[variable["name"]] = sorted(values)
    return chosen


def panel_failures(monitored: Monitored, board: dict) -> tuple[int, list[str]]:
    """How many panel targets ``board`` has, and each that returns no finite value at the end of the
    traffic, named by panel."""
    variables = variable_values(monitored, board)
    failures, count = [], 0
    for p in board["panels"]:
        for target in p.get("targets", []):
            count += 1
            expr = substitute(target["expr"], variables)
            result = api(monitored.prometheus, "query", query=expr, time=monitored.ended)["result"]
            values = [float(s["value"][1]) for s in result]
            if not any(math.isfinite(v) for v in values):
                what = "no series" if not values else f"only {values[:3]}"
                failures.append(f"{board['title']} / {p['title']!r} / {target['refId']}: {what} for {expr}")
    return count, failures


def test_the_traffic_had_its_special_requests(monitored: Monitored):
    assert monitored.statuses["unknown entity"] == 200
    assert monitored.statuses["feedback for no prediction"] == 404
    assert monitored.statuses["predict while the log is locked"] == 200  # acknowledged, in the backlog


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_every_panel_query_returns_data(monitored: Monitored, name: str):
    count, failures = panel_failures(monitored, dashboard(name))
    assert count >= 10
    assert not failures, "\n".join(failures)


def test_the_check_names_a_panel_whose_metric_does_not_exist(monitored: Monitored):
    board = dashboard("service")
    broken = next(p for p in board["panels"] if p["title"] == "Online cache hit rate by view")
    broken["targets"][0]["expr"] = broken["targets"][0]["expr"].replace("online_rows_total", "online_row_total")
    _, failures = panel_failures(monitored, board)
    assert len(failures) == 1 and "'Online cache hit rate by view' / A: no series" in failures[0], failures


def test_variables_offer_both_models_and_both_variants(monitored: Monitored):
    chosen = variable_values(monitored, dashboard("model"))
    assert {monitored.champion, monitored.candidate} <= set(chosen["model_version"])
    assert {"champion", "challenger"} <= set(chosen["variant"])
    assert {"prediction_score", "carrier"} <= set(chosen["feature"])


def test_the_annotation_marks_the_first_champion_and_the_promotion(monitored: Monitored):
    board = dashboard("model")
    (annotation,) = board["annotations"]["list"]
    expr = substitute(annotation["expr"], variable_values(monitored, board))
    result = api(
        monitored.prometheus,
        "query_range",
        query=expr,
        start=monitored.started - 30,
        end=monitored.ended,
        step="1s",
    )["result"]
    marked = {s["metric"]["model_version"] for s in result}
    assert marked == {monitored.champion, monitored.candidate}, (annotation["name"], expr, result)
    promoted = next(s for s in result if s["metric"]["model_version"] == monitored.candidate)
    first_mark = float(promoted["values"][0][0])
    assert monitored.started < first_mark <= monitored.ended
