"""Which locked packages an image may leave out: those that only some of its dependencies bring in.

``uv sync --no-install-package X`` skips X alone, never what X depends on, so an image that drops
TensorFlow has to name every package that nothing but TensorFlow needs. This reads them off
``uv.lock``: the packages ``uv sync --frozen --no-dev`` installs on Linux, minus those it would
still install with the given packages gone from the graph.

``python -m deploy.docker.lock_closure tensorflow-cpu`` prints the flags for the service image.
"""

from __future__ import annotations

import argparse
import itertools
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from packaging.markers import Marker

LOCK = Path(__file__).resolve().parents[2] / "uv.lock"

# The images run CPython 3.11 on Linux, on either architecture and at any patch release; an edge
# of the graph counts when its marker holds on one of them (so a package is never left out on
# the strength of a marker that is false only on some of them).
TARGETS: list[dict[str, str]] = [
    {
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.11",
        "python_full_version": full_version,
        "implementation_version": full_version,
    }
    for machine, full_version in itertools.product(("x86_64", "aarch64"), ("3.11.0", "3.11.99"))
]


def load(path: Path = LOCK) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _applies(dependency: Mapping[str, Any]) -> bool:
    marker = dependency.get("marker")
    return marker is None or any(Marker(marker).evaluate(env) for env in TARGETS)


def installed(lock: Mapping[str, Any], without: Iterable[str] = ()) -> set[str]:
    """Names of the packages ``uv sync --frozen --no-dev`` installs from ``lock`` on the targets,
    as if the packages in ``without`` (and so every edge into them) were not in the lock."""
    packages = {p["name"]: p for p in lock["package"]}
    roots = [p for p in lock["package"] if "virtual" in p["source"] or "editable" in p["source"]]
    if len(roots) != 1:
        raise ValueError(f"expected one project (virtual or editable source) in the lock, found {len(roots)}")
    skipped = set(without)
    unknown = skipped - packages.keys()
    if unknown:
        raise ValueError(f"not in the lock: {sorted(unknown)}")
    seen: set[tuple[str, tuple[str, ...]]] = set()
    reached: set[str] = set()
    # (package, extras asked of it): an extra pulls in that package's optional dependencies.
    stack = [(roots[0]["name"], ())]
    while stack:
        name, extras = stack.pop()
        if name in skipped or (name, extras) in seen:
            continue
        seen.add((name, extras))
        package = packages[name]
        if package is not roots[0]:
            reached.add(name)
        edges = list(package.get("dependencies", []))
        for extra in extras:
            edges += package.get("optional-dependencies", {}).get(extra, [])
        stack.extend((d["name"], tuple(sorted(d.get("extra", ())))) for d in edges if _applies(d))
    return reached


def only_through(lock: Mapping[str, Any], packages: Iterable[str]) -> set[str]:
    """The installed packages that no path from the project reaches without passing ``packages``
    (``packages`` themselves included)."""
    packages = set(packages)
    return installed(lock) - installed(lock, without=packages)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("packages", nargs="+", help="the packages to leave out, as named in uv.lock")
    parser.add_argument("--lock", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    for name in sorted(only_through(load(args.lock), args.packages)):
        print(f"--no-install-package {name}")


if __name__ == "__main__":
    main()
