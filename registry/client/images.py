"""Whole images between registries and OCI image layout directories.

* :func:`pull_image`: a manifest (an image, or an index with every child:
  multi-architecture images are copied whole) and all its blobs from a
  registry into an :class:`~registry.client.layout.OCILayout`.
* :func:`push_image`: the reverse.  Blobs the repository has already are not
  sent (``HEAD`` first), nor child manifests it has by digest.
* :func:`copy_image`: registry to registry; on one registry each blob is
  mounted (``?mount=&from=``) where the registry allows, without reading it;
  between registries through a temporary layout.

Blobs move in parallel, at most ``concurrency`` at a time; manifests are
written after every blob they reference, children before their index.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, DeferredSemaphore, FirstError, gatherResults
from zope.interface import Interface, implementer

from registry.client.blobs import FileSource, UploadOutcome
from registry.client.client import Manifest, RegistryClient, manifest_media_type, is_digest
from registry.client.consumers import FileConsumer
from registry.client.errors import DigestMismatch, ProtocolError
from registry.client.layout import LayoutError, OCILayout
from registry.digest import Digest, DigestError
from registry.manifest_types import DOCKER_FOREIGN_LAYER, OCI_NONDISTRIBUTABLE_PREFIX

DEFAULT_CONCURRENCY = 4


class ITransferProgress(Interface):
    """Told about each blob of a push or pull (a terminal display, a log)."""

    def started(digest: Digest, size: int) -> None:
        """A blob transfer begins."""

    def advanced(digest: Digest, count: int) -> None:
        """``count`` more bytes of the blob moved (negative after a restart)."""

    def finished(digest: Digest, outcome: str) -> None:
        """The blob is done: ``"copied"``, ``"exists"`` (skipped) or ``"mounted"``."""


@implementer(ITransferProgress)
class NoProgress:
    """Says nothing."""

    def started(self, digest: Digest, size: int) -> None:
        pass

    def advanced(self, digest: Digest, count: int) -> None:
        pass

    def finished(self, digest: Digest, outcome: str) -> None:
        pass


@dataclass(frozen=True)
class BlobRef:
    digest: Digest
    size: int
    media_type: str


def _descriptor(item: Any, where: str) -> BlobRef:
    if not isinstance(item, dict):
        raise ProtocolError(f"{where}: a descriptor is not an object")
    try:
        digest = Digest.parse(str(item.get("digest", "")))
    except DigestError as error:
        raise ProtocolError(f"{where}: {error}") from None
    size = item.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ProtocolError(f"{where}: descriptor {digest} has no valid size")
    return BlobRef(digest, size, str(item.get("mediaType", "")))


def _is_foreign(item: dict[str, Any]) -> bool:
    media_type = str(item.get("mediaType", ""))
    return bool(item.get("urls")) and (
        media_type == DOCKER_FOREIGN_LAYER or media_type.startswith(OCI_NONDISTRIBUTABLE_PREFIX)
    )


def references(manifest: Manifest) -> tuple[list[BlobRef], list[BlobRef]]:
    """``(child manifests, blobs)`` a manifest references (foreign layers left out). Pure."""
    document = manifest.json()
    where = f"manifest {manifest.digest}"
    if not isinstance(document, dict):
        raise ProtocolError(f"{where} is not a JSON object")
    if manifest.is_index:
        return [_descriptor(item, where) for item in document.get("manifests") or []], []
    blobs = []
    if "config" in document:
        blobs.append(_descriptor(document["config"], where))
    for item in document.get("layers") or []:
        if isinstance(item, dict) and _is_foreign(item):
            continue
        blobs.append(_descriptor(item, where))
    return [], blobs


async def _in_parallel(concurrency: int, jobs: list[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` at most ``concurrency`` at a time; the first failure is raised
    (after the running ones end)."""
    semaphore = DeferredSemaphore(max(1, concurrency))

    def run(job: Callable[[], Awaitable[None]]) -> Deferred[None]:
        async def call() -> None:
            await job()

        return semaphore.run(lambda: Deferred.fromCoroutine(call()))

    try:
        await gatherResults([run(job) for job in jobs], consumeErrors=True)
    except FirstError as error:
        error.subFailure.raiseException()


