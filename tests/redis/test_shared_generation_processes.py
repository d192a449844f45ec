"""The content cache of instances on "different hosts": two ``twistd
registry`` processes on one filesystem storage and one real Redis, each
(two worker processes) with its own host-wide generation file
(``TWISTED_REGISTRY_SHARED_DIR`` differs), so only Redis can carry the news of a deletion
(``registry.storage.generation.SharedGeneration``). What one deletes, the
other answers 404 at once, though it had it cached; with Redis killed, both
keep answering correctly from storage."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.harness import ManagedProcess, _wait_for_v2, free_port, twistd_path
from tests.redis.server import RedisServer
from tests.test_content_cache_processes import OCI_MANIFEST, Server


def _config(path: Path, root: Path, port: int, redis: RedisServer) -> Path:
    path.write_text(
        "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
        f"storage:\n  filesystem: {{rootdirectory: '{root}'}}\n  delete: {{enabled: true}}\n"
        "  maintenance: {uploadpurging: {enabled: false}}\n"
        f"http: {{addr: '127.0.0.1:{port}', secret: shared-secret, workers: 2}}\n"
        f"redis: {{addr: '{redis.addr}', dialtimeout: 1s, readtimeout: 1s, writetimeout: 1s}}\n"
    )
    return path


class Instance(Server):
    """A registry process with Redis and a host-wide directory of its own."""

    def __init__(self, workdir: Path, root: Path, redis: RedisServer) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = _config(workdir / "config.yml", root, self.port, redis)
        self.shared_dir = workdir / "host"
        self.process = ManagedProcess(
            [twistd_path(), "-n", "--pidfile=", "registry", "--config", str(self.config)],
            workdir / "log",
            cwd=workdir,
            env={"TWISTED_REGISTRY_SHARED_DIR": str(self.shared_dir)},
        )
        try:
            _wait_for_v2(self.process, f"http://127.0.0.1:{self.port}", "registry", 60)
        except BaseException:
            self.process.stop()
            raise


@pytest.fixture
def instances(tmp_path: Path, redis_server: RedisServer) -> Iterator[tuple[Instance, Instance]]:
    root = tmp_path / "storage"
    a = Instance(tmp_path / "a", root, redis_server)
    try:
        b = Instance(tmp_path / "b", root, redis_server)
    except BaseException:
        a.process.stop()
        raise
    try:
        yield a, b
    finally:
        a.process.stop()
        b.process.stop()


def _generation_files(inst: Instance) -> list[Path]:
    return sorted(inst.shared_dir.glob("registry-generation-*"))


def test_deletes_through_one_instance_are_404_through_the_other_at_once(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    manifest, layer = b.push_image("repo", "v1", b"one")
    other_manifest, other_layer = b.push_image("repo", "v2", b"two")
    # Each instance has a host counter of its own: it cannot carry the news.
    assert _generation_files(a) and _generation_files(b)
    assert {p.name for p in _generation_files(a)} == {p.name for p in _generation_files(b)}
    assert a.shared_dir != b.shared_dir
    # a caches the manifest (by digest and through its tag) and the layer.
    for _ in range(3):
        assert a.status("GET", f"/v2/repo/manifests/{manifest}") == 200
        assert a.status("GET", "/v2/repo/manifests/v1") == 200
        assert a.status("HEAD", f"/v2/repo/blobs/{layer}") == 200
        assert a.status("GET", f"/v2/repo/blobs/{layer}") == 200
    started = time.monotonic()
    assert b.status("DELETE", f"/v2/repo/manifests/{manifest}") == 202
    waited = time.monotonic() - started
    assert a.status("GET", f"/v2/repo/manifests/{manifest}") == 404
    assert a.status("HEAD", f"/v2/repo/manifests/{manifest}") == 404
    assert a.status("GET", "/v2/repo/manifests/v1") == 404
    assert b.status("DELETE", f"/v2/repo/blobs/{layer}") == 202
    assert a.status("HEAD", f"/v2/repo/blobs/{layer}") == 404
    assert a.status("GET", f"/v2/repo/blobs/{layer}") == 404
    # The deleter waited one lease (0.25 s) for the other's cache, no more
    # than a few (a loaded machine).
    assert 0.25 <= waited < 5, waited
    # And the other way round, for entries cached by b.
    for _ in range(2):
        assert b.status("GET", f"/v2/repo/manifests/{other_manifest}") == 200
        assert b.status("HEAD", f"/v2/repo/blobs/{other_layer}") == 200
    assert a.status("DELETE", f"/v2/repo/blobs/{other_layer}") == 202
    assert b.status("HEAD", f"/v2/repo/blobs/{other_layer}") == 404
    assert a.status("DELETE", f"/v2/repo/manifests/{other_manifest}") == 202
    assert b.status("GET", f"/v2/repo/manifests/{other_manifest}") == 404


def test_retags_through_one_instance_are_seen_through_the_other_at_once(instances: tuple[Instance, Instance]) -> None:
    """The tag cache's generation travels through Redis too: a push that
    moves a tag answers once the other instance's cached tag is dropped."""
    a, b = instances
    for seed in (b"one", b"two", b"three"):
        started = time.monotonic()
        manifest, _ = b.push_image("repo", "latest", seed)
        pushed = time.monotonic() - started
        for _ in range(3):
            status, headers, _ = a.request("GET", "/v2/repo/manifests/latest", headers={"Accept": OCI_MANIFEST})
            assert (status, headers["docker-content-digest"]) == (200, manifest)
        assert pushed >= 0.25, pushed  # the tag write waited one lease
    assert b.status("DELETE", "/v2/repo/manifests/latest") == 202
    assert a.status("GET", "/v2/repo/manifests/latest") == 404


