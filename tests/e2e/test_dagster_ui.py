"""The Dagster UI, served for real and driven by headless Chromium, shows the project's assets.

One ``dagster-webserver`` (no daemon) serves ``workspace.yaml`` on a free loopback port, with its
own DAGSTER_HOME and data folder. One headless Chromium is driven over the DevTools protocol
(``websockets``' sync client, already in the venv through uvicorn[standard]): each check navigates,
then polls ``document.body.innerText`` (rendered text only, not markup) until the expected lines
appear, within a bounded time. A second, one-shot Chromium run takes the graph screenshot with
``--screenshot``. Chromium reaches nothing but loopback: every other host resolves to nothing and
every non-loopback request goes to a dead proxy.

Needs Debian's ``chromium`` package (``apt-get install -y chromium``); the test fails without it.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from bench.harness import ProcessGroup, free_port
from flight_delay.paths import PROJECT_ROOT

pytestmark = [pytest.mark.browser, pytest.mark.timeout(240)]

CHROMIUM = Path("/usr/bin/chromium")
LOCATION = "pipeline.definitions:defs"

GROUPS = {
    "ingestion",
    "validated",
    "feature_tables",
    "feature_store",
    "training",
    "packaging",
    "monitoring",
    "model_lifecycle",
}
# A sample of every group; the GraphQL test checks the full list against these.
EXPECTED_ASSETS = {
    "raw_flights": "ingestion",
    "departures": "validated",
    "origin_1h_departures": "feature_tables",
    "training_set": "training",
    "delay_model": "training",
    "model_promotion": "training",
    "feature_registry": "feature_store",
    "online_features": "feature_store",
    "model_monitoring": "monitoring",
    "model_decisions": "model_lifecycle",
}
RAW_FLIGHTS_DESCRIPTION = "Scheduled departures from EWR, JFK and LGA"

SERVER_START_TIMEOUT = 90.0
PAGE_TIMEOUT = 90.0
SCREENSHOT_TIMEOUT = 90.0

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Loopback only: no name resolves, and any non-loopback request goes to a closed port.
    # (Chromium bypasses the proxy for localhost/127.0.0.1 by default.)
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--proxy-server=http://127.0.0.1:9",
]


# ---------------------------------------------------------------------------------------------
# helpers


def _tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "<no log>"


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get update && apt-get install -y chromium) to run the browser tests.",
            pytrace=False,
        )


def _graphql(base_url: str, query: str) -> dict:
    response = httpx.post(f"{base_url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert not body.get("errors"), body["errors"]
    return body["data"]


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


class DevToolsPage:
    """The smallest DevTools-protocol client: one page target, request/response by id."""

    def __init__(self, ws_url: str) -> None:
        from websockets.sync.client import connect  # via uvicorn[standard] (dagster-webserver)

        self._ws = connect(ws_url, max_size=None, open_timeout=15)
        self._next_id = 0

    def close(self) -> None:
        self._ws.close()

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._next_id += 1
        msg_id = self._next_id
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no DevTools reply to {method} within {timeout}s")
            message = json.loads(self._ws.recv(timeout=remaining))
            if message.get("id") != msg_id:
                continue  # an event: no domain is enabled, but ignore any that come
            if "error" in message:
                raise RuntimeError(f"{method}: {message['error']}")
            return message.get("result", {})

    def goto(self, url: str) -> None:
        result = self.call("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigation to {url} failed: {result['errorText']}")

    def inner_text(self) -> str:
        result = self.call(
            "Runtime.evaluate",
            expression="document.body ? document.body.innerText : ''",
            returnByValue=True,
        )
        return result.get("result", {}).get("value") or ""

    def wait_for(
        self, url: str, lines: set[str] = frozenset(), substrings: set[str] = frozenset(), timeout: float = PAGE_TIMEOUT
    ) -> list[str]:
        """Open ``url`` and poll the rendered text until every ``lines`` entry is a whole line
        and every ``substrings`` entry occurs; fail (with what is missing) after ``timeout``."""
        self.goto(url)
        deadline = time.monotonic() + timeout
        text = ""
        while True:
            try:
                text = self.inner_text()
            except RuntimeError:  # e.g. the context is being replaced during navigation
                text = ""
            found = set(_lines(text))
            missing = sorted(lines - found) + sorted(s for s in substrings if s not in text)
            if not missing:
                return _lines(text)
            if time.monotonic() > deadline:
                pytest.fail(
                    f"{url}: after {timeout:.0f}s the rendered page still lacks {missing}.\n"
                    f"Rendered text (first 3000 chars):\n{text[:3000]}",
                    pytrace=False,
                )
            time.sleep(0.5)


# ---------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def ui_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real dagster-webserver on a free loopback port; its base URL once the location loaded."""
    _require_chromium()  # fail before spending time on the server
    root = tmp_path_factory.mktemp("dagster_ui")
    home, data_dir = root / "dagster_home", root / "data"
    home.mkdir()
    data_dir.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "FLIGHT_DELAY_DATA_DIR": str(data_dir),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FLIGHT_DELAY_SOURCE_DIR", None)

    webserver = Path(sys.executable).with_name("dagster-webserver")
    assert webserver.exists(), f"{webserver} missing: run `uv sync --frozen`"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    log_path = root / "webserver.log"
    group = ProcessGroup.start(
        [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        log_path,
        cwd=PROJECT_ROOT,
        env=env,
    )
    proc = group.proc
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dagster-webserver exited with {proc.returncode}:\n{_tail(log_path)}", pytrace=False)
            try:
                if httpx.get(f"{base_url}/server_info", timeout=2).status_code == 200:
                    statuses = [
                        entry["loadStatus"]
                        for entry in _graphql(
                            base_url, "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"
                        )["workspaceOrError"].get("locationEntries", [])
                    ]
                    if statuses and "LOADING" not in statuses:
                        break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"dagster-webserver did not serve {base_url} with a loaded code location "
                    f"within {SERVER_START_TIMEOUT:.0f}s:\n{_tail(log_path)}",
                    pytrace=False,
                )
            time.sleep(0.5)
        # The UI's "Join the Dagster community" dialog would cover the page on a fresh instance.
        assert _graphql(base_url, "mutation { setNuxSeen }")["setNuxSeen"] is True
        yield base_url
    finally:
        group.stop(timeout=15)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, ui_url: str) -> Iterator[DevToolsPage]:
    """One headless Chromium with a tall window (so virtualised lists and the graph render every
    row), driven over the DevTools protocol."""
    _require_chromium()
    root = tmp_path_factory.mktemp("chromium")
    profile = root / "profile"
    log_path = root / "chromium.log"
    group = ProcessGroup.start(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1600,4000",
            "about:blank",
        ],
        log_path,
    )
    proc = group.proc
    client = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Chromium did not open its DevTools port:\n{_tail(log_path)}", pytrace=False)
            time.sleep(0.2)
        devtools_port = int(port_file.read_text().split()[0])
        targets = httpx.get(f"http://127.0.0.1:{devtools_port}/json/list", timeout=10).json()
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        client = DevToolsPage(ws_url)
        yield client
    finally:
        if client is not None:
            client.close()
        group.stop(timeout=15)


