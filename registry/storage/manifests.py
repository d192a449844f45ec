"""Manifests and the referrers index, in Distribution's layout.

A manifest's bytes are stored as a blob (``blobs/<alg>/<xx>/<hex>/data``)
and made part of a repository by ``_manifests/revisions/<alg>/<hex>/link``.
A manifest with a ``subject`` is also recorded under
``_referrers/<subject alg>/<subject hex>/<alg>/<hex>/link`` (this registry's
referrers index; Distribution ignores the directory).

Every check runs before the first write, so a refused manifest changes
nothing (except when a garbage collection in another process removes a
referenced blob between the check and the write: then the PUT undoes its
writes and is refused, see ``ManifestStore._settle`` and
``registry.storage.fence``). The OCI empty descriptor's blob (``{}``,
``sha256:44136fa3...``) is the one exception to "every referenced blob must
already be in the repository": its content is fixed, so a manifest that
references it with size 2 is accepted and the blob is stored and linked
with the manifest (clients that GET the config blob then find it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from registry.digest import Digest, DigestError
from registry.manifest_types import (
    OCI_EMPTY_CONTENT,
    OCI_EMPTY_DIGEST,
    Manifest,
    ManifestError,
    media_type_of,
    parse_manifest,
)
from registry.storage import paths
from registry.storage.blobs import link_content, parse_link
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown, ManifestBlobUnknown, ManifestInvalid, ManifestUnknown
from registry.storage.fence import wait_clear
from registry.storage.interfaces import IBlobStore, IManifestStore, ITagStore
from registry.storage.verify import ILayerVerifier

if TYPE_CHECKING:
    from registry.storage.cache import ContentCache

#: How often a manifest PUT restores what a concurrent sweep removed before
#: giving up with ``ManifestBlobUnknown``.
SETTLE_ATTEMPTS = 5


async def _exists(driver: IStorageDriver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFoundError:
        return False
    return True


async def _delete_quietly(driver: IStorageDriver, path: str) -> None:
    try:
        await driver.delete(path)
    except PathNotFoundError:
        pass


@implementer(IManifestStore)
class ManifestStore:
    """Stores, reads and deletes manifests of repositories through a driver;
    manifest bytes are blobs of ``blobs``, tags those of ``tags`` (the data
    model passes its own, so wrappers around them see these uses too).
    ``verifier`` (``validation.manifests.verifylayers``) checks an image's
    layers against its config before anything is written."""

    def __init__(
        self,
        driver: IStorageDriver,
        blobs: IBlobStore,
        tags: ITagStore,
        verifier: ILayerVerifier | None = None,
        *,
        cache: ContentCache | None = None,
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.tags = tags
        self.verifier = verifier
        #: Manifest bytes by digest and revision links, kept in this process
        #: (``registry.storage.cache.ContentCache``; None: not kept). Write
        #: paths (``_settle``) ask the driver, never this.
        self.cache = cache

    async def exists(self, name: str, d: Digest) -> bool:
        """True if manifest ``d`` is a revision of repository ``name``."""
        cache = self.cache
        if cache is not None:
            if cache.get(("revision", name, d)) is not None:
                return True
            token = cache.token()
        try:
            await self.driver.stat(paths.manifest_revision_link(name, d))
        except PathNotFoundError:
            return False
        if cache is not None:
            cache.put(("revision", name, d), True, token)
        return True

    async def get(self, name: str, d: Digest) -> bytes:
        """Fire with the exact bytes of manifest ``d`` of ``name``; fails with
        ``ManifestUnknown`` if it is not a revision there or its blob is gone."""
        if not await self.exists(name, d):
            raise ManifestUnknown(name, str(d))
        cache = self.cache
        if cache is not None:
            body = cache.get(("manifest", d))
            if body is not None:
                return body
            token = cache.token()
        try:
            body = await self.blobs.get_content(d)
        except BlobUnknown:
            raise ManifestUnknown(name, str(d)) from None
        if cache is not None:
            cache.put(("manifest", d), body, token)
        return body

    async def _check_references(self, name: str, manifest: Manifest) -> bool:
        """Raise unless every blob and child ``manifest`` names is in ``name``.
        Returns True when the empty blob must be stored with the manifest."""
        descriptors = self.blobs.descriptors
        store_empty = False
        missing: list[Digest] = []
        for desc in manifest.blobs:
            linked = await descriptors.is_linked(name, desc.digest)
            size = await descriptors.size(desc.digest) if linked else None
            if size is None:
                if desc.digest == OCI_EMPTY_DIGEST and desc.size == len(OCI_EMPTY_CONTENT):
                    store_empty = True
                    continue
                missing.append(desc.digest)
            elif size != desc.size:
                raise ManifestInvalid(
                    f"the descriptor of blob {desc.digest} says size {desc.size}, "
                    f"but the blob in the repository is {size} bytes"
                )
        if missing:
            raise ManifestBlobUnknown(name, list(dict.fromkeys(missing)), "blob")
        missing_children = [c.digest for c in manifest.children if not await self.exists(name, c.digest)]
        if missing_children:
            raise ManifestBlobUnknown(name, list(dict.fromkeys(missing_children)), "manifest")
        return store_empty

    async def put(self, name: str, body: bytes, manifest: Manifest, d: Digest, tag: str | None = None) -> None:
        """Store the validated ``manifest`` (``body`` with digest ``d``) in
        ``name``, tagging it ``tag`` if given. Fails with
        ``ManifestBlobUnknown`` / ``ManifestInvalid`` before writing anything,
        or with ``ManifestBlobUnknown`` after undoing its writes when a
        garbage collection running concurrently removed a referenced blob
        (see ``_settle``)."""
        store_empty = await self._check_references(name, manifest)
        if self.verifier is not None:
            await self.verifier.verify(name, manifest)
        if store_empty:
            await self.blobs.put_content(OCI_EMPTY_DIGEST, OCI_EMPTY_CONTENT)
            await self.blobs.descriptors.link(name, OCI_EMPTY_DIGEST)
        await self._write(name, body, manifest, d, tag)
        await self._settle(name, body, manifest, d, tag)

    async def _write(self, name: str, body: bytes, manifest: Manifest, d: Digest, tag: str | None) -> None:
        await self.blobs.put_content(d, body)
        await self.driver.put_content(paths.manifest_revision_link(name, d), link_content(d))
        if manifest.subject is not None:
            await self.driver.put_content(paths.referrer_link(name, manifest.subject.digest, d), link_content(d))
        if tag is not None:
            await self.tags.tag(name, tag, d)

    async def _settle(self, name: str, body: bytes, manifest: Manifest, d: Digest, tag: str | None) -> None:
        """The writer's half of the sweep-fence handshake
        (``registry.storage.fence``): the revision link is written; now wait
        for any sweep of a digest this manifest depends on, then verify with
        the driver (not a cache) that all of it still exists. What this PUT
        can restore itself (its own bytes, revision, a layer link to a blob
        whose data is there) is written again and checked again; a blob or
        child manifest that is gone makes the PUT fail with
        ``ManifestBlobUnknown`` after removing its revision, so the client
        pushes them again. A success therefore never leaves a reference to
        something a concurrent collection deleted."""
        driver = self.driver
        blob_digests = [desc.digest for desc in manifest.blobs]
        child_digests = [c.digest for c in manifest.children]
        for _ in range(SETTLE_ATTEMPTS):
            await wait_clear(driver, [d, *blob_digests, *child_digests])
            missing_blobs = [b for b in blob_digests if not await _exists(driver, paths.blob_data(b))]
            if OCI_EMPTY_DIGEST in missing_blobs:
                await self.blobs.put_content(OCI_EMPTY_DIGEST, OCI_EMPTY_CONTENT)
                missing_blobs.remove(OCI_EMPTY_DIGEST)
            missing_children = [
                c for c in child_digests if not await _exists(driver, paths.manifest_revision_link(name, c))
            ]
            if missing_blobs or missing_children:
                await self._undo(name, manifest, d, tag)
                if missing_blobs:
                    raise ManifestBlobUnknown(name, list(dict.fromkeys(missing_blobs)), "blob")
                raise ManifestBlobUnknown(name, list(dict.fromkeys(missing_children)), "manifest")
            restored = False
            for b in blob_digests:
                if not await _exists(driver, paths.layer_link(name, b)):
                    try:
                        await self.blobs.descriptors.link(name, b)
                    except BlobUnknown:
                        await self._undo(name, manifest, d, tag)
                        raise ManifestBlobUnknown(name, [b], "blob") from None
                    restored = True
            if not await _exists(driver, paths.blob_data(d)) or not await _exists(
                driver, paths.manifest_revision_link(name, d)
            ):
                await self._write(name, body, manifest, d, tag)
                restored = True
            if not restored:
                return
        raise ManifestBlobUnknown(name, [d, *blob_digests], "blob")

    async def _undo(self, name: str, manifest: Manifest, d: Digest, tag: str | None) -> None:
        """Take back a PUT whose references vanished: its revision, its
        referrers entry and its tag (if the tag still points at it)."""
        if tag is not None:
            try:
                if await self.tags.resolve(name, tag) == d:
                    await self.tags.untag(name, tag)
            except ManifestUnknown:
                pass
        if manifest.subject is not None:
            await _delete_quietly(self.driver, paths.referrer_link(name, manifest.subject.digest, d))
        await _delete_quietly(self.driver, paths.manifest_revision_link(name, d))

    async def delete(self, name: str, d: Digest) -> list[str]:
        """Remove manifest ``d`` from ``name`` with every tag pointing at it
        and its referrers entry. Fires with the removed tags; fails with
        ``ManifestUnknown`` if it is not there."""
        if not await self.exists(name, d):
            raise ManifestUnknown(name, str(d))
        subject: Digest | None = None
        try:
            subject_desc = parse_manifest(await self.blobs.get_content(d), None).subject
            subject = subject_desc.digest if subject_desc is not None else None
        except (BlobUnknown, ManifestError):
            pass
        removed = await self.tags.tags_of(name, d)
        await self.tags.untag_each(name, removed)
        if subject is not None:
            try:
                await self.driver.delete(paths.referrer_link(name, subject, d))
            except PathNotFoundError:
                pass
        try:
            await self.driver.delete(paths.manifest_revision_link(name, d))
        except PathNotFoundError:
            raise ManifestUnknown(name, str(d)) from None
        return removed

    async def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        """Descriptors of the manifests of ``name`` whose subject is
        ``subject``, sorted by digest: ``mediaType``, ``digest``, ``size``
        and, when known, ``artifactType`` and ``annotations``."""
        base = paths.referrers_dir(name, subject)
        try:
            algorithms = await self.driver.list(base)
        except PathNotFoundError:
            return []
        found: list[dict[str, Any]] = []
        for alg_dir in algorithms:
            try:
                entries = await self.driver.list(alg_dir)
            except PathNotFoundError:
                continue
            for entry in entries:
                try:
                    d = parse_link(await self.driver.get_content(f"{entry}/link"))
                    body = await self.get(name, d)
                    manifest = parse_manifest(body, None)
                except (PathNotFoundError, DigestError, ManifestUnknown, ManifestError):
                    continue  # deleted meanwhile, or an entry someone else wrote badly
                desc: dict[str, Any] = {"mediaType": media_type_of(body), "digest": str(d), "size": len(body)}
                if manifest.effective_artifact_type:
                    desc["artifactType"] = manifest.effective_artifact_type
                if manifest.annotations:
                    desc["annotations"] = manifest.annotations
                found.append(desc)
        return found
