"""``make monitor``: Prometheus and Alertmanager on loopback with the project's configuration,
scraping the service that ``make serve`` runs (or the replicas given), in the foreground until
Ctrl-C, which stops both.

Prometheus reads a copy of deploy/prometheus/prometheus.yml written under the data folder, with
absolute paths (rules, file_sd) and the targets asked for; its TSDB and Alertmanager's state
live there too (``make clean`` removes them).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from deploy.prometheus.rules import SERVICE_JOB
from flight_delay.paths import PROJECT_ROOT

CONFIG_DIR = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = CONFIG_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = CONFIG_DIR / "alertmanager.yml"
DATA_DIR = PROJECT_ROOT / "data" / "monitoring"
PROMETHEUS_ADDRESS = "127.0.0.1:19090"
ALERTMANAGER_ADDRESS = "127.0.0.1:19093"


def prometheus_config(targets: list[str] | None = None) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with absolute paths, and ``targets`` (host:port) as the
    service's static targets when given."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    config["rule_files"] = [str(CONFIG_DIR / f) for f in config["rule_files"]]
    for job in config["scrape_configs"]:
        for sd in job.get("file_sd_configs", []):
            sd["files"] = [str(CONFIG_DIR / f) for f in sd["files"]]
        if job["job_name"] == SERVICE_JOB and targets:
            job["static_configs"] = [{"targets": list(targets)}]
    return config


def write_prometheus_config(data_dir: Path, targets: list[str] | None = None) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "prometheus.yml"
    path.write_text(
        "# Written by `make monitor` from deploy/prometheus/prometheus.yml: edit that.\n"
        + yaml.safe_dump(prometheus_config(targets), sort_keys=False)
    )
    return path


def _binary(*names: str) -> str:
    for name in names:
        exe = shutil.which(name)
        if exe:
            return exe
    raise SystemExit(f"{names[0]} is not installed: apt-get install -y prometheus prometheus-alertmanager")


def _commands(data_dir: Path, config: Path) -> dict[str, list[str]]:
    return {
        "prometheus": [
            _binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={data_dir / 'prometheus'}",
            f"--web.listen-address={PROMETHEUS_ADDRESS}",
        ],
        "alertmanager": [
            _binary("prometheus-alertmanager", "alertmanager"),
            f"--config.file={ALERTMANAGER_CONFIG}",
            f"--storage.path={data_dir / 'alertmanager'}",
            f"--web.listen-address={ALERTMANAGER_ADDRESS}",
            "--cluster.listen-address=",  # one Alertmanager, no gossip port
        ],
    }


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Prometheus and Alertmanager for the flight delay service.")
    parser.add_argument(
        "--targets",
        help="comma-separated host:port of the service's replicas (default: prometheus.yml's, 127.0.0.1:3000)",
    )
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR, help="TSDB, Alertmanager state and logs")
    args = parser.parse_args(argv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    config = write_prometheus_config(args.data_dir, targets)
    processes: dict[str, subprocess.Popen] = {}
    # Ctrl-C, and `kill`, stop both (SIGINT set explicitly: a shell's background job ignores it).
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for name, command in _commands(args.data_dir, config).items():
            with open(args.data_dir / f"{name}.log", "ab") as log:  # the child keeps its own descriptor
                processes[name] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=args.data_dir)
        scraped = ", ".join(targets or prometheus_config()["scrape_configs"][0]["static_configs"][0]["targets"])
        print(
            f"Prometheus    http://{PROMETHEUS_ADDRESS}  (scraping {scraped}; targets: /targets)\n"
            f"Alerts        http://{PROMETHEUS_ADDRESS}/alerts\n"
            f"Alertmanager  http://{ALERTMANAGER_ADDRESS}\n"
            f"Logs and data {args.data_dir}\n"
            "Ctrl-C stops both.",
            flush=True,
        )
        while True:
            for name, process in processes.items():
                if process.poll() is not None:
                    tail = (args.data_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                    print(f"{name} exited with {process.returncode}:\n{tail}", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping Prometheus and Alertmanager", flush=True)
        return 0
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.terminate()
        for process in processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


if __name__ == "__main__":
    sys.exit(main())
