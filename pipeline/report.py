"""Summaries of what the pipeline produced, for the Makefile targets: ``python -m pipeline.report``."""

import argparse
import json
import sys
import time

from flight_delay.model import MODEL_NAME
from flight_delay.paths import DataLayout
from flight_delay.registry import ModelRegistry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--started", type=float, help="Unix time the run started, for 'seconds'.")
    parser.add_argument("--next-steps", action="store_true", help="Also print where to look next.")
    args = parser.parse_args(argv)
    layout = DataLayout.resolve()
    registry = ModelRegistry.of(layout)
    versions = registry.list(MODEL_NAME)
    if not versions:
        print(f"no {MODEL_NAME} model in {layout.bentoml_home}; did the retraining step run?", file=sys.stderr)
        return 1
    model = registry.get(versions[-1])
    meta = model.info.metadata
    metrics, baseline = meta["metrics"], meta["baseline_metrics"]
    champion = registry.champion(MODEL_NAME)
    if args.next_steps:
        print(f"\nModel {model.tag} (champion: {champion})")
        print(
            f"  trained on {model.info.labels['train_window']}, evaluated on {model.info.labels['evaluation_window']}"
        )
        print(f"  network : AUC {metrics['auc']:.4f}  log loss {metrics['log_loss']:.4f}  Brier {metrics['brier']:.4f}")
        print(
            f"  baseline: AUC {baseline['auc']:.4f}  log loss {baseline['log_loss']:.4f}  Brier {baseline['brier']:.4f}"
        )
        print(f"  expected calibration error {meta['ece']:.4f}\n")
        print("Next: `make ui` and open http://127.0.0.1:3030 for the asset graph, checks and metadata;")
        print(f"      the model store is {layout.bentoml_home} (BENTOML_HOME), champion history in champions/.")
    summary = {
        "model": str(model.tag),
        "champion": champion,
        "auc": round(metrics["auc"], 4),
        "log_loss": round(metrics["log_loss"], 4),
        "brier": round(metrics["brier"], 4),
        "ece": round(meta["ece"], 4),
        "baseline_auc": round(baseline["auc"], 4),
        "baseline_log_loss": round(baseline["log_loss"], 4),
        "baseline_brier": round(baseline["brier"], 4),
        "evaluation_rows": metrics["rows"],
        "evaluation_window": model.info.labels["evaluation_window"],
    }
    if args.started:
        summary["seconds"] = round(time.time() - args.started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
