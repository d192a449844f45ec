"""Root podman (vfs storage) pulling from and pushing to the registry under test.

The image is put into the registry by skopeo from a generated ``docker
save`` tarball, pulled by podman (image ID = config digest), pushed by
podman to a second repository in Docker schema 2 or OCI format, removed
locally and pulled back.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_MANIFEST,
    Podman,
    Registry,
    Skopeo,
    make_image,
    sha256_digest,
    uncompressed_digest,
    write_docker_archive,
)

pytestmark = pytest.mark.clients


@pytest.mark.parametrize(
    ("push_format", "media_type"),
    [("v2s2", MEDIA_DOCKER_MANIFEST), ("oci", MEDIA_OCI_MANIFEST)],
    ids=["v2s2", "oci"],
)
def test_pull_push_pull(
    podman: Podman,
    skopeo: Skopeo,
    registry_under_test: Registry,
    repo: str,
    scratch: Path,
    push_format: str,
    media_type: str,
) -> None:
    image = make_image(repo, layers=3)
    archive = write_docker_archive(image, scratch / "image.tar", [])
    source_repo, pushed_repo = f"{repo}/source", f"{repo}/pushed"
    skopeo.copy(f"docker-archive:{archive}", registry_under_test.docker_ref(source_repo, "v1"),
                "--format", "v2s2")  # fmt: skip

    source = registry_under_test.ref(source_repo, "v1")
    podman.run("pull", "--tls-verify=false", source)
    hex_id = image.config_digest.removeprefix("sha256:")
    assert podman.image_id(source) == hex_id

    pushed = registry_under_test.ref(pushed_repo, "v1")
    podman.run("push", "--tls-verify=false", "--format", push_format, source, pushed)

    served = registry_under_test.manifest(pushed_repo, "v1")
    assert served.status == 200
    assert served.headers["content-type"] == media_type
    assert served.headers["docker-content-digest"] == sha256_digest(served.body)
    manifest = json.loads(served.body)
    assert manifest["mediaType"] == media_type
    config = json.loads(registry_under_test.blob(pushed_repo, manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == image.diff_ids
    assert config["config"]["Labels"] == {"seed": repo}
    layers = [registry_under_test.blob(pushed_repo, layer["digest"]) for layer in manifest["layers"]]
    assert [uncompressed_digest(blob) for blob in layers] == image.diff_ids

    podman.run("rmi", "--force", hex_id)
    assert podman.run("image", "exists", source, check=False).returncode == 1
    podman.run("pull", "--tls-verify=false", pushed)
    assert podman.image_id(pushed) == manifest["config"]["digest"].removeprefix("sha256:")
    if push_format == "v2s2":
        assert manifest["config"]["digest"] == image.config_digest
    podman.run("rmi", "--force", podman.image_id(pushed))
