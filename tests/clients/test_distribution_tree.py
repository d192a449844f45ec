"""Storage compatibility with CNCF Distribution, both ways.

``tests/fixtures/distribution/storage`` was written by Distribution 2.8.2
(see ``make_distribution_fixture.py``; ``contents.json`` says what it holds).

* The registry under test, started on a copy of that tree, serves every tag,
  manifest and blob in it byte for byte, to HTTP, skopeo and docker.
* What the registry under test writes into such a tree, Distribution serves
  (started afterwards on the same directory).
* The tree's saved upload hash state is the state our C core computes.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.clients.conftest import registry_kind
from tests.clients.harness import (
    MEDIA_OCI_INDEX,
    DockerDaemon,
    MissingTool,
    Registry,
    Skopeo,
    make_image,
    missing_tool,
    read_oci_layout,
    sha256_digest,
    start_our_registry,
    start_reference_registry,
    write_oci_layout,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "distribution"
CONTENTS: dict[str, Any] = json.loads((FIXTURE / "contents.json").read_text())
V2 = Path("docker") / "registry" / "v2"


def start_registry(kind: str, workdir: Path, storage: Path) -> Registry:
    """Start a registry of ``kind`` ("ours" or "reference") on ``storage``."""
    if kind == "reference":
        try:
            return start_reference_registry(workdir, storage=storage)
        except MissingTool as error:
            missing_tool(error)
    return start_our_registry(workdir, storage=storage)


@pytest.fixture
def tree(scratch: Path) -> Path:
    """A private copy of the Distribution-written storage tree."""
    storage = scratch / "storage"
    shutil.copytree(FIXTURE / CONTENTS["root"], storage)
    return storage


@pytest.fixture
def tree_registry(tree: Path, scratch: Path) -> Iterator[Registry]:
    """The registry under test serving the copied tree."""
    registry = start_registry(registry_kind(), scratch / "registry", tree)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.mark.clients
def test_serves_every_tag_manifest_and_blob(tree_registry: Registry, skopeo: Skopeo, scratch: Path) -> None:
    for repo, tags in CONTENTS["tags"].items():
        listed = tree_registry.get(f"/v2/{repo}/tags/list")
        assert listed.status == 200, (repo, listed.body)
        body = json.loads(listed.body)
        if registry_kind() == "reference":
            # Distribution 2.8 lists tags in directory order, not lexically.
            body["tags"] = sorted(body["tags"])
        assert body == {"name": repo, "tags": sorted(tags)}
        for tag, expected in tags.items():
            for reference in (tag, expected["digest"]):
                response = tree_registry.manifest(repo, reference)
                assert response.status == 200, (repo, reference, response.body)
                assert sha256_digest(response.body) == expected["digest"]
                assert response.headers["content-type"] == expected["mediaType"]
                assert response.headers["docker-content-digest"] == expected["digest"]
            manifest = json.loads(response.body)
            for descriptor in [manifest.get("config"), *manifest.get("layers", [])]:
                if descriptor:
                    blob = tree_registry.blob(repo, descriptor["digest"])
                    assert sha256_digest(blob) == descriptor["digest"]
                    assert len(blob) == descriptor["size"]

    for platform, digest in CONTENTS["children"]["fixture/multi"].items():
        response = tree_registry.manifest("fixture/multi", digest)
        assert response.status == 200
        config = json.loads(response.body)["config"]["digest"]
        assert config == CONTENTS["configs"]["fixture/multi"][platform]

    deleted = CONTENTS["deleted"]["fixture/deleted"]
    assert tree_registry.manifest("fixture/deleted", deleted["digest"]).status == 404
    assert tree_registry.manifest("fixture/deleted", deleted["tag"]).status == 404

    back = scratch / "multi-back"
    skopeo.copy(tree_registry.docker_ref("fixture/multi", "multi"), f"oci:{back}:multi", "--all")
    index, _ = read_oci_layout(back)
    assert sha256_digest(index) == CONTENTS["tags"]["fixture/multi"]["multi"]["digest"]


@pytest.mark.clients
def test_docker_pulls_from_the_tree(dockerd: DockerDaemon, tree_registry: Registry) -> None:
    config = CONTENTS["configs"]["fixture/app"]
    for tag in ("v2s2", "v1"):  # Docker schema 2, then OCI: the same config
        reference = tree_registry.ref("fixture/app", tag)
        dockerd.docker("pull", reference)
        assert dockerd.image_id(reference) == config
    dockerd.docker("rmi", "--force", config)


@pytest.mark.clients
def test_distribution_serves_what_the_registry_under_test_wrote(
    tree: Path, scratch: Path, skopeo: Skopeo, repo: str
) -> None:
    kind = registry_kind()
    writer = start_registry(kind, scratch / "writer", tree)
    try:
        image = make_image(repo, layers=2, layer_size=4096)
        single = write_oci_layout(scratch / "single", [image], "v1")
        skopeo.copy(single.reference, writer.docker_ref(repo, "v1"))
        skopeo.copy(single.reference, writer.docker_ref(repo, "v2s2"), "--format", "v2s2")
        v2s2 = writer.manifest(repo, "v2s2").body
        multi = write_oci_layout(
            scratch / "multi",
            [make_image(repo, layers=1, layer_size=4096, architecture=a) for a in ("amd64", "arm64")],
            "multi",
        )
        skopeo.copy(multi.reference, writer.docker_ref(repo, "multi"), "--all")
        # A new tag in a repository Distribution wrote, on a manifest it wrote.
        skopeo.copy(writer.docker_ref("fixture/app", "v1"), writer.docker_ref("fixture/app", "again"))
    finally:
        writer.stop()

    reader = start_registry("reference", scratch / "reader", tree)
    try:
        expected = {"v1": single.manifest, "v2s2": v2s2, "multi": multi.manifest}
        listed = json.loads(reader.get(f"/v2/{repo}/tags/list").body)["tags"]
        assert sorted(listed) == sorted(expected)  # Distribution: directory order
        for tag, body in expected.items():
            response = reader.manifest(repo, tag)
            assert response.status == 200, (tag, response.body)
            assert response.body == body
        assert reader.manifest(repo, "multi").headers["content-type"] == MEDIA_OCI_INDEX
        for child in multi.children.values():
            assert reader.manifest(repo, sha256_digest(child)).body == child
        assert reader.blob(repo, image.config_digest) == image.config
        for layer in image.layers:
            assert reader.blob(repo, layer.digest) == layer.gzipped
        again = reader.manifest("fixture/app", "again")
        assert sha256_digest(again.body) == CONTENTS["tags"]["fixture/app"]["v1"]["digest"]
    finally:
        reader.stop()


def test_saved_upload_hash_state_is_ours() -> None:
    """Distribution's ``hashstates/sha256/<offset>`` equals our C core's state."""
    from registry.hashing import Sha256

    upload = CONTENTS["unfinished_upload"]
    blob = random.Random("fixture/upload").randbytes(upload["blob"]["size"])
    assert sha256_digest(blob) == upload["blob"]["digest"]
    directory = (
        FIXTURE / CONTENTS["root"] / V2 / "repositories" / upload["repository"]
        / "_uploads" / upload["uuid"]
    )  # fmt: skip
    data = (directory / "data").read_bytes()
    assert data == blob[: upload["offset"]]
    saved = (directory / "hashstates" / "sha256" / str(upload["offset"])).read_bytes()
    assert Sha256(data).state() == saved
    resumed = Sha256.from_state(saved)
    resumed.update(blob[upload["offset"] :])
    assert "sha256:" + resumed.hexdigest() == upload["blob"]["digest"]
    assert (directory / "hashstates" / "sha256" / "0").read_bytes() == Sha256().state()
