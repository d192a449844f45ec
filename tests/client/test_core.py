"""RegistryClient against real registries: ping, blobs, manifests, listings, errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from registry.client import (
    BytesConsumer,
    BytesSource,
    DeleteOutcome,
    DigestMismatch,
    FileConsumer,
    FileSource,
    RegistryClient,
    UploadOutcome,
    UploadSettings,
)
from registry.client.errors import BlobUnknown, ManifestBlobUnknown, ManifestUnknown, NameInvalid, RegistryAPIError
from registry.digest import sha256_digest
from registry.manifest_types import OCI_INDEX, OCI_MANIFEST
from tests.clients.harness import Registry

CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar"


def manifest_for(config: bytes, layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": CONFIG_TYPE, "digest": str(sha256_digest(config)), "size": len(config)},
            "layers": [
                {"mediaType": LAYER_TYPE, "digest": str(sha256_digest(layer)), "size": len(layer)} for layer in layers
            ],
        }
    ).encode()


async def push_image(client: RegistryClient, repo: str, tag: str, seed: bytes) -> tuple[bytes, bytes, bytes]:
    config = b'{"architecture":"amd64","os":"linux","seed":"' + seed + b'"}'
    layer = seed * 1000
    for blob in (config, layer):
        await client.push_blob(repo, sha256_digest(blob), BytesSource(blob))
    manifest = manifest_for(config, [layer])
    await client.put_manifest(repo, tag, manifest, OCI_MANIFEST)
    return config, layer, manifest


@pytest_twisted.ensureDeferred
async def test_ping(client: RegistryClient) -> None:
    assert await client.ping() == "registry/2.0"


@pytest_twisted.ensureDeferred
async def test_blob_round_trip_monolithic_and_chunked(client: RegistryClient, repo: str, tmp_path: Path) -> None:
    small = os.urandom(10_000)
    big = os.urandom(300_000 + 17)
    client.upload_settings = UploadSettings(monolithic_max=64 * 1024, chunk_size=100_000)
    assert await client.blob_size(repo, sha256_digest(small)) is None
    assert await client.push_blob(repo, sha256_digest(small), BytesSource(small)) is UploadOutcome.UPLOADED
    path = tmp_path / "big"
    path.write_bytes(big)
    ticks: list[int] = []
    outcome = await client.push_blob(repo, sha256_digest(big), FileSource(path), progress=ticks.append)
    assert outcome is UploadOutcome.UPLOADED
    assert ticks == [100_000, 100_000, 100_000, 17]
    # nothing re-sent that exists
    assert await client.push_blob(repo, sha256_digest(big), FileSource(path)) is UploadOutcome.EXISTS
    assert await client.blob_size(repo, sha256_digest(big)) == len(big)

    assert await client.read_blob(repo, sha256_digest(small)) == small
    target = tmp_path / "out" / "big"
    consumer = FileConsumer(reactor, reactor.getThreadPool(), target, high_water=64 * 1024)
    size = await client.fetch_blob(repo, sha256_digest(big), consumer)
    await consumer.commit()
    assert size == len(big)
    assert target.read_bytes() == big
    assert not consumer.partial.exists()


@pytest_twisted.ensureDeferred
async def test_blob_unknown_is_typed(client: RegistryClient, repo: str) -> None:
    await client.push_blob(repo, sha256_digest(b"x"), BytesSource(b"x"))
    with pytest.raises(BlobUnknown) as caught:
        await client.read_blob(repo, sha256_digest(b"missing"))
    assert caught.value.status == 404
    assert caught.value.code == "BLOB_UNKNOWN"
    assert "BLOB_UNKNOWN" in str(caught.value)


@pytest_twisted.ensureDeferred
async def test_upload_with_wrong_digest_is_refused(client: RegistryClient, repo: str) -> None:
    with pytest.raises(RegistryAPIError) as caught:
        await client.push_blob(repo, sha256_digest(b"claimed"), BytesSource(b"actual"))
    assert caught.value.code == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_download_verifies_the_digest(client: RegistryClient, repo: str) -> None:
    """The size check and the digest check both fail a wrong expectation."""
    data = os.urandom(5000)
    await client.push_blob(repo, sha256_digest(data), BytesSource(data))
    consumer = BytesConsumer()
    with pytest.raises(DigestMismatch):
        await client.fetch_blob(repo, sha256_digest(data), consumer, size=4999)
    consumer = BytesConsumer()
    with pytest.raises(DigestMismatch):
        await client.fetch_blob(repo, sha256_digest(data), consumer, size=5001)


@pytest_twisted.ensureDeferred
async def test_manifest_get_head_put_delete(client: RegistryClient, repo: str) -> None:
    config, layer, manifest = await push_image(client, repo, "v1", b"a")
    got = await client.get_manifest(repo, "v1")
    assert got.body == manifest
    assert got.media_type == OCI_MANIFEST
    assert got.digest == sha256_digest(manifest)
    by_digest = await client.get_manifest(repo, str(got.digest))
    assert by_digest == got
    info = await client.head_manifest(repo, "v1")
    assert info is not None and info.digest == got.digest and info.size == len(manifest)
    assert await client.head_manifest(repo, "nope") is None
    with pytest.raises(ManifestUnknown):
        await client.get_manifest(repo, "nope")
    await client.delete_manifest(repo, got.digest)
    with pytest.raises(ManifestUnknown):
        await client.get_manifest(repo, str(got.digest))


@pytest_twisted.ensureDeferred
async def test_manifest_with_missing_blob_is_typed(client: RegistryClient, repo: str) -> None:
    manifest = manifest_for(b"{}", [b"not pushed"])
    with pytest.raises(RegistryAPIError) as caught:
        await client.put_manifest(repo, "broken", manifest, OCI_MANIFEST)
    assert caught.value.code in ("MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN")
    assert isinstance(caught.value, (ManifestBlobUnknown, BlobUnknown))


@pytest_twisted.ensureDeferred
async def test_invalid_name_is_typed(client: RegistryClient, registry: Registry) -> None:
    if registry.kind == "reference":
        pytest.skip("Distribution's router answers a plain-text 404 for names it cannot route")
    with pytest.raises(NameInvalid):
        await client.push_blob("Bad--Name", sha256_digest(b"x"), BytesSource(b"x"), check_exists=False)


@pytest_twisted.ensureDeferred
async def test_tags_and_catalog_follow_pagination(client: RegistryClient, repo: str) -> None:
    _, _, manifest = await push_image(client, repo, "t0", b"p")
    for index in range(1, 7):
        await client.put_manifest(repo, f"t{index}", manifest, OCI_MANIFEST)
    all_tags = [f"t{index}" for index in range(7)]
    assert sorted(await client.tags(repo)) == all_tags
    assert sorted(await client.tags(repo, page_size=2)) == all_tags
    other = repo + "-other"
    await push_image(client, other, "x", b"q")
    names = await client.catalog(page_size=1)
    assert repo in names and other in names
    assert names == sorted(set(names))


@pytest_twisted.ensureDeferred
async def test_delete_by_tag(client: RegistryClient, registry: Registry, repo: str) -> None:
    _, _, manifest = await push_image(client, repo, "keep", b"d")
    await client.put_manifest(repo, "drop", manifest, OCI_MANIFEST)
    outcome, digest = await client.delete(repo, "drop")
    if registry.kind == "ours":
        # Our registry removes only the tag.
        assert outcome is DeleteOutcome.TAG_REMOVED and digest is None
        assert sorted(await client.tags(repo)) == ["keep"]
        assert (await client.get_manifest(repo, "keep")).body == manifest
    else:
        # Distribution 2.8 cannot untag: the manifest goes, with every tag.
        assert outcome is DeleteOutcome.MANIFEST_DELETED and digest == sha256_digest(manifest)
        assert await client.head_manifest(repo, "keep") is None
    with pytest.raises(ManifestUnknown):
        await client.delete(repo, "never-was")


@pytest_twisted.ensureDeferred
async def test_cross_repository_mount(client: RegistryClient, repo: str) -> None:
    data = os.urandom(20_000)
    digest = sha256_digest(data)
    await client.push_blob(repo, digest, BytesSource(data))
    target = repo + "-mounted"
    outcome = await client.push_blob(target, digest, BytesSource(data), mount_from=repo)
    assert outcome is UploadOutcome.MOUNTED
    assert await client.read_blob(target, digest) == data
    # mount only: refused (the source lacks it), the started upload is cancelled
    assert await client.mount_blob(target + "-2", sha256_digest(b"absent"), repo) is False
    assert await client.mount_blob(target + "-2", digest, repo) is True
    # a source repository without the blob: the registry starts an upload instead
    other = os.urandom(1000)
    outcome = await client.push_blob(target, sha256_digest(other), BytesSource(other), mount_from=repo + "-none")
    assert outcome is UploadOutcome.UPLOADED
    assert await client.read_blob(target, sha256_digest(other)) == other


@pytest_twisted.ensureDeferred
async def test_referrers(client: RegistryClient, registry: Registry, repo: str) -> None:
    config, layer, manifest = await push_image(client, repo, "subject", b"r")
    subject = sha256_digest(manifest)
    empty = b"{}"
    await client.push_blob(repo, sha256_digest(empty), BytesSource(empty))
    artifact = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.sbom",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(sha256_digest(empty)), "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(sha256_digest(empty)), "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": len(manifest)},
        }
    ).encode()
    artifact_digest = await client.put_manifest(repo, str(sha256_digest(artifact)), artifact, OCI_MANIFEST)
    index = await client.referrers(repo, subject)
    if registry.kind == "ours":
        assert [m["digest"] for m in index["manifests"]] == [str(artifact_digest)]
        filtered = await client.referrers(repo, subject, artifact_type="application/vnd.other")
        assert filtered["manifests"] == []
    else:
        # No referrers API and no fallback tag pushed: an empty index.
        assert index["manifests"] == []
    assert index["mediaType"] == OCI_INDEX


@pytest_twisted.ensureDeferred
async def test_docker_media_types_come_back_as_pushed(client: RegistryClient, repo: str) -> None:
    """The Accept list names every manifest type: a Docker manifest list and
    a Docker image manifest come back byte for byte, by tag and by digest
    (Distribution rewrites a manifest list to one image for a client that
    does not accept lists)."""
    from registry.client import MANIFEST_MEDIA_TYPES
    from registry.manifest_types import DOCKER_LIST, DOCKER_MANIFEST

    assert set(MANIFEST_MEDIA_TYPES) == {OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST}
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    layer = os.urandom(2048)
    for blob in (config, layer):
        await client.push_blob(repo, sha256_digest(blob), BytesSource(blob))
    image = json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": str(sha256_digest(config)), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": str(sha256_digest(layer)), "size": len(layer)}],
    }).encode()
    image_digest = await client.put_manifest(repo, "image", image, DOCKER_MANIFEST)
    listing = json.dumps({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "digest": str(image_digest), "size": len(image),
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    }).encode()
    list_digest = await client.put_manifest(repo, "list", listing, DOCKER_LIST)
    for reference, body, media_type in (("image", image, DOCKER_MANIFEST), ("list", listing, DOCKER_LIST),
                                        (str(list_digest), listing, DOCKER_LIST)):
        got = await client.get_manifest(repo, reference)
        assert (got.body, got.media_type) == (body, media_type), reference
    info = await client.head_manifest(repo, "list")
    assert info is not None and info.digest == list_digest and info.media_type == DOCKER_LIST


@pytest_twisted.ensureDeferred
async def test_referrers_by_api_or_fallback_tag(client: RegistryClient, repo: str) -> None:
    """An artifact whose subject is an image, with the referrers tag schema's
    ``sha256-<hex>`` index pushed too (what clients do for registries
    without the API): ours answers from its referrers API, Distribution
    2.8.2 (no API) from the fallback tag; the artifactType filter holds in both."""
    _, _, manifest = await push_image(client, repo, "subject", b"f")
    subject = sha256_digest(manifest)
    empty = b"{}"
    await client.push_blob(repo, sha256_digest(empty), BytesSource(empty))
    sbom = "application/vnd.example.sbom"
    artifact = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": sbom,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(sha256_digest(empty)), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(sha256_digest(empty)), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": str(subject), "size": len(manifest)},
    }).encode()
    artifact_digest = await client.put_manifest(repo, str(sha256_digest(artifact)), artifact, OCI_MANIFEST)
    fallback = json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(artifact_digest), "size": len(artifact), "artifactType": sbom}],
    }).encode()
    await client.put_manifest(repo, f"sha256-{subject.hex}", fallback, OCI_INDEX)
    index = await client.referrers(repo, subject)
    assert [m["digest"] for m in index["manifests"]] == [str(artifact_digest)]
    assert [m["digest"] for m in (await client.referrers(repo, subject, artifact_type=sbom))["manifests"]] == [str(artifact_digest)]
    assert (await client.referrers(repo, subject, artifact_type="application/vnd.other"))["manifests"] == []
