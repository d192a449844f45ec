"""Whole images: OCI layout -> registry -> OCI layout, multi-arch, nothing re-sent, copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface import implementer
from zope.interface.verify import verifyObject

from registry.client import ClientError, RegistryClient
from registry.client.images import ITransferProgress, copy_image, pull_image, push_image
from registry.client.layout import OCILayout
from registry.digest import Digest
from tests.clients.harness import MEDIA_OCI_INDEX, Registry, make_image, write_oci_layout


@implementer(ITransferProgress)
class Recorder:
    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}
        self.bytes: dict[str, int] = {}

    def started(self, digest: Digest, size: int) -> None:
        self.bytes[str(digest)] = 0

    def advanced(self, digest: Digest, count: int) -> None:
        self.bytes[str(digest)] += count

    def finished(self, digest: Digest, outcome: str) -> None:
        self.outcomes[str(digest)] = outcome


def layout_files(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in (path / "blobs").rglob("*")
        if p.is_file()
    }


@pytest_twisted.ensureDeferred
async def test_multi_arch_push_and_pull_round_trip(
    client: RegistryClient, registry: Registry, repo: str, tmp_path: Path
) -> None:
    images = [make_image("multi", architecture=arch, layers=2, layer_size=32 * 1024) for arch in ("amd64", "arm64")]
    written = write_oci_layout(tmp_path / "src", images, "v1")
    assert written.media_type == MEDIA_OCI_INDEX
    progress = Recorder()
    verifyObject(ITransferProgress, progress)
    top = await push_image(client, OCILayout(written.path), "v1", repo, "v1", concurrency=3, progress=progress)
    assert str(top.digest) == written.digest
    # The registry serves the index byte for byte, and each child by digest.
    assert registry.manifest(repo, "v1").body == written.manifest
    for child in written.children.values():
        assert registry.manifest(repo, "sha256:" + __import__("hashlib").sha256(child).hexdigest()).status == 200
    blob_count = len({layer.digest for image in images for layer in image.layers} | {i.config_digest for i in images})
    assert len(progress.outcomes) == blob_count
    assert set(progress.outcomes.values()) == {"copied"}
    for digest, size in progress.bytes.items():
        assert size == len(registry.blob(repo, digest))

    # Pushing again sends no blob.
    again = Recorder()
    await push_image(client, OCILayout(written.path), "v1", repo, "v1", progress=again)
    assert set(again.outcomes.values()) == {"exists"}
    assert again.bytes == {}

    # Pull into a fresh layout: the same blobs, the index whole, tagged.
    pulled = OCILayout(tmp_path / "dst")
    got = await pull_image(client, repo, "v1", pulled, concurrency=2)
    assert got.digest == top.digest
    assert layout_files(pulled.path) == layout_files(written.path)
    entry = pulled.resolve("v1")
    assert entry["digest"] == written.digest and entry["mediaType"] == MEDIA_OCI_INDEX
    assert json.loads((pulled.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    # A second pull into it downloads nothing.
    second = Recorder()
    await pull_image(client, repo, str(top.digest), pulled, tag="by-digest", progress=second)
    assert set(second.outcomes.values()) == {"exists"}
    assert pulled.resolve("by-digest")["digest"] == written.digest
    assert pulled.resolve("v1")["digest"] == written.digest


@pytest_twisted.ensureDeferred
async def test_copy_between_repositories_mounts(client: RegistryClient, registry: Registry, repo: str, tmp_path: Path) -> None:
    image = make_image("copy", layers=2, layer_size=16 * 1024)
    written = write_oci_layout(tmp_path / "src", [image], "latest")
    await push_image(client, OCILayout(written.path), None, repo, "latest")
    progress = Recorder()
    top = await copy_image(client, repo, "latest", client, repo + "-copy", "copied", progress=progress,
                           workdir=tmp_path)
    assert str(top.digest) == written.digest
    assert registry.manifest(repo + "-copy", "copied").body == written.manifest
    # every blob was mounted from the source repository (same registry)
    assert set(progress.outcomes.values()) == {"mounted"}
    assert len(progress.outcomes) == 3


@pytest_twisted.ensureDeferred
async def test_copy_between_registries(ours: Registry, tmp_path: Path, repo: str) -> None:
    """Our registry to a second instance of it (a different host:port)."""
    from tests.clients.harness import start_our_registry

    other = start_our_registry(tmp_path / "second")
    source = RegistryClient(ours.host)
    target = RegistryClient(other.host)
    try:
        image = make_image("between", layers=1, layer_size=8 * 1024)
        written = write_oci_layout(tmp_path / "src", [image], "t")
        await push_image(source, OCILayout(written.path), "t", repo, "t")
        top = await copy_image(source, repo, "t", target, "moved/here", None, workdir=tmp_path)
        assert str(top.digest) == written.digest
        assert other.manifest("moved/here", "t").body == written.manifest
        assert other.blob("moved/here", image.layers[0].digest) == image.layers[0].gzipped
    finally:
        await source.close()
        await target.close()
        other.stop()


@pytest_twisted.ensureDeferred
async def test_pull_reports_a_write_failure(
    client: RegistryClient, registry: Registry, repo: str, tmp_path: Path
) -> None:
    image = make_image("unwritable", layers=1, layer_size=8 * 1024)
    written = write_oci_layout(tmp_path / "src", [image], "t")
    await push_image(client, OCILayout(written.path), "t", repo, "t")
    target = OCILayout(tmp_path / "dst")
    target.create()
    # the config's .partial name is taken by a directory: it cannot be opened
    config_path = target.blob_path(Digest.parse(image.config_digest))
    config_path.with_name(config_path.name + ".partial").mkdir(parents=True)
    with pytest.raises(ClientError) as caught:
        await pull_image(client, repo, "t", target, concurrency=1)
    assert str(caught.value).startswith("writing ") and "Is a directory" in str(caught.value)
    assert not config_path.exists()
    assert json.loads((target.path / "index.json").read_text())["manifests"] == []


class NeverMounts(RegistryClient):
    """A client of the same registry that acts as if every mount were refused."""

    async def mount_blob(self, name: str, digest: Digest, source_name: str) -> bool:
        self.refused = getattr(self, "refused", 0) + 1
        return False


@pytest_twisted.ensureDeferred
async def test_copy_within_a_registry_falls_back_when_mount_is_refused(
    client: RegistryClient, registry: Registry, repo: str, tmp_path: Path
) -> None:
    image = make_image("nomount", layers=2, layer_size=16 * 1024)
    written = write_oci_layout(tmp_path / "src", [image], "t")
    await push_image(client, OCILayout(written.path), None, repo, "t")
    destination = NeverMounts(registry.host)
    progress = Recorder()
    try:
        top = await copy_image(client, repo, "t", destination, repo + "-fallback", None, progress=progress,
                               workdir=tmp_path)
    finally:
        await destination.close()
    assert str(top.digest) == written.digest
    assert destination.refused == 3
    assert set(progress.outcomes.values()) == {"copied"}
    assert registry.manifest(repo + "-fallback", "t").body == written.manifest
    assert registry.blob(repo + "-fallback", image.layers[1].digest) == image.layers[1].gzipped
    assert list(tmp_path.glob("registry-client-*")) == []  # the temporary directory is gone


@implementer(ITransferProgress)
class InFlight:
    """Counts blobs between ``started`` and ``finished``; keeps the peak."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self.done = 0

    def started(self, digest: Digest, size: int) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def advanced(self, digest: Digest, count: int) -> None:
        pass

    def finished(self, digest: Digest, outcome: str) -> None:
        if outcome == "copied":
            self.now -= 1
        self.done += 1


@pytest_twisted.ensureDeferred
async def test_blobs_move_in_parallel_within_the_bound(
    client: RegistryClient, repo: str, tmp_path: Path
) -> None:
    image = make_image("bounded", layers=7, layer_size=128 * 1024)
    written = write_oci_layout(tmp_path / "src", [image], "v1")
    pushing = InFlight()
    await push_image(client, OCILayout(written.path), "v1", repo, "v1", concurrency=3, progress=pushing)
    assert pushing.done == 8 and pushing.now == 0
    assert pushing.peak == 3  # in parallel, never more than asked
    pulling = InFlight()
    await pull_image(client, repo, "v1", OCILayout(tmp_path / "dst"), concurrency=2, progress=pulling)
    assert pulling.done == 8 and pulling.now == 0
    assert pulling.peak == 2
