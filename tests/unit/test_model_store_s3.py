"""Model versions on S3 (the aws and k8s profiles): registered once by one registry, downloaded,
verified and imported by every other, never replaced. Against a real S3-compatible server
(SeaweedFS) and a real PostgreSQL."""

from __future__ import annotations

import filecmp
import threading
from pathlib import Path

import psycopg
import pytest
from bentoml.exceptions import NotFound

from flight_delay.model_store import AlreadyRegisteredError, ModelIntegrityError
from flight_delay.object_store import S3Location
from flight_delay.registry import ModelRegistry
from tests.support.processes import race


def _write(text: str):
    def write(path: Path) -> None:
        path.mkdir(parents=True)
        (path / "weights.txt").write_text(text)
        (path / "variables").mkdir()
        (path / "variables" / "data.bin").write_bytes(text.encode() * 1000)

    return write


@pytest.fixture()
def s3(s3_env: str) -> S3Location:
    return S3Location.from_env()


@pytest.fixture()
def make(tmp_path: Path, postgres_url: str, s3: S3Location):
    """A registry (a replica) with its own home over the shared bucket and database."""

    def make(home: str) -> ModelRegistry:
        return ModelRegistry(tmp_path / home, postgres_url, s3)

    return make


def _key(s3: S3Location, tag: str) -> str:
    name, version = tag.split(":")
    return s3.key("models", name, f"{version}.bentomodel")


def _object(s3_server, s3: S3Location, tag: str) -> bytes:
    return s3_server.client().get_object(Bucket=s3.bucket, Key=_key(s3, tag))["Body"].read()


def _local(registry: ModelRegistry, tag: str) -> Path:
    return registry.home / "models" / tag.replace(":", "/")


def _same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    return not mismatch and not errors and len(match) == len(files)


def test_s3_needs_a_database(tmp_path, s3):
    with pytest.raises(ValueError, match="database URL"):
        ModelRegistry(tmp_path / "a", None, s3)


def test_a_version_registered_by_one_replica_is_served_by_another(make, s3, s3_server):
    a = make("a")
    tags = [
        a.register("m", _write(str(i)), {"feature_service": "svc"}, {"metrics": {"auc": 0.5 + i / 10}})
        for i in range(2)
    ]
    assert _object(s3_server, s3, tags[0])[:2] != b""  # the archive is in the bucket, under models/m/
    b = make("b")
    assert not _local(b, tags[0]).exists()
    assert b.list("m") == tags  # every registered version, none fetched yet
    stamp = b.stamp("m")
    for i, tag in enumerate(tags):
        folder = b.model_dir(tag)
        assert folder == _local(b, tag) / "saved_model"
        assert _same_tree(a.model_dir(tag), folder)
        assert (folder / "weights.txt").read_text() == str(i)
        assert b.get(tag).info.metadata["metrics"]["auc"] == pytest.approx(0.5 + i / 10)
        assert b.get(tag).info.labels["feature_service"] == "svc"
    assert b.get("m:latest").tag == b.get(tags[-1]).tag  # floating tags through the table
    assert b.list("m") == tags
    third = a.register("m", _write("2"), {}, {})
    assert b.stamp("m") != stamp  # a replica watching the registry sees the new version
    assert b.list("m") == [*tags, third]
    assert b.get("m").tag == b.get(third).tag
    with pytest.raises(ValueError, match="floating"):
        b.canonical("m", "m:latest")
    assert b.canonical("m", third) == third
    b.promote("m", third, "first", expected_champion=None)  # decided from the table, shared with a
    assert a.champion("m") == third


