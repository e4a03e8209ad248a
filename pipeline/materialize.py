"""The asset graph from the command line, in the three steps the CLI needs, with a line of
progress per step: ``python -m pipeline.materialize --range 2013-01-01...2013-03-31 -c CONFIG``.

``dagster asset materialize`` runs a partition range in a single run only when every selected asset
is partitioned, so the graph goes in three runs: the reference tables and the Feast registry, the
daily assets over the range, then training, promotion and the Bento. Each run's Dagster event log
goes to a file (and to the Dagster UI, which reads the same ``DAGSTER_HOME``); ``--verbose`` prints
it as it comes. A failing step prints the end of its log and stops.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dagster import AssetKey, DagsterInstance

from pipeline.definitions import defs
from pipeline.partitions import days_between

# The CLI's own notice that `dg launch` supersedes `dagster asset materialize`: the project's
# code location does not use the `dg` project layout that command needs.
QUIET_WARNINGS = "ignore:Function `asset_materialize_command` is superseded"
QUIET_LOGS = Path(__file__).with_name("run_config") / "quiet.yaml"


@dataclass(frozen=True)
class Step:
    title: str
    assets: tuple[str, ...]
    partitioned: bool = False


def graph_steps() -> list[Step]:
    """The three runs, from the definitions: unpartitioned assets upstream of the daily ones, the
    daily (partitioned) assets, then the training and packaging groups."""
    graph = defs.resolve_asset_graph()
    later = {"training", "packaging"}
    nodes = [graph.get(k) for k in graph.toposorted_asset_keys]
    # The monitoring is read on demand and the model's lifecycle decided by sensors: in no step.
    selectable = [n for n in nodes if n.group_name not in ("monitoring", "model_lifecycle")]
    return [
        Step(
            "reference tables and the Feast registry",
            tuple(n.key.to_user_string() for n in selectable if not n.is_partitioned and n.group_name not in later),
        ),
        Step("daily partitions", tuple(n.key.to_user_string() for n in selectable if n.is_partitioned), True),
        Step(
            "training set, model, promotion and Bento",
            tuple(n.key.to_user_string() for n in selectable if n.group_name in later),
        ),
    ]


def _command(step: Step, partition_range: str, configs: Sequence[str], verbose: bool) -> list[str]:
    dagster = Path(sys.executable).with_name("dagster")
    command = [str(dagster), "asset", "materialize", "-m", "pipeline.definitions", "--select", ",".join(step.assets)]
    if step.partitioned:
        command += ["--partition-range", partition_range]
    if not verbose:
        command += ["-c", str(QUIET_LOGS)]
    for config in configs if not step.partitioned else ():
        command += ["-c", config]
    return command


def materialize(partition_range: str, configs: Sequence[str], log_path: Path, verbose: bool = False) -> int:
    first, _, last = partition_range.partition("...")
    days = days_between(first, last)
    steps = graph_steps()
    env = {**os.environ, "PYTHONWARNINGS": QUIET_WARNINGS}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        for i, step in enumerate(steps, start=1):
            what = (
                f"{len(days)} {step.title} ({first} to {last}), {len(step.assets)} assets"
                if step.partitioned
                else f"{step.title}"
            )
            print(f"[{i}/{len(steps)}] {what} ...", flush=True)
            started = time.monotonic()
            out = None if verbose else log
            proc = subprocess.run(
                _command(step, partition_range, configs, verbose),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
            )
            if proc.returncode != 0:
                print(f"      failed after {time.monotonic() - started:.0f} s; the end of {log_path}:", flush=True)
                if not verbose:
                    log.flush()
                    print(log_path.read_text(errors="replace")[-4000:], file=sys.stderr)
                print("      every event of the run is in the Dagster UI (make ui)", flush=True)
                return proc.returncode
            done = ""
            if step.partitioned:
                instance = DagsterInstance.get()
                complete = min(len(instance.get_materialized_partitions(AssetKey(a)) & set(days)) for a in step.assets)
                done = f"; {complete} of {len(days)} partitions materialized in every daily asset"
            print(f"      done in {time.monotonic() - started:.0f} s{done}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.materialize", description=__doc__.split("\n\n")[0])
    parser.add_argument("--range", required=True, help="days to materialize, FIRST...LAST (YYYY-MM-DD)")
    parser.add_argument("-c", "--config", action="append", default=[], help="run config file(s) of the last step")
    parser.add_argument(
        "--log", type=Path, default=None, help="where the runs' event logs go (default: $DAGSTER_HOME/materialize.log)"
    )
    parser.add_argument("--verbose", action="store_true", help="print every Dagster event as it comes")
    args = parser.parse_args(argv)
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home")
    return materialize(args.range, args.config, args.log or home / "materialize.log", args.verbose)


if __name__ == "__main__":
    sys.exit(main())
