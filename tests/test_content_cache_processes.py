"""The in-process content cache across real processes: two ``twistd
registry`` servers on one filesystem root, and the ``registry
garbage-collect`` CLI. What one process deletes, the other answers 404 at
once, whether it had cached it or not (``registry.storage.generation``)."""

from __future__ import annotations

import hashlib
import http.client
import json
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.harness import ManagedProcess, _wait_for_v2, free_port, twistd_path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _config(path: Path, root: Path, port: int) -> Path:
    path.write_text(
        "version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\n"
        f"storage:\n  filesystem: {{rootdirectory: '{root}'}}\n  delete: {{enabled: true}}\n"
        "  maintenance: {uploadpurging: {enabled: false}}\n"
        f"http: {{addr: '127.0.0.1:{port}'}}\n"
    )
    return path


class Server:
    def __init__(self, workdir: Path, root: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = _config(workdir / "config.yml", root, self.port)
        self.process = ManagedProcess(
            [twistd_path(), "-n", "--pidfile=", "registry", "--config", str(self.config)], workdir / "log", cwd=workdir
        )
        try:
            _wait_for_v2(self.process, f"http://127.0.0.1:{self.port}", "registry", 60)
        except BaseException:
            self.process.stop()
            raise

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def push_blob(self, name: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, _, _ = self.request("PUT", f"/v2/{name}/blobs/uploads/?digest={digest}", data)
        if status != 201:  # no monolithic PUT: POST then PUT
            status, headers, _ = self.request("POST", f"/v2/{name}/blobs/uploads/")
            assert status == 202
            location = headers["location"]
            sep = "&" if "?" in location else "?"
            status, _, body = self.request("PUT", f"{location}{sep}digest={digest}", data)
            assert status == 201, body
        return digest

    def push_image(self, name: str, tag: str, seed: bytes) -> tuple[str, str]:
        layer = self.push_blob(name, seed * 100)
        config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed.hex()}).encode()
        config_digest = self.push_blob(name, config)
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": len(seed) * 100}],
        }).encode()
        status, _, body = self.request("PUT", f"/v2/{name}/manifests/{tag}", manifest, {"Content-Type": OCI_MANIFEST})
        assert status == 201, body
        return "sha256:" + hashlib.sha256(manifest).hexdigest(), layer

    def status(self, method: str, path: str) -> int:
        return self.request(method, path, headers={"Accept": OCI_MANIFEST})[0]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    root = tmp_path / "storage"
    a = Server(tmp_path / "a", root)
    try:
        b = Server(tmp_path / "b", root)
    except BaseException:
        a.process.stop()
        raise
    try:
        yield a, b
    finally:
        a.process.stop()
        b.process.stop()


def test_deletes_in_one_server_are_seen_by_the_other_at_once(servers: tuple[Server, Server]) -> None:
    a, b = servers
    manifest, layer = a.push_image("repo", "v1", b"one")
    other_manifest, other_layer = a.push_image("repo", "v2", b"two")
    # b caches the first image's manifest (by tag and digest) and layer size.
    for _ in range(3):
        assert b.status("GET", f"/v2/repo/manifests/{manifest}") == 200
        assert b.status("GET", "/v2/repo/manifests/v1") == 200
        assert b.status("HEAD", f"/v2/repo/blobs/{layer}") == 200
    # Cached entries: deleted through a, answered 404 by b at once.
    assert a.status("DELETE", f"/v2/repo/manifests/{manifest}") == 202
    assert b.status("GET", f"/v2/repo/manifests/{manifest}") == 404
    assert b.status("HEAD", f"/v2/repo/manifests/{manifest}") == 404
    assert b.status("GET", "/v2/repo/manifests/v1") == 404
    assert a.status("DELETE", f"/v2/repo/blobs/{layer}") == 202
    assert b.status("HEAD", f"/v2/repo/blobs/{layer}") == 404
    # Entries b never read: the same.
    assert a.status("DELETE", f"/v2/repo/blobs/{other_layer}") == 202
    assert b.status("HEAD", f"/v2/repo/blobs/{other_layer}") == 404
    assert a.status("DELETE", f"/v2/repo/manifests/{other_manifest}") == 202
    assert b.status("GET", f"/v2/repo/manifests/{other_manifest}") == 404


def test_retags_in_one_server_are_seen_by_the_other_at_once(servers: tuple[Server, Server]) -> None:
    """Tags are cached too (``CachedTagStore``), over a generation of their
    own: a push that moves a tag, or a tag's delete, is seen at once."""
    a, b = servers
    previous = None
    for seed in (b"one", b"two", b"three"):
        manifest, _ = a.push_image("repo", "latest", seed)
        assert manifest != previous
        for _ in range(3):  # b reads the tag, from its cache after the first time
            status, headers, _ = b.request("GET", "/v2/repo/manifests/latest", headers={"Accept": OCI_MANIFEST})
            assert (status, headers["docker-content-digest"]) == (200, manifest)
        previous = manifest
    assert a.status("DELETE", "/v2/repo/manifests/latest") == 202
    assert b.status("GET", "/v2/repo/manifests/latest") == 404
    # The manifest stays, by digest (an untag deletes no manifest).
    assert b.status("GET", f"/v2/repo/manifests/{previous}") == 200


def test_garbage_collection_by_the_cli_is_seen_by_a_server_at_once(servers: tuple[Server, Server]) -> None:
    a, b = servers
    manifest, layer = a.push_image("gc", "v1", b"three")
    for _ in range(2):
        assert b.status("GET", f"/v2/gc/manifests/{manifest}") == 200
        assert b.status("HEAD", f"/v2/gc/blobs/{layer}") == 200
    # Untag (tags are never cached), then let the collector remove the
    # untagged manifest, its links and its blobs.
    assert a.status("DELETE", "/v2/gc/manifests/v1") == 202
    registry = Path(sys.executable).with_name("registry")
    cli = [str(registry)] if registry.exists() else [sys.executable, "-m", "registry.cli"]
    done = subprocess.run(
        [*cli, "garbage-collect", "--delete-untagged", "--grace", "0s", str(a.config)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    for server in (a, b):
        assert server.status("GET", f"/v2/gc/manifests/{manifest}") == 404
        assert server.status("HEAD", f"/v2/gc/blobs/{layer}") == 404