# ---------------------------------------------------------------------------------------------
# tests


def test_code_location_loads_without_errors(ui_url: str) -> None:
    data = _graphql(
        ui_url,
        """{
      workspaceOrError {
        __typename
        ... on PythonError { message }
        ... on Workspace {
          locationEntries {
            name
            loadStatus
            locationOrLoadError {
              __typename
              ... on PythonError { message stack }
              ... on RepositoryLocation { name repositories { name assetGroups { groupName } } }
            }
          }
        }
      }
      assetNodes { assetKey { path } groupName }
    }""",
    )
    workspace = data["workspaceOrError"]
    assert workspace["__typename"] == "Workspace", workspace
    entries = {entry["name"]: entry for entry in workspace["locationEntries"]}
    assert set(entries) == {LOCATION}
    location = entries[LOCATION]["locationOrLoadError"]
    assert location["__typename"] == "RepositoryLocation", (
        f"{LOCATION} failed to load: {location.get('message')}\n{''.join(location.get('stack') or [])}"
    )
    assert entries[LOCATION]["loadStatus"] == "LOADED"
    groups = {g["groupName"] for repo in location["repositories"] for g in repo["assetGroups"]}
    assert groups == GROUPS
    served = {"/".join(node["assetKey"]["path"]): node["groupName"] for node in data["assetNodes"]}
    assert {name: served.get(name) for name in EXPECTED_ASSETS} == EXPECTED_ASSETS


