"""The docker daemon and CLI against the registry under test.

Images are generated (no ``docker build``): a ``docker save``-format tarball
is ``docker load``-ed, tagged ``127.0.0.1:<port>/<repo>:<tag>`` and pushed.
Every test checks what the registry really stored (manifest bytes, digests,
blob contents) and what docker really got back (image ID = config digest,
layer diff IDs), not only exit codes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    DockerDaemon,
    Image,
    Registry,
    make_image,
    sha256_digest,
    uncompressed_digest,
    write_docker_archive,
)

pytestmark = pytest.mark.clients

_LAYER_LINE = re.compile(r"^([0-9a-f]{12}): (.+?)\s*$", re.MULTILINE)
_PUSH_DIGEST = re.compile(r"digest: (sha256:[0-9a-f]{64}) size: (\d+)")


def layer_statuses(output: str) -> dict[str, str]:
    """The final status docker printed for each layer (short id -> status)."""
    return {short_id: status for short_id, status in _LAYER_LINE.findall(output)}


def pushed_digest(output: str) -> str:
    """The manifest digest from ``docker push`` output (``<tag>: digest: ... size: ...``)."""
    match = _PUSH_DIGEST.search(output)
    assert match, f"no digest line in docker push output:\n{output}"
    return match.group(1)


def load_image(dockerd: DockerDaemon, image: Image, scratch: Path, local_tag: str) -> None:
    """``docker load`` a generated image and check docker computed the same ID."""
    archive = write_docker_archive(image, scratch / "image.tar", [local_tag])
    dockerd.load(archive)
    assert dockerd.image_id(local_tag) == image.config_digest
    assert dockerd.image_diff_ids(local_tag) == image.diff_ids


def assert_registry_holds(registry: Registry, repo: str, tag: str, digest: str, image: Image) -> None:
    """The registry serves a schema-2 manifest with ``digest`` whose blobs are ``image``."""
    response = registry.manifest(repo, tag)
    assert response.status == 200, response
    assert response.headers["content-type"] == MEDIA_DOCKER_MANIFEST
    assert response.headers["docker-content-digest"] == digest
    assert sha256_digest(response.body) == digest
    manifest = json.loads(response.body)
    assert manifest["config"]["digest"] == image.config_digest
    assert registry.blob(repo, image.config_digest) == image.config
    assert len(manifest["layers"]) == len(image.layers)
    for descriptor, layer in zip(manifest["layers"], image.layers):
        blob = registry.blob(repo, descriptor["digest"])
        assert sha256_digest(blob) == descriptor["digest"]
        assert len(blob) == descriptor["size"]
        assert uncompressed_digest(blob) == layer.diff_id


def push_new_image(dockerd: DockerDaemon, registry: Registry, repo: str, scratch: Path, image: Image) -> tuple[str, str, str]:
    """Load ``image``, push it as ``<repo>:v1`` (every layer really pushed)
    and check the registry holds it; ``(manifest digest, local tag, remote
    reference)``."""
    local = f"local/{repo}:src"
    load_image(dockerd, image, scratch, local)
    remote = registry.ref(repo, "v1")
    dockerd.docker("tag", local, remote)
    push = dockerd.docker("push", remote)
    assert sorted(layer_statuses(push.stdout).values()) == ["Pushed"] * len(image.layers), push.stdout
    digest = pushed_digest(push.stdout)
    assert_registry_holds(registry, repo, "v1", digest, image)
    return digest, local, remote


def rmi_and_pull_back(dockerd: DockerDaemon, image: Image, digest: str, local: str, remote: str) -> None:
    """Remove the image locally, pull it back and check it is the same."""
    dockerd.docker("rmi", local, remote)
    assert dockerd.docker("image", "inspect", remote, check=False).returncode != 0
    pull = dockerd.docker("pull", remote)
    assert f"Digest: {digest}" in pull.stdout, pull.stdout
    assert sorted(layer_statuses(pull.stdout).values()) == ["Pull complete"] * len(image.layers), pull.stdout
    assert dockerd.image_id(remote) == image.config_digest
    assert dockerd.image_diff_ids(remote) == image.diff_ids
    dockerd.docker("rmi", "--force", image.config_digest)


def test_push_rmi_pull_gives_the_same_image(
    dockerd: DockerDaemon, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    image = make_image(repo, layers=3)
    local = f"local/{repo}:src"
    load_image(dockerd, image, scratch, local)
    remote = registry_under_test.ref(repo, "v1")
    dockerd.docker("tag", local, remote)

    push = dockerd.docker("push", remote)
    statuses = layer_statuses(push.stdout)
    assert sorted(statuses.values()) == ["Pushed"] * 3, push.stdout
    digest = pushed_digest(push.stdout)
    assert_registry_holds(registry_under_test, repo, "v1", digest, image)

    dockerd.docker("rmi", local, remote)
    assert dockerd.docker("image", "inspect", remote, check=False).returncode != 0

    pull = dockerd.docker("pull", remote)
    assert f"Digest: {digest}" in pull.stdout, pull.stdout
    assert sorted(layer_statuses(pull.stdout).values()) == ["Pull complete"] * 3, pull.stdout
    assert dockerd.image_id(remote) == image.config_digest
    assert dockerd.image_diff_ids(remote) == image.diff_ids

    by_digest = registry_under_test.ref(repo, digest)
    dockerd.docker("pull", by_digest)
    assert dockerd.image_id(by_digest) == image.config_digest
    dockerd.docker("rmi", "--force", image.config_digest)


def test_repush_reports_every_layer_already_exists(
    dockerd: DockerDaemon, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    image = make_image(repo, layers=3)
    remote = registry_under_test.ref(repo, "v1")
    load_image(dockerd, image, scratch, remote)

    first = dockerd.docker("push", remote)
    assert sorted(layer_statuses(first.stdout).values()) == ["Pushed"] * 3, first.stdout
    second = dockerd.docker("push", remote)
    assert sorted(layer_statuses(second.stdout).values()) == ["Layer already exists"] * 3, (
        second.stdout
    )
    assert pushed_digest(second.stdout) == pushed_digest(first.stdout)
    assert_registry_holds(registry_under_test, repo, "v1", pushed_digest(second.stdout), image)
    dockerd.docker("rmi", remote)


def test_second_repository_mounts_shared_layers(
    dockerd: DockerDaemon, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    base = make_image(repo + "/base", layers=2)
    derived = make_image(repo + "/derived", layers=1, base=base)
    first_repo, second_repo = f"{repo}/first", f"{repo}/second"
    first_ref = registry_under_test.ref(first_repo, "v1")
    second_ref = registry_under_test.ref(second_repo, "v1")
    (scratch / "base").mkdir()
    (scratch / "derived").mkdir()
    load_image(dockerd, base, scratch / "base", first_ref)
    load_image(dockerd, derived, scratch / "derived", second_ref)

    dockerd.docker("push", first_ref)
    push = dockerd.docker("push", second_ref)
    statuses = sorted(layer_statuses(push.stdout).values())
    assert statuses == [f"Mounted from {first_repo}"] * 2 + ["Pushed"], (
        push.stdout + "\n--- daemon log tail ---\n" + dockerd.output()[-3000:]
    )
    digest = pushed_digest(push.stdout)
    assert_registry_holds(registry_under_test, second_repo, "v1", digest, derived)

    dockerd.docker("rmi", first_ref, second_ref)
    dockerd.docker("pull", second_ref)
    assert dockerd.image_id(second_ref) == derived.config_digest
    assert dockerd.image_diff_ids(second_ref) == derived.diff_ids
    dockerd.docker("rmi", second_ref)
