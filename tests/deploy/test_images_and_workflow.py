"""The images in deploy/docker/ and the GitHub workflow that builds and deploys them, checked
without a Docker engine: hadolint and the workflow schema find nothing, and both agree with
uv.lock and with what the code imports."""

from __future__ import annotations

import ast
import fnmatch
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.docker import lock_closure
from flight_delay.paths import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "deploy" / "docker"
SERVICE = DOCKER_DIR / "service.Dockerfile"
USER_CODE = DOCKER_DIR / "user-code.Dockerfile"
DOCKERFILES = sorted(DOCKER_DIR.glob("*.Dockerfile"))
WORKFLOW = PROJECT_ROOT / ".github" / "workflows" / "deploy.yml"
FIRST_PARTY = {p.name for p in PROJECT_ROOT.iterdir() if (p / "__init__.py").is_file()}
# What the service image leaves out: TensorFlow and whatever only it needs (its forward pass is numpy).
SERVICE_DROPS = {"tensorflow-cpu"}
# Each image's writable folders, set in its environment (on Kubernetes, emptyDirs or volumes);
# HOME is /tmp in both, and the root filesystem may be read-only.
WRITABLE = {
    SERVICE: {"FLIGHT_DELAY_DATA_DIR", "BENTOML_HOME", "HOME"},
    USER_CODE: {"FLIGHT_DELAY_DATA_DIR", "DAGSTER_HOME", "HOME"},
}


def tool(name: str) -> str:
    """The project venv's own binary (beside the interpreter running the tests), else one on PATH."""
    exe = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if exe is None:
        pytest.fail(f"{name} is missing: it is in the dev dependency group (uv sync --frozen)")
    return exe