async def _walk_remote(
    client: RegistryClient, name: str, manifest: Manifest,
    manifests: list[Manifest], blobs: dict[Digest, BlobRef], depth: int = 0,
) -> None:
    if depth > 4:
        raise ProtocolError(f"manifest {manifest.digest}: indexes nested too deeply")
    children, own_blobs = references(manifest)
    for child in children:
        fetched = await client.get_manifest(name, str(child.digest))
        if len(fetched.body) != child.size:
            raise DigestMismatch(f"manifest {child.digest}: {len(fetched.body)} bytes, the index says {child.size}")
        await _walk_remote(client, name, fetched, manifests, blobs, depth + 1)
    for blob in own_blobs:
        blobs.setdefault(blob.digest, blob)
    manifests.append(manifest)


async def pull_image(
    client: RegistryClient,
    name: str,
    reference: str,
    layout: OCILayout,
    *,
    tag: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ITransferProgress | None = None,
) -> Manifest:
    """Copy ``name:reference`` (tag or digest) into ``layout`` under ``tag``
    (default: ``reference`` when it is a tag). Fires with the top manifest.

    Blobs already in the layout (right size) are not downloaded; each blob
    is verified as it streams and only renamed into place when complete.
    """
    report = progress or NoProgress()
    layout.create()
    top = await client.get_manifest(name, reference)
    manifests: list[Manifest] = []
    blobs: dict[Digest, BlobRef] = {}
    await _walk_remote(client, name, top, manifests, blobs)
    reactor = client.reactor

    def fetch(blob: BlobRef) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if layout.has_blob(blob.digest, blob.size):
                report.finished(blob.digest, "exists")
                return
            report.started(blob.digest, blob.size)
            consumer = FileConsumer(reactor, reactor.getThreadPool(), layout.blob_path(blob.digest))
            try:
                await client.fetch_blob(
                    name, blob.digest, consumer, size=blob.size,
                    progress=lambda count: report.advanced(blob.digest, count),
                )
            except BaseException as failure:
                await consumer.discard()
                if consumer.error is not None:  # the disk, not the network, stopped it
                    raise consumer.error from failure
                raise
            await consumer.commit()
            report.finished(blob.digest, "copied")

        return job

    await _in_parallel(concurrency, [fetch(blob) for blob in blobs.values()])
    for manifest in manifests:
        layout.write_blob(manifest.body)
    if tag is None and not is_digest(reference):
        tag = reference
    layout.set_tag({"mediaType": top.media_type, "digest": str(top.digest), "size": len(top.body)}, tag)
    return top


def _walk_local(
    layout: OCILayout, manifest: Manifest, manifests: list[Manifest], blobs: dict[Digest, BlobRef], depth: int = 0
) -> None:
    if depth > 4:
        raise LayoutError(f"manifest {manifest.digest}: indexes nested too deeply")
    children, own_blobs = references(manifest)
    for child in children:
        body = layout.read_blob(child.digest)
        media_type = child.media_type or manifest_media_type(None, body)
        _walk_local(layout, Manifest(media_type, child.digest, body), manifests, blobs, depth + 1)
    for blob in own_blobs:
        if not layout.has_blob(blob.digest, blob.size):
            raise LayoutError(f"{layout.path} lacks blob {blob.digest} ({blob.size} bytes) of manifest {manifest.digest}")
        blobs.setdefault(blob.digest, blob)
    manifests.append(manifest)


def local_manifest(layout: OCILayout, tag: str | None) -> Manifest:
    """The manifest that ``tag`` names in ``layout`` (the only one when None)."""
    descriptor = layout.resolve(tag)
    digest = Digest.parse(str(descriptor["digest"]))
    body = layout.read_blob(digest)
    media_type = str(descriptor.get("mediaType") or "") or manifest_media_type(None, body)
    return Manifest(media_type, digest, body)


