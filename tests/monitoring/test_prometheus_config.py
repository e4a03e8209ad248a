"""The Prometheus and Alertmanager configuration in deploy/prometheus/: generated rules as
committed, accepted by promtool and amtool, and unit-tested by promtool (every alert firing once
and staying quiet once; every recording rule against figures computed by hand)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.prometheus import rules
from flight_delay.paths import PROJECT_ROOT

PROMETHEUS_DIR = PROJECT_ROOT / "deploy" / "prometheus"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
# Intermediate series that only the rules themselves read (the AUC's per-bin counts).
INTERMEDIATE = {f"flight_delay:feedback_on_time_below:{w}" for w in rules.QUALITY_WINDOWS}


def tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        pytest.skip(f"{name} is not installed: apt-get install -y prometheus prometheus-alertmanager (make test does)")
    return exe


def run(*command: str | Path) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=300, cwd=PROJECT_ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(map(str, command))} failed:\n{output}"
    return output


def test_committed_rules_are_what_the_generator_writes():
    for path, text in rules.outputs().items():
        assert path.read_text() == text, f"{path} is stale: run uv run --frozen python -m deploy.prometheus.rules"


def test_promtool_accepts_the_prometheus_config_and_its_rules():
    output = run(tool("promtool"), "check", "config", PROMETHEUS_DIR / "prometheus.yml")
    assert "WARNING" not in output, output
    output = run(tool("promtool"), "check", "rules", rules.RECORDING_FILE, rules.ALERTS_FILE)
    assert f"SUCCESS: {len(alert_names())} rules found" in output


def test_amtool_accepts_the_alertmanager_config():
    run(tool("amtool"), "check-config", PROMETHEUS_DIR / "alertmanager.yml")


def test_promtool_unit_tests_of_the_rules_pass():
    assert RULE_TESTS, "no promtool tests in deploy/prometheus/tests/"
    output = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert output.count("SUCCESS") == len(RULE_TESTS), output


def alert_names() -> list[str]:
    return [r["alert"] for g in rules.alert_rules()["groups"] for r in g["rules"]]


def rule_tests() -> list[dict]:
    return [t for path in RULE_TESTS for t in yaml.safe_load(path.read_text())["tests"]]


def test_every_alert_has_a_case_that_fires_and_one_that_does_not():
    fires: set[str] = set()
    quiet: set[str] = set()
    for test in rule_tests():
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = set(alert_names())
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested staying quiet"
    assert (fires | quiet) - names == set(), "tests of alerts that do not exist"


def test_every_recording_rule_is_checked_by_a_promql_test():
    exprs = " ".join(case["expr"] for test in rule_tests() for case in test.get("promql_expr_test", []))
    records = {r["record"] for g in rules.recording_rules()["groups"] for r in g["rules"]}
    untested = {r for r in records - INTERMEDIATE if r not in exprs}
    assert untested == set()


def test_every_alert_says_how_long_and_how_bad_and_what_it_saw():
    for group in rules.alert_rules()["groups"]:
        for rule in group["rules"]:
            assert rule["for"], rule["alert"]
            assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    described = [
        r for g in rules.alert_rules()["groups"] for r in g["rules"] if "$value" in r["annotations"]["description"]
    ]
    assert len(described) == len(alert_names()) - 2  # NoChampion and ServiceDown have no figure but the instance


def test_the_prometheus_config_scrapes_the_job_the_alerts_read():
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert rules.SERVICE_JOB in jobs
    assert jobs[rules.SERVICE_JOB]["static_configs"][0]["targets"] == ["127.0.0.1:3000"]
    assert config["rule_files"] == ["rules/recording.yml", "rules/alerts.yml"]
    assert Path(PROMETHEUS_DIR / config["rule_files"][0]).resolve() == rules.RECORDING_FILE


def test_the_config_make_monitor_writes_passes_promtool(tmp_path: Path):
    from deploy.prometheus import monitor

    path = monitor.write_prometheus_config(tmp_path, targets=["127.0.0.1:3000", "127.0.0.1:3001"])
    output = run(tool("promtool"), "check", "config", path)
    assert f"SUCCESS: {len(rules.outputs())} rule files found" in output and "WARNING" not in output, output
    config = yaml.safe_load(path.read_text())
    service = next(c for c in config["scrape_configs"] if c["job_name"] == rules.SERVICE_JOB)
    assert service["static_configs"] == [{"targets": ["127.0.0.1:3000", "127.0.0.1:3001"]}]
    assert config["rule_files"] == [str(rules.RECORDING_FILE), str(rules.ALERTS_FILE)]
    assert monitor.ALERTMANAGER_ADDRESS in str(config["alerting"])