def test_garbage_collection_by_the_cli_is_404_through_both_at_once(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    manifest, layer = a.push_image("gc", "v1", b"three")
    for _ in range(2):
        for inst in (a, b):
            assert inst.status("GET", f"/v2/gc/manifests/{manifest}") == 200
            assert inst.status("HEAD", f"/v2/gc/blobs/{layer}") == 200
    assert a.status("DELETE", "/v2/gc/manifests/v1") == 202
    registry = Path(sys.executable).with_name("registry")
    cli = [str(registry)] if registry.exists() else [sys.executable, "-m", "registry.cli"]
    # The collector runs with a host directory of its own too.
    done = subprocess.run(
        [*cli, "garbage-collect", "--delete-untagged", "--grace", "0s", str(a.config)],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "TWISTED_REGISTRY_SHARED_DIR": str(a.shared_dir.parent / "gc-host")},
    )
    assert done.returncode == 0, done.stderr
    assert f"deleted blob {layer}" in done.stdout
    for inst in (a, b):
        assert inst.status("GET", f"/v2/gc/manifests/{manifest}") == 404
        assert inst.status("HEAD", f"/v2/gc/blobs/{layer}") == 404


def test_redis_killed_midway_still_correct(instances: tuple[Instance, Instance], redis_server: RedisServer) -> None:
    a, b = instances
    manifest, layer = b.push_image("down", "v1", b"four")
    kept_manifest, kept_layer = b.push_image("down", "v2", b"five")
    for _ in range(3):
        assert a.status("GET", f"/v2/down/manifests/{manifest}") == 200
        assert a.status("HEAD", f"/v2/down/blobs/{layer}") == 200
    redis_server.stop()
    # Reads keep working (from storage once the lease has lapsed).
    for _ in range(3):
        assert a.status("GET", f"/v2/down/manifests/{kept_manifest}") == 200
        assert a.status("GET", "/v2/down/manifests/v2") == 200
        assert a.status("HEAD", f"/v2/down/blobs/{kept_layer}") == 200
    # A delete through b with Redis gone still answers, and a never serves
    # the deleted manifest or blob from its cache.
    assert b.status("DELETE", f"/v2/down/manifests/{manifest}") == 202
    assert a.status("GET", f"/v2/down/manifests/{manifest}") == 404
    assert b.status("DELETE", f"/v2/down/blobs/{layer}") == 202
    assert a.status("HEAD", f"/v2/down/blobs/{layer}") == 404
    assert a.status("GET", "/v2/down/manifests/v1") == 404
    # The rest is still served.
    assert a.status("GET", "/v2/down/manifests/v2") == 200
    assert b.status("HEAD", f"/v2/down/blobs/{kept_layer}") == 200
    # Each worker process (two per instance) logged the outage once at most
    # (the client's log; the health check's report is tests/redis/test_app.py's).
    for inst in (a, b):
        assert 1 <= inst.process.output().count("is unavailable") <= 2, inst.process.output()