async def push_image(
    client: RegistryClient,
    layout: OCILayout,
    layout_tag: str | None,
    name: str,
    reference: str | None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    mount_from: str | None = None,
    progress: ITransferProgress | None = None,
) -> Manifest:
    """Push the image ``layout_tag`` of ``layout`` to ``name``, tagged
    ``reference`` (by digest when None). Fires with the top manifest.

    Blobs the repository has are skipped; with ``mount_from`` others are
    mounted from that repository of the same registry when possible.
    """
    report = progress or NoProgress()
    top = local_manifest(layout, layout_tag)
    manifests: list[Manifest] = []
    blobs: dict[Digest, BlobRef] = {}
    _walk_local(layout, top, manifests, blobs)

    def send(blob: BlobRef) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if await client.blob_size(name, blob.digest) is not None:
                report.finished(blob.digest, "exists")
                return
            report.started(blob.digest, blob.size)
            outcome = await client.push_blob(
                name, blob.digest, FileSource(layout.blob_path(blob.digest), blob.size),
                mount_from=mount_from, check_exists=False,
                progress=lambda count: report.advanced(blob.digest, count),
            )
            report.finished(blob.digest, "mounted" if outcome is UploadOutcome.MOUNTED else "copied")

        return job

    await _in_parallel(concurrency, [send(blob) for blob in blobs.values()])
    for manifest in manifests[:-1]:
        if await client.head_manifest(name, str(manifest.digest)) is None:
            await client.put_manifest(name, str(manifest.digest), manifest.body, manifest.media_type)
    await client.put_manifest(name, reference or str(top.digest), top.body, top.media_type)
    return top


async def copy_image(
    source: RegistryClient,
    source_name: str,
    source_reference: str,
    destination: RegistryClient,
    destination_name: str,
    destination_reference: str | None,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: ITransferProgress | None = None,
    workdir: Path | None = None,
) -> Manifest:
    """Registry to registry; fires with the top manifest.

    On one registry, each blob the destination lacks is mounted from the
    source repository, and only blobs the registry refuses to mount travel
    (through a temporary file).  Between registries the image goes through
    a temporary OCI layout.  Both are removed afterwards.
    ``destination_reference`` None keeps the source tag (by digest for a digest).
    """
    if destination_reference is None and not is_digest(source_reference):
        destination_reference = source_reference
    with tempfile.TemporaryDirectory(prefix="registry-client-", dir=workdir) as directory:
        if source.host == destination.host:
            return await _copy_within(
                source, source_name, source_reference, destination, destination_name, destination_reference,
                concurrency, progress or NoProgress(), Path(directory),
            )
        layout = OCILayout(Path(directory))
        await pull_image(source, source_name, source_reference, layout, tag="copy", concurrency=concurrency,
                         progress=progress)
        return await push_image(
            destination, layout, "copy", destination_name, destination_reference,
            concurrency=concurrency, progress=progress,
        )


async def _copy_within(
    source: RegistryClient, source_name: str, source_reference: str,
    destination: RegistryClient, destination_name: str, destination_reference: str | None,
    concurrency: int, report: ITransferProgress, directory: Path,
) -> Manifest:
    top = await source.get_manifest(source_name, source_reference)
    manifests: list[Manifest] = []
    blobs: dict[Digest, BlobRef] = {}
    await _walk_remote(source, source_name, top, manifests, blobs)
    reactor = source.reactor

    def move(blob: BlobRef) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            if await destination.blob_size(destination_name, blob.digest) is not None:
                report.finished(blob.digest, "exists")
                return
            if await destination.mount_blob(destination_name, blob.digest, source_name):
                report.finished(blob.digest, "mounted")
                return
            report.started(blob.digest, blob.size)
            path = directory / blob.digest.hex
            consumer = FileConsumer(reactor, reactor.getThreadPool(), path)
            try:
                await source.fetch_blob(source_name, blob.digest, consumer, size=blob.size)
            except BaseException:
                await consumer.discard()
                raise
            await consumer.commit()
            await destination.push_blob(
                destination_name, blob.digest, FileSource(path, blob.size), check_exists=False,
                progress=lambda count: report.advanced(blob.digest, count),
            )
            report.finished(blob.digest, "copied")

        return job

    await _in_parallel(concurrency, [move(blob) for blob in blobs.values()])
    for manifest in manifests[:-1]:
        if await destination.head_manifest(destination_name, str(manifest.digest)) is None:
            await destination.put_manifest(destination_name, str(manifest.digest), manifest.body, manifest.media_type)
    await destination.put_manifest(destination_name, destination_reference or str(top.digest), top.body, top.media_type)
    return top


__all__ = [
    "DEFAULT_CONCURRENCY",
    "ITransferProgress",
    "NoProgress",
    "copy_image",
    "local_manifest",
    "pull_image",
    "push_image",
    "references",
]

