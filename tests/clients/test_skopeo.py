"""skopeo against the registry under test: copy both ways, --all, inspect, tags, delete.

Sources are generated on disk: an OCI image layout (gzipped layers, one image
or a multi-architecture index) and a ``docker save`` tarball
(``docker-archive:``).  Copies go to the registry in OCI or Docker schema 2
format and come back to ``dir:`` (the exact bytes the registry served) and to
``oci:`` / ``docker-archive:``; the checks compare digests and content.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    CommandFailed,
    Image,
    OCILayoutImage,
    Registry,
    Skopeo,
    make_image,
    read_oci_layout,
    sha256_digest,
    uncompressed_digest,
    write_docker_archive,
    write_oci_layout,
)

pytestmark = pytest.mark.clients

FORMAT_MEDIA_TYPES = {"oci": MEDIA_OCI_MANIFEST, "v2s2": MEDIA_DOCKER_MANIFEST}


def source_reference(kind: str, image: Image, scratch: Path) -> str:
    """Write ``image`` as an ``oci`` layout or a ``docker-archive`` and name it."""
    if kind == "oci":
        return write_oci_layout(scratch / "source-layout", [image], "v1").reference
    archive = write_docker_archive(image, scratch / "source.tar", [])
    return f"docker-archive:{archive}"


def assert_manifest_is_image(
    registry: Registry, repo: str, manifest_bytes: bytes, image: Image, *, converted: bool = False
) -> bytes:
    """The manifest names ``image``'s config and layers, all stored in ``repo``.

    Returns the config bytes the registry serves.  ``converted``: skopeo
    re-serialized the config while converting the manifest format, so it is
    compared field by field instead of byte for byte.
    """
    manifest = json.loads(manifest_bytes)
    config = registry.blob(repo, manifest["config"]["digest"])
    assert sha256_digest(config) == manifest["config"]["digest"]
    if converted:
        served, original = json.loads(config), json.loads(image.config)
        for key in ("architecture", "os", "rootfs"):
            assert served[key] == original[key]
        assert served["config"]["Labels"] == original["config"]["Labels"]
    else:
        assert manifest["config"]["digest"] == image.config_digest
        assert config == image.config
    layer_blobs = [registry.blob(repo, layer["digest"]) for layer in manifest["layers"]]
    assert [sha256_digest(blob) for blob in layer_blobs] == [
        layer["digest"] for layer in manifest["layers"]
    ]
    assert [uncompressed_digest(blob) for blob in layer_blobs] == image.diff_ids
    return config


@pytest.mark.parametrize("source_kind", ["oci", "docker-archive"])
@pytest.mark.parametrize("manifest_format", ["oci", "v2s2"])
def test_copy_to_registry_and_back(
    skopeo: Skopeo,
    registry_under_test: Registry,
    repo: str,
    scratch: Path,
    source_kind: str,
    manifest_format: str,
) -> None:
    image = make_image(repo, layers=2)
    destination = registry_under_test.docker_ref(repo, "v1")
    skopeo.copy(source_reference(source_kind, image, scratch), destination, "--format", manifest_format)

    served = registry_under_test.manifest(repo, "v1")
    assert served.status == 200
    assert served.headers["content-type"] == FORMAT_MEDIA_TYPES[manifest_format]
    digest = sha256_digest(served.body)
    assert served.headers["docker-content-digest"] == digest
    assert json.loads(served.body)["mediaType"] == FORMAT_MEDIA_TYPES[manifest_format]
    # Docker schema 2 -> OCI rewrites the config; OCI -> schema 2 keeps it.
    converted = source_kind == "docker-archive" and manifest_format == "oci"
    config = assert_manifest_is_image(registry_under_test, repo, served.body, image, converted=converted)
    config_digest = sha256_digest(config)
    assert skopeo.inspect_raw(destination) == served.body

    # Back, untouched: dir: keeps the manifest and blobs exactly as served.
    back = scratch / "back-dir"
    skopeo.copy(destination, f"dir:{back}")
    assert (back / "manifest.json").read_bytes() == served.body
    assert (back / config_digest.removeprefix("sha256:")).read_bytes() == config
    for layer in json.loads(served.body)["layers"]:
        data = (back / layer["digest"].removeprefix("sha256:")).read_bytes()
        assert sha256_digest(data) == layer["digest"]

    # Back, converted to the other local format.
    if manifest_format == "oci":
        layout = scratch / "back-oci"
        skopeo.copy(destination, f"oci:{layout}:v1")
        manifest_bytes, blob = read_oci_layout(layout)
        assert manifest_bytes == served.body
        assert blob(config_digest) == config
        layers = [blob(layer["digest"]) for layer in json.loads(manifest_bytes)["layers"]]
        assert [uncompressed_digest(data) for data in layers] == image.diff_ids
    else:
        archive = scratch / "back.tar"
        skopeo.copy(destination, f"docker-archive:{archive}:example.test/back/image:v1")
        with tarfile.open(archive) as tar:
            (entry,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
            archived_config = tar.extractfile(entry["Config"]).read()  # type: ignore[union-attr]
            layer_digests = [
                uncompressed_digest(tar.extractfile(name).read())  # type: ignore[union-attr]
                for name in entry["Layers"]
            ]
        assert entry["RepoTags"] == ["example.test/back/image:v1"]
        assert archived_config == config
        assert layer_digests == image.diff_ids


def copy_index_in_and_out(
    skopeo: Skopeo, registry: Registry, repo: str, scratch: Path, layer_size: int = 24 * 1024
) -> tuple[OCILayoutImage, list[Image]]:
    """``skopeo copy --all`` of a two-platform OCI index into ``registry``,
    check what it serves (the index byte for byte, each child as an image),
    then copy it back out with ``--all`` and compare every blob."""
    images = [make_image(repo, layers=2, layer_size=layer_size, architecture=arch) for arch in ("amd64", "arm64")]
    layout = write_oci_layout(scratch / "source-layout", images, "v1")
    destination = registry.docker_ref(repo, "v1")
    skopeo.copy(layout.reference, destination, "--all")

    served = registry.manifest(repo, "v1")
    assert served.status == 200
    assert served.headers["content-type"] == MEDIA_OCI_INDEX
    assert served.body == layout.manifest
    assert served.headers["docker-content-digest"] == layout.digest
    for image in images:
        child = layout.children[f"linux/{image.architecture}"]
        response = registry.manifest(repo, sha256_digest(child))
        assert response.status == 200
        assert response.headers["content-type"] == MEDIA_OCI_MANIFEST
        assert response.body == child
        assert_manifest_is_image(registry, repo, child, image)

    back = scratch / "back-layout"
    skopeo.copy(destination, f"oci:{back}:v1", "--all")
    index_bytes, blob = read_oci_layout(back)
    assert index_bytes == layout.manifest
    for image in images:
        child = layout.children[f"linux/{image.architecture}"]
        assert blob(sha256_digest(child)) == child
        assert blob(image.config_digest) == image.config
        assert [blob(layer.digest) for layer in image.layers] == [layer.gzipped for layer in image.layers]
    return layout, images


def test_copy_all_multi_architecture_index(
    skopeo: Skopeo, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    layout, images = copy_index_in_and_out(skopeo, registry_under_test, repo, scratch)
    arm = skopeo.inspect(registry_under_test.docker_ref(repo, "v1"), "--override-arch", "arm64", "--override-os", "linux")
    # skopeo reports the digest of what the tag names (the index), and the
    # layers of the platform it picked from it.
    assert arm["Architecture"] == "arm64"
    assert arm["Digest"] == layout.digest
    assert arm["Layers"] == [layer.digest for layer in images[1].layers]


def test_inspect_and_list_tags(
    skopeo: Skopeo, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    image = make_image(repo, layers=2)
    layout = write_oci_layout(scratch / "layout", [image], "v1")
    for tag in ("v1", "v2", "latest"):
        skopeo.copy(layout.reference, registry_under_test.docker_ref(repo, tag))

    tags = skopeo.list_tags(f"docker://{registry_under_test.host}/{repo}")
    if registry_under_test.kind == "reference":
        tags = sorted(tags)  # Distribution 2.8 lists tags in directory order
    assert tags == ["latest", "v1", "v2"]
    info = skopeo.inspect(registry_under_test.docker_ref(repo, "v2"))
    assert info["Digest"] == layout.digest
    assert info["Layers"] == [layer.digest for layer in image.layers]
    assert info["Architecture"] == "amd64"
    assert info["Os"] == "linux"
    assert info["Labels"] == {"seed": repo}
    assert info["Name"] == f"{registry_under_test.host}/{repo}"

    config = json.loads(skopeo.run("inspect", "--tls-verify=false", "--config", "--raw",
                                   registry_under_test.docker_ref(repo, "v1")).stdout)
    assert config == json.loads(image.config)

    unknown = skopeo.run(
        "list-tags", "--tls-verify=false",
        f"docker://{registry_under_test.host}/{repo}/never-pushed", check=False,
    )  # fmt: skip
    assert unknown.returncode != 0
    response = registry_under_test.get(f"/v2/{repo}/never-pushed/tags/list")
    assert response.status == 404
    assert "NAME_UNKNOWN" in response.body.decode()


def test_delete_by_digest_removes_manifest_and_tag(
    skopeo: Skopeo, registry_under_test: Registry, repo: str, scratch: Path
) -> None:
    doomed = write_oci_layout(scratch / "doomed", [make_image(repo + "/doomed", layers=1)], "v1")
    kept = write_oci_layout(scratch / "kept", [make_image(repo + "/kept", layers=1)], "v1")
    skopeo.copy(doomed.reference, registry_under_test.docker_ref(repo, "doomed"))
    skopeo.copy(kept.reference, registry_under_test.docker_ref(repo, "kept"))
    assert registry_under_test.manifest(repo, doomed.digest).status == 200

    skopeo.delete(registry_under_test.docker_ref(repo, "doomed"))

    assert registry_under_test.manifest(repo, doomed.digest).status == 404
    assert registry_under_test.manifest(repo, "doomed").status == 404
    assert skopeo.list_tags(f"docker://{registry_under_test.host}/{repo}") == ["kept"]
    with pytest.raises(CommandFailed):
        skopeo.inspect(registry_under_test.docker_ref(repo, "doomed"))
    assert skopeo.inspect_raw(registry_under_test.docker_ref(repo, "kept")) == kept.manifest
    again = skopeo.delete(registry_under_test.docker_ref(repo, doomed.digest), check=False)
    assert again.returncode != 0
