"""Verified pushes (``validation.manifests.verifylayers``) with a real
image: podman builds it (``FROM scratch``, ``COPY`` of files from this
machine: an ELF executable, a symbolic link, a hard link, nested
directories, a name longer than the 100 bytes of a plain tar header), so the
layer tars are written by containers/storage (Go's archive/tar) and
compressed by podman (gzip, and zstd for a second push), not by this
project. Our registry with ``verifylayers: true`` accepts both pushes and
records each layer's diff_id (the one in podman's config) and TarSum at
``/v2/<name>/_registry/layers/<digest>``; the same layers under a config
whose ``rootfs.diff_ids`` names the wrong content are refused with
``MANIFEST_INVALID`` naming the layer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.harness import (
    MEDIA_OCI_MANIFEST,
    Podman,
    Registry,
    http_request,
    sha256_digest,
    start_our_registry,
    uncompressed_digest,
)

pytestmark = pytest.mark.clients


@pytest.fixture(scope="module")
def verifying_registry(clients_root: Path) -> Iterator[Registry]:
    registry = start_our_registry(
        clients_root / "verifying-registry",
        extra_config={"validation": {"manifests": {"verifylayers": True}}},
    )
    try:
        yield registry
    finally:
        registry.stop()


def build_context(directory: Path) -> Path:
    """Two layers' worth of real files and a Containerfile."""
    first = directory / "rootfs1"
    (first / "bin").mkdir(parents=True, exist_ok=True)
    (first / "etc").mkdir(exist_ok=True)
    shutil.copy2("/usr/bin/env", first / "bin" / "env")
    (first / "etc" / "os-release").write_bytes(Path("/etc/os-release").read_bytes())
    if not (first / "bin" / "printenv").exists():
        os.symlink("env", first / "bin" / "printenv")
    if not (first / "bin" / "env-hardlink").exists():
        os.link(first / "bin" / "env", first / "bin" / "env-hardlink")
    second = directory / "rootfs2"
    deep = second / "share" / ("a-directory-name-that-is-long-" * 3) / "nested"
    deep.mkdir(parents=True, exist_ok=True)
    (deep / ("and-a-file-name-that-is-long-too-" * 2 + ".txt")).write_text("long names need PAX headers\n" * 100)
    (second / "empty-dir").mkdir(exist_ok=True)
    (second / "data.bin").write_bytes(os.urandom(200_000))
    (directory / "Containerfile").write_text("FROM scratch\nCOPY rootfs1/ /\nCOPY rootfs2/ /opt/\n")
    return directory


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_a_real_image_built_by_podman_passes_and_is_recorded(
    podman: Podman, verifying_registry: Registry, scratch: Path, compression: str
) -> None:
    registry = verifying_registry
    context = build_context(scratch / "context")
    local = f"localhost/verified-{compression}:v1"
    podman.run("build", "--format", "oci", "--network", "none", "-t", local, "-f",
               str(context / "Containerfile"), str(context))  # fmt: skip
    repo = f"clients/verified/{compression}"
    podman.run("push", "--tls-verify=false", "--format", "oci", "--compression-format", compression,
               local, registry.ref(repo, "v1"))  # fmt: skip

    served = registry.manifest(repo, "v1")
    assert served.status == 200, served
    manifest = json.loads(served.body)
    assert manifest["mediaType"] == MEDIA_OCI_MANIFEST
    config = json.loads(registry.blob(repo, manifest["config"]["digest"]))
    diff_ids = config["rootfs"]["diff_ids"]
    assert len(diff_ids) == len(manifest["layers"]) == 2
    for layer, diff_id in zip(manifest["layers"], diff_ids):
        assert layer["mediaType"].endswith("+" + compression), layer
        if compression == "gzip":  # an independent check of what podman wrote
            assert uncompressed_digest(registry.blob(repo, layer["digest"])) == diff_id
        recorded = registry.get(f"/v2/{repo}/_registry/layers/{layer['digest']}")
        assert recorded.status == 200, recorded
        doc = json.loads(recorded.body)
        assert doc["diffID"] == diff_id and doc["compression"] == compression, doc
        assert doc["tarsum"].startswith("tarsum.v1+sha256:") and doc["size"] > 0, doc

    # The same layers under a config that names other content for layer 1: refused, naming it.
    tampered = dict(config, rootfs={"type": "layers", "diff_ids": [diff_ids[0], sha256_digest(b"other content")]})
    config_body = json.dumps(tampered).encode()
    config_digest = sha256_digest(config_body)
    upload = http_request(f"{registry.url}/v2/{repo}/blobs/uploads/?digest={config_digest}", method="POST",
                          body=config_body, headers={"Content-Type": "application/octet-stream"})  # fmt: skip
    assert upload.status == 201, upload
    body = json.dumps(dict(manifest, config=dict(manifest["config"], digest=config_digest,
                                                   size=len(config_body)))).encode()  # fmt: skip
    refused = http_request(f"{registry.url}/v2/{repo}/manifests/tampered", method="PUT", body=body,
                           headers={"Content-Type": MEDIA_OCI_MANIFEST})  # fmt: skip
    assert refused.status == 400, refused
    error = json.loads(refused.body)["errors"][0]
    assert error["code"] == "MANIFEST_INVALID"
    assert "layer 1" in error["message"] and manifest["layers"][1]["digest"] in error["message"], error
    assert registry.manifest(repo, "tampered").status == 404
    podman.run("rmi", "--force", local)
