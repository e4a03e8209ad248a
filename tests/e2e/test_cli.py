"""The README flow on a slice of the year: `dagster asset materialize` from the CLI, three steps
(reference tables and registry, a partition range, training), then the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_cli_materializes_a_partition_range_and_the_unpartitioned_assets(source_dir, tmp_path):
    env = dict(os.environ, FLIGHT_DELAY_SOURCE_DIR=str(source_dir), FLIGHT_DELAY_DATA_DIR=str(tmp_path / "data"))
    config = tmp_path / "run.yaml"
    config.write_text(
        "ops:\n  training_set:\n    config:\n      train_end: '2013-01-04'\n"
        "      evaluation_start: '2013-01-05'\n      evaluation_end: '2013-01-06'\n"
        "  delay_model:\n    config:\n      max_epochs: 3\n"
    )
    make = ["make", "--no-print-directory", "materialize", "RANGE=2013-01-01...2013-01-06", f"CONFIG={config}"]
    _run(make, env)
    for table in ("origin_1h_departures", "route_28d_delays", "aircraft_last_departure"):
        days = sorted(p.stem for p in (tmp_path / "data" / "offline" / table).glob("*.parquet"))
        assert days == [f"2013-01-0{i}" for i in range(1, 7)], table
    assert (tmp_path / "data" / "offline" / "aircraft_profile" / "aircraft_profile.parquet").exists()
    assert (tmp_path / "data" / "feast" / "online.db").exists()
    report = _run([sys.executable, "-m", "pipeline.report"], env).stdout.strip().splitlines()[-1]
    summary = json.loads(report)
    assert summary["champion"] == summary["model"]
    assert 0.5 < summary["auc"] <= 1  # six days teach the network something; the baseline may not
    assert 0 <= summary["baseline_auc"] <= 1
    assert summary["evaluation_window"] == "2013-01-05/2013-01-06"
