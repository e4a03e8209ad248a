"""The deployable prediction service: a Bento with the code, pinned dependencies and models."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import yaml

from flight_delay.model import MODEL_NAME
from flight_delay.paths import PROJECT_ROOT
from pipeline.resources import ModelRegistryResource
from pipeline.step_resources import step_op_tags

GROUP = "packaging"


@dg.asset(group_name=GROUP, op_tags=step_op_tags(GROUP), deps=["model_promotion"], kinds={"bentoml"})
def prediction_bento(context: dg.AssetExecutionContext, model_registry: ModelRegistryResource) -> dg.MaterializeResult:
    """Bento of the prediction service: code, dependencies pinned from uv.lock, champion and challenger models."""
    registry = model_registry.registry()
    state = registry.state(MODEL_NAME)
    champion = state.champion
    if champion is None:
        raise dg.Failure("no champion is promoted yet: materialize model_promotion first")
    models = list(state.serving)  # what the registry says takes traffic: never a model it did not choose
    uv = shutil.which("uv")
    if uv is None:
        raise dg.Failure("uv is needed to export the pinned requirements from uv.lock; install it (pip install uv)")
    exported = subprocess.run(
        [uv, "export", "--frozen", "--no-dev", "--no-hashes", "--no-emit-project", "--no-header", "--no-annotate"],
        cwd=PROJECT_ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    # The pinned requirements go into the bentofile itself, and the bentofile into a temporary
    # folder: nothing is written under the project, whose folder is read-only in the images.
    requirements = [line.strip() for line in exported.stdout.splitlines() if line.strip() and not line.startswith("#")]
    spec = yaml.safe_load((PROJECT_ROOT / "serving" / "bentofile.yaml").read_text())
    spec["python"] = {**spec.get("python", {}), "packages": requirements}
    spec["models"] = models
    with tempfile.TemporaryDirectory() as tmp:
        bentofile = Path(tmp) / "bentofile.yaml"
        bentofile.write_text(yaml.safe_dump(spec))
        env = dict(os.environ, BENTOML_HOME=str(registry.home), BENTOML_DO_NOT_TRACK="true")
        proc = subprocess.run(
            [sys.executable, "-m", "bentoml", "build", "-f", str(bentofile), "--output", "tag", str(PROJECT_ROOT)],
            cwd=PROJECT_ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
    if proc.returncode != 0:
        raise dg.Failure(f"bentoml build failed: {proc.stderr[-2000:] or proc.stdout[-2000:]}")
    tag = proc.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    bento_dir = registry.home / "bentos" / tag.replace(":", "/")
    size = sum(p.stat().st_size for p in bento_dir.rglob("*") if p.is_file()) if bento_dir.exists() else 0
    context.log.info(f"built {tag} with models {models}")
    return dg.MaterializeResult(
        metadata={
            "bento_tag": tag,
            "models": dg.MetadataValue.json(models),
            "champion": champion,
            "challenger": state.challenger.tag if state.challenger else "none",
            "path": str(bento_dir),
            "size_mb": dg.MetadataValue.float(round(size / 1e6, 2)),
            "serve": f"BENTOML_HOME={registry.home} bentoml serve {tag}",
        }
    )