def instructions(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, stage by stage: (KEYWORD, arguments), continuations joined."""
    stages: list[list[tuple[str, str]]] = []
    logical = ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip()
        if logical.endswith("\\"):
            logical = logical[:-1] + " "
            continue
        if logical.strip():
            keyword, _, rest = logical.strip().partition(" ")
            if keyword.upper() == "FROM":
                stages.append([])
            stages[-1].append((keyword.upper(), rest.strip()))
        logical = ""
    return stages


def copied_sources(dockerfile: Path) -> set[str]:
    """What the COPY lines take from the build context (not from other stages), top level only."""
    sources = set()
    for stage in instructions(dockerfile):
        for keyword, rest in stage:
            words = shlex.split(rest)
            if keyword == "COPY" and not any(w.startswith("--from") for w in words):
                sources |= {w.rstrip("/").split("/")[0] for w in [w for w in words if not w.startswith("--")][:-1]}
    return sources


def module_file(module: str) -> Path | None:
    path = PROJECT_ROOT.joinpath(*module.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(tree: ast.Module, at_import_only: bool) -> set[str]:
    """Absolute module names ``tree`` imports; ``at_import_only`` leaves out function bodies and
    ``if TYPE_CHECKING:`` blocks, which run later or never."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if at_import_only and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if at_import_only and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules among them
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def import_closure(entry: str, at_import_only: bool = False) -> tuple[set[str], set[str]]:
    """(this repository's modules, other top-level modules) that importing ``entry`` reaches."""
    ours: set[str] = set()
    theirs: set[str] = set()
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in ours:
            continue
        ours.add(module)
        for name in imported_names(ast.parse(module_file(module).read_text()), at_import_only):
            top = name.split(".")[0]
            if top not in FIRST_PARTY:
                theirs.add(top)
                continue
            parts = name.split(".")
            # Importing a.b.c imports a and a.b first.
            todo += [m for m in (".".join(parts[: i + 1]) for i in range(len(parts))) if module_file(m)]
    return ours, theirs


def service_drops() -> set[str]:
    """The --no-install-package arguments of the service image's uv sync."""
    runs = [rest for stage in instructions(SERVICE) for kw, rest in stage if kw == "RUN" and "uv sync" in rest]
    assert len(runs) == 1, f"{SERVICE.name}: expected one RUN with uv sync, found {len(runs)}"
    return set(re.findall(r"--no-install-package[= ]+(\S+)", runs[0]))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path):
    done = subprocess.run(
        [tool("hadolint"), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, ""), done.stdout + done.stderr


def test_workflow_is_valid_against_the_github_workflow_schema():
    done = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_service_image_leaves_out_exactly_the_packages_only_tensorflow_brings_in():
    expected = lock_closure.only_through(lock_closure.load(), SERVICE_DROPS)
    dropped = service_drops()
    assert dropped == expected, (
        f"{SERVICE.name} leaves out {sorted(dropped - expected)} that something else needs, and installs "
        f"{sorted(expected - dropped)} that only {sorted(SERVICE_DROPS)} needs; "
        f"python -m deploy.docker.lock_closure {' '.join(sorted(SERVICE_DROPS))} prints the flags"
    )


def test_lock_closure_follows_extras_and_markers_and_keeps_what_others_share():
    def package(name, deps=(), extras=None, source=None):
        return {
            "name": name,
            "source": source or {"registry": "https://pypi.org/simple"},
            "dependencies": [d if isinstance(d, dict) else {"name": d} for d in deps],
            "optional-dependencies": extras or {},
        }

    windows = "sys_platform == 'win32'"
    lock = {
        "package": [
            package("project", [{"name": "app", "extra": ["x"]}, "tf"], source={"virtual": "."}),
            package("app", ["shared", {"name": "tf-helper", "marker": windows}], extras={"x": [{"name": "via-extra"}]}),
            package("tf", ["shared", "via-extra", "tf-only", "tf-helper", {"name": "windows-only", "marker": windows}]),
            package("tf-only", ["deep"]),
            *(package(n) for n in ("shared", "via-extra", "tf-helper", "deep", "windows-only")),
        ]
    }
    assert lock_closure.installed(lock) == {"app", "tf", "shared", "via-extra", "tf-only", "tf-helper", "deep"}
    # tf-helper's other path exists on Windows only; via-extra comes with app's extra too.
    assert lock_closure.only_through(lock, {"tf"}) == {"tf", "tf-only", "deep", "tf-helper"}


def test_service_imports_nothing_its_image_leaves_out_when_it_starts():
    """Import time only: the service may never call TensorFlow, but a module-level import would
    stop it from starting in its image while every test with the dev venv passes."""
    _, imported = import_closure("serving.service", at_import_only=True)
    dropped = {re.sub(r"[-_.]+", "-", d).lower() for d in service_drops()}
    providers = importlib.metadata.packages_distributions()
    missing = {
        top
        for top in imported
        if providers.get(top) and all(re.sub(r"[-_.]+", "-", d).lower() in dropped for d in providers[top])
    }
    assert not missing, f"the service imports {sorted(missing)} when it starts, which {SERVICE.name} leaves out"


@pytest.mark.parametrize(
    ("dockerfile", "entry", "files"),
    [
        (SERVICE, "serving.service", {"feature_store.yaml"}),  # the Feast repo config the service reads
        # The Bento's sources (serving/bentofile.yaml's include), and what uv export reads for it.
        (USER_CODE, "pipeline.definitions", {"serving", "feature_store.yaml", "pyproject.toml", "uv.lock"}),
    ],
    ids=["service", "user-code"],
)
def test_image_copies_every_source_folder_its_code_imports(dockerfile: Path, entry: str, files: set[str]):
    ours, _ = import_closure(entry)
    missing = ({m.split(".")[0] for m in ours} | files) - copied_sources(dockerfile)
    assert not missing, f"{dockerfile.name} does not copy {sorted(missing)}"


def test_bento_sources_are_in_the_user_code_image():
    include = yaml.safe_load((PROJECT_ROOT / "serving" / "bentofile.yaml").read_text())["include"]
    needed = {pattern.split("/")[0] for pattern in include}
    assert needed <= copied_sources(USER_CODE), f"prediction_bento builds from {sorted(needed)}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_stage_is_the_build_stage_python_run_by_a_numeric_user_on_a_read_only_root(dockerfile: Path):
    stages = instructions(dockerfile)
    images = [stage[0][1].split()[0] for stage in stages]
    uv_image = next(image for image in images if "astral-sh/uv" in image)
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", uv_image), uv_image
    build = next(stage for stage in stages if any(kw == "RUN" and "uv sync" in rest for kw, rest in stage))
    assert "uv sync --frozen --no-dev" in " ".join(rest for kw, rest in build if kw == "RUN")
    runtime = stages[-1]
    # The venv's interpreter is a link to the build stage's Python: the runtime must have the same one.
    assert runtime[0][1].split()[0] == build[0][1].split()[0], "the build and runtime stages' Python images differ"
    users = [rest for kw, rest in runtime if kw == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*(:[1-9]\d*)?", users[-1]), f"last USER {users[-1:]}: not numeric non-root"
    env = dict(pair.split("=", 1) for kw, rest in runtime if kw == "ENV" for pair in shlex.split(rest) if "=" in pair)
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.keys() >= WRITABLE[dockerfile] and env["HOME"] == "/tmp"
    assert not [rest for kw, rest in runtime if kw == "RUN" and re.search(r"apt-get|apk |pip install|gcc|make ", rest)]


def test_user_code_image_has_no_entrypoint_before_the_args_dagster_gives_it():
    """The Helm chart and the K8sRunLauncher set only args (dagster api grpc / execute_run)."""
    runtime = instructions(USER_CODE)[-1]
    assert not [rest for keyword, rest in runtime if keyword == "ENTRYPOINT"]
    cmd = [rest for keyword, rest in runtime if keyword == "CMD"]
    assert cmd and cmd[-1].startswith('["dagster", "api", "grpc", "-m", "pipeline.definitions"'), cmd


def dockerignored(path: str, rules: list[tuple[bool, str]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negated, pattern in rules:
        if any(fnmatch.fnmatchcase(p, pattern) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_lets_through_what_the_images_copy_and_nothing_local():
    rules = []
    for line in (PROJECT_ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            rules.append((line.startswith("!"), line.lstrip("!").rstrip("/")))
    copied = set().union(*(copied_sources(d) for d in DOCKERFILES))
    files = [
        str(f.relative_to(PROJECT_ROOT))
        for name in copied
        for f in ([PROJECT_ROOT / name] if (PROJECT_ROOT / name).is_file() else (PROJECT_ROOT / name).rglob("*.py"))
        if "__pycache__" not in f.parts
    ]
    assert files and not [f for f in files if dockerignored(f, rules)]
    local = ["data/feast/online.db", ".venv/bin/python", ".git/HEAD", "build/x", ".dagster_home/dagster.yaml"]
    local += ["tests/conftest.py", ".pytest_cache/v", "serving/__pycache__/service.cpython-311.pyc"]
    assert not [p for p in local if not dockerignored(p, rules)]


def test_workflow_builds_every_image_pins_its_actions_and_deploys_the_locked_dagster():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    built = {leg["dockerfile"] for leg in jobs["images"]["strategy"]["matrix"]["include"]}
    assert built == {str(d.relative_to(PROJECT_ROOT)) for d in DOCKERFILES}
    locked = {p["name"]: p["version"] for p in lock_closure.load()["package"]}
    assert workflow["env"]["DAGSTER_CHART_VERSION"] == locked["dagster"], "the Helm chart must run uv.lock's Dagster"
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in jobs.items():
        uses = [step["uses"] for step in job["steps"] if "uses" in step]
        assert all(re.fullmatch(r"[\w.-]+/[\w.-]+@(v\d+(\.\d+)*|[0-9a-f]{40})", u) for u in uses), uses
        oidc = any(u.startswith("aws-actions/configure-aws-credentials@") for u in uses)
        assert (job.get("permissions", {}).get("id-token") == "write") == oidc, f"{name}: id-token only for OIDC"
    for name in ("images", "deploy"):
        assert jobs[name]["if"] == "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    deploy = jobs["deploy"]
    assert deploy["environment"] == "production" and deploy["concurrency"]["cancel-in-progress"] is False
