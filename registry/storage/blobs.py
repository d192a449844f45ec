"""Blobs: content-addressed bytes shared by every repository, visible in a
repository only through its ``_layers`` link.

``BlobDescriptors`` answers the lookups (a blob's size, a repository's link)
and changes links; ``BlobStore`` serves content and asks its descriptors for
everything else, so a cache wrapped around the descriptors sees every
lookup and every link change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import DeferredList
from zope.interface import implementer

from registry.digest import Digest
from registry.storage import paths
from registry.storage.driver import IFileReader, IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown
from registry.storage.fence import wait_clear
from registry.storage.interfaces import IBlobDescriptors, IBlobStore

if TYPE_CHECKING:
    from registry.storage.cache import ContentCache


def link_content(d: Digest) -> bytes:
    return str(d).encode("ascii")


def parse_link(data: bytes) -> Digest:
    """Parse a link file's content; a corrupt link reads as a missing one."""
    return Digest.parse(data.strip().decode("ascii", "replace"))


#: How often ``link`` re-writes a link a concurrent sweep removed.
LINK_ATTEMPTS = 5


@implementer(IBlobDescriptors)
class BlobDescriptors:
    """Blob sizes and repository links, read and written through a driver
    (one ``stat`` per lookup), positive answers kept in ``cache`` (a
    ``registry.storage.cache.ContentCache``: sizes and links only change by
    deletion, which the cache hears of through the storage's generation)."""

    def __init__(self, driver: IStorageDriver, cache: ContentCache | None = None) -> None:
        self.driver = driver
        self.cache = cache

    async def size(self, d: Digest) -> int | None:
        cache = self.cache
        if cache is not None:
            hit = cache.get(("size", d))
            if hit is not None:
                return int(hit)
            token = cache.token()
        try:
            info = await self.driver.stat(paths.blob_data(d))
        except PathNotFoundError:
            return None
        if cache is not None:
            cache.put(("size", d), info.size, token)
        return info.size

    async def is_linked(self, name: str, d: Digest) -> bool:
        cache = self.cache
        if cache is not None:
            if cache.get(("layer", name, d)) is not None:
                return True
            token = cache.token()
        try:
            await self.driver.stat(paths.layer_link(name, d))
        except PathNotFoundError:
            return False
        if cache is not None:
            cache.put(("layer", name, d), True, token)
        return True

    async def link(self, name: str, d: Digest) -> None:
        """Write the link, then let any garbage collection sweeping ``d``
        finish and verify the blob and the link are still there (see
        ``registry.storage.fence``): a link is never reported made to a blob
        a concurrent sweep removes. Fails with ``BlobUnknown`` (link removed
        again) if the blob's data is gone."""
        path = paths.layer_link(name, d)
        for _ in range(LINK_ATTEMPTS):
            await self.driver.put_content(path, link_content(d))
            await wait_clear(self.driver, [d])
            # Both checks at once (an object store's round trip each).
            checks: list[tuple[bool, Any]] = await DeferredList(
                [self.driver.stat(paths.blob_data(d)), self.driver.stat(path)], consumeErrors=True
            )
            data, link = checks
            for ok, result in checks:
                if not ok and not result.check(PathNotFoundError):
                    result.raiseException()
            if not data[0]:
                await self._unlink_quietly(name, d)
                raise BlobUnknown(d, name)
            if link[0]:
                return
            # swept while we waited: write it again
        raise BlobUnknown(d, name)

    async def _unlink_quietly(self, name: str, d: Digest) -> None:
        try:
            await self.driver.delete(paths.layer_link(name, d).rsplit("/", 1)[0])
        except PathNotFoundError:
            pass

    async def unlink(self, name: str, d: Digest) -> None:
        try:
            await self.driver.delete(paths.layer_link(name, d).rsplit("/", 1)[0])
        except PathNotFoundError:
            raise BlobUnknown(d, name) from None


@implementer(IBlobStore)
class BlobStore:
    """Reads and stores blob content through a storage driver; lookups and
    links go through ``descriptors`` (``BlobDescriptors`` over the same
    driver unless given)."""

    def __init__(self, driver: IStorageDriver, descriptors: IBlobDescriptors | None = None) -> None:
        self.driver = driver
        self.descriptors: IBlobDescriptors = descriptors if descriptors is not None else BlobDescriptors(driver)

    async def repo_size(self, name: str, d: Digest) -> int:
        if not await self.descriptors.is_linked(name, d):
            raise BlobUnknown(d, name)
        size = await self.descriptors.size(d)
        if size is None:
            raise BlobUnknown(d, name)
        return size

    async def open(self, d: Digest, offset: int = 0) -> IFileReader:
        try:
            return await self.driver.reader(paths.blob_data(d), offset)
        except PathNotFoundError:
            raise BlobUnknown(d) from None

    async def get_content(self, d: Digest) -> bytes:
        try:
            return await self.driver.get_content(paths.blob_data(d))
        except PathNotFoundError:
            raise BlobUnknown(d) from None

    async def put_content(self, d: Digest, data: bytes) -> None:
        if await self.descriptors.size(d) == len(data):
            return
        await self.driver.put_content(paths.blob_data(d), data)

    async def redirect_url(self, d: Digest, method: str = "GET") -> str | None:
        return await self.driver.redirect_url(paths.blob_data(d), method)