def test_a_tampered_object_is_refused_and_not_imported(make, s3, s3_server):
    a = make("a")
    tag, other = (a.register("m", _write(t), {}, {}) for t in ("good", "evil"))
    c = make("c")
    # Same size, one byte changed: only the digest tells.
    good = bytearray(_object(s3_server, s3, tag))
    good[len(good) // 2] ^= 0xFF
    s3_server.client().put_object(Bucket=s3.bucket, Key=_key(s3, tag), Body=bytes(good))
    with pytest.raises(ModelIntegrityError, match=f"expected sha256 [0-9a-f]{{64}} \\({len(good)} bytes\\), actual"):
        c.model_dir(tag)
    assert not _local(c, tag).exists()
    # A valid archive, but not the one registered as ``tag``.
    s3_server.client().put_object(Bucket=s3.bucket, Key=_key(s3, tag), Body=_object(s3_server, s3, other))
    with pytest.raises(ModelIntegrityError, match="expected sha256 [0-9a-f]{64}.*actual sha256 [0-9a-f]{64}"):
        c.model_dir(tag)
    assert not _local(c, tag).exists()
    with pytest.raises(NotFound):  # not in c's own store, and nothing half-imported
        c._store.get(tag)
    assert [p.name for p in (c.home / ".incoming").iterdir()] == ["fetch-m.lock"]
    s3_server.client().put_object(Bucket=s3.bucket, Key=_key(s3, tag), Body=b"garbage")
    with pytest.raises(ModelIntegrityError, match="7 bytes"):
        c.get(tag)
    assert (c.model_dir(other) / "weights.txt").read_text() == "evil"  # the untouched one still serves


def test_a_version_is_registered_once_and_never_replaced(make, s3, s3_server, postgres_url):
    a = make("a")
    tag = a.register("m", _write("one"), {}, {})
    before = _object(s3_server, s3, tag)
    with pytest.raises(AlreadyRegisteredError, match="already registered"):
        a.publish(tag)
    b = make("b")
    with pytest.raises(AlreadyRegisteredError, match="already registered"):
        b.publish(tag)  # fetched, then refused
    assert _object(s3_server, s3, tag) == before
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        rows = conn.execute("SELECT version, sha256, size_bytes FROM model_versions").fetchall()
        assert len(rows) == 1 and rows[0][2] == len(before)
        # An object without its row (a registration cut short after the upload) is not overwritten.
        conn.execute("DELETE FROM model_versions")
    with pytest.raises(AlreadyRegisteredError, match="cut short"):
        a.publish(tag)
    assert _object(s3_server, s3, tag) == before
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM model_versions").fetchone() == (0,)


def test_an_unknown_version_is_a_clear_error(make):
    a = make("a")
    a.register("m", _write("one"), {}, {})
    b = make("b")
    for call in (b.get, b.model_dir, lambda t: b.canonical("m", t)):
        with pytest.raises(LookupError, match="m:nosuchversion is not registered"):
            call("m:nosuchversion")
    with pytest.raises(LookupError, match="no registered version"):
        b.get("other:latest")
    assert b.list("other") == []


def test_threads_fetching_one_version_at_once_both_succeed(make):
    tag = make("a").register("m", _write("one"), {}, {})
    b = make("b")
    barrier = threading.Barrier(4)
    results: list[object] = []

    def fetch() -> None:
        barrier.wait()
        try:
            results.append(b.model_dir(tag))
        except Exception as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=fetch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [b.model_dir(tag)] * 4
    assert (results[0] / "weights.txt").read_text() == "one"


def _fetch_in_process(home: str, url: str, tag: str, barrier, results) -> None:
    registry = ModelRegistry(home, url, S3Location.from_env())
    barrier.wait()
    results.put((registry.model_dir(tag) / "weights.txt").read_text())


def test_processes_fetching_one_version_at_once_both_succeed(make, postgres_url, tmp_path):
    tag = make("a").register("m", _write("one"), {}, {})
    home = str(tmp_path / "b")
    assert race(_fetch_in_process, [(home, postgres_url, tag)] * 3) == ["one"] * 3
    assert _same_tree(make("a").model_dir(tag), make("b").model_dir(tag))


def test_the_pipeline_registry_resource_keeps_versions_in_the_bucket(monkeypatch, tmp_path, postgres_url, s3, make):
    import dagster as dg

    from pipeline import definitions

    monkeypatch.setenv("FLIGHT_DELAY_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", postgres_url)
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "local")
    local = definitions.build_definitions().resources["model_registry"]
    assert local.s3_bucket is None
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "aws")
    monkeypatch.setenv("FLIGHT_DELAY_ONLINE_STORE", "redis://127.0.0.1:6379/0")  # required; never opened here
    resource = definitions.build_definitions().resources["model_registry"]
    with dg.build_resources({"model_registry": resource}) as resources:
        registry = resources.model_registry.registry()
    assert registry._versions.s3 == s3
    tag = registry.register("m", _write("pipeline"), {}, {})
    assert (make("service").model_dir(tag) / "weights.txt").read_text() == "pipeline"


def test_the_command_line_decides_on_registered_versions_without_downloading_them(
    monkeypatch, tmp_path, postgres_url, make
):
    from flight_delay.registry import main

    tag = make("a").register("m", _write("one"), {}, {})
    monkeypatch.setenv("FLIGHT_DELAY_PROFILE", "aws")
    monkeypatch.setenv("FLIGHT_DELAY_DATABASE_URL", postgres_url)
    home = tmp_path / "cli"
    assert main(["--home", str(home), "--model", "m", "promote", tag, "--reason", "by hand", "--expect", "none"]) == 0
    assert (
        main(["--home", str(home), "--model", "m", "promote", "m:nosuchversion", "--reason", "x", "--expect", tag]) == 1
    )
    assert make("b").champion("m") == tag
    assert not _local(ModelRegistry(home), tag).exists()