def test_asset_catalog_lists_assets_with_their_groups(ui_url: str, page: DevToolsPage) -> None:
    # The served HTML is an empty shell: whatever names show up below were rendered by the app.
    shell = httpx.get(f"{ui_url}/assets", timeout=30).text
    assert "raw_flights" not in shell and "online_features" not in shell

    lines = page.wait_for(f"{ui_url}/assets", lines=set(EXPECTED_ASSETS) | GROUPS)
    assert LOCATION in lines

    # Each row reads: name, (kind), description, code location, group, status. The group that
    # follows an asset's name, before the next asset's name, must be that asset's group.
    all_assets = {
        "/".join(n["assetKey"]["path"]) for n in _graphql(ui_url, "{ assetNodes { assetKey { path } } }")["assetNodes"]
    }
    for asset, group in EXPECTED_ASSETS.items():
        start = lines.index(asset)
        end = next((i for i in range(start + 1, len(lines)) if lines[i] in all_assets - {asset}), len(lines))
        row_groups = [line for line in lines[start:end] if line in GROUPS]
        assert row_groups == [group], f"{asset}: row {lines[start:end]} shows groups {row_groups}"


def _graph_url(ui_url: str, expanded: list[str]) -> str:
    # Group ids are `global@global:<group>` while per-location asset groups are not enabled.
    return f"{ui_url}/asset-groups?" + urlencode({"expanded": ",".join(f"global@global:{g}" for g in expanded)})


def test_asset_graph_renders(ui_url: str, page: DevToolsPage, tmp_path: Path) -> None:
    # Collapsed (the default): one box per group, besides the group tree in the side panel.
    lines = page.wait_for(f"{ui_url}/asset-groups", lines=GROUPS | {"Global asset lineage"})
    for group in GROUPS:
        assert lines.count(group) >= 2, f"group {group} should be in the tree and in the graph"
    assert "raw_flights" not in lines  # no asset node while every group is collapsed

    # Every group expanded: the asset nodes (long names are middle-truncated in small nodes,
    # e.g. "origin…_departures", so only the ones that fit are looked for whole).
    whole_names = {name for name in EXPECTED_ASSETS if len(name) <= 17}
    assert {"raw_flights", "departures", "delay_model", "online_features"} <= whole_names
    page.wait_for(_graph_url(ui_url, sorted(GROUPS)), lines=GROUPS | whole_names)

    # The screenshot: ingestion and validated expanded fits a 1600x1000 window.
    shot = tmp_path / "asset_graph.png"
    profile = tmp_path / "screenshot-profile"
    proc = subprocess.Popen(
        [
            str(CHROMIUM),
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1600,1000",
            "--virtual-time-budget=20000",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            _graph_url(ui_url, ["ingestion", "validated"]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=SCREENSHOT_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium --screenshot did not finish within {SCREENSHOT_TIMEOUT:.0f}s", pytrace=False)
    finally:
        ProcessGroup(proc).stop(timeout=15)
    assert shot.exists(), output.decode(errors="replace")[-3000:]
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert (width, height) == (1600, 1000)
    # A blank 1600x1000 page is ~7 kB; the app shell alone ~55 kB; this graph ~150 kB.
    assert len(png) > 30_000, f"screenshot is only {len(png)} bytes: {shot}"
    print(f"screenshot: {shot} ({len(png)} bytes)")


def test_asset_detail_page_shows_description_and_check(ui_url: str, page: DevToolsPage) -> None:
    lines = page.wait_for(
        f"{ui_url}/assets/raw_flights",
        substrings={RAW_FLIGHTS_DESCRIPTION},
        lines={"raw_flights", "Description", "ingestion", "raw_airports", "departures"},
    )
    assert "Checks" in lines

    lines = page.wait_for(
        f"{ui_url}/assets/raw_flights?view=checks",
        lines={"schema"},
        substrings={"blocking", "known airports, unique (day, carrier, flight, origin)"},
    )
    assert "Checks (1)" in lines
