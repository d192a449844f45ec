"""Blobs: content-addressed bytes shared by every repository, visible in a
repository only through its ``_layers`` link."""

from __future__ import annotations

from registry.digest import Digest
from registry.storage import paths
from registry.storage.driver import IFileReader, IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown


def link_content(d: Digest) -> bytes:
    return str(d).encode("ascii")


def parse_link(data: bytes) -> Digest:
    """Parse a link file's content; a corrupt link reads as a missing one."""
    return Digest.parse(data.strip().decode("ascii", "replace"))


class BlobStore:
    """Reads, links and unlinks blobs through a storage driver."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    async def size(self, d: Digest) -> int | None:
        """The size of the stored blob ``d``, or None if it is not stored."""
        try:
            info = await self.driver.stat(paths.blob_data(d))
        except PathNotFoundError:
            return None
        return info.size

    async def is_linked(self, name: str, d: Digest) -> bool:
        try:
            await self.driver.stat(paths.layer_link(name, d))
        except PathNotFoundError:
            return False
        return True

    async def repo_size(self, name: str, d: Digest) -> int:
        """The size of blob ``d`` as seen from repository ``name``.

        Raises ``BlobUnknown`` unless the blob is linked there and stored."""
        if not await self.is_linked(name, d):
            raise BlobUnknown(d, name)
        size = await self.size(d)
        if size is None:
            raise BlobUnknown(d, name)
        return size

    async def link(self, name: str, d: Digest) -> None:
        await self.driver.put_content(paths.layer_link(name, d), link_content(d))

    async def unlink(self, name: str, d: Digest) -> None:
        """Remove blob ``d`` from repository ``name`` (the data stays until
        garbage collection). Raises ``BlobUnknown`` if it was not linked."""
        try:
            await self.driver.delete(paths.layer_link(name, d).rsplit("/", 1)[0])
        except PathNotFoundError:
            raise BlobUnknown(d, name) from None

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
        """Store small content (manifests) under its digest; the caller has
        computed ``d`` from ``data``."""
        if await self.size(d) == len(data):
            return
        await self.driver.put_content(paths.blob_data(d), data)

    async def redirect_url(self, d: Digest, method: str = "GET") -> str | None:
        return await self.driver.redirect_url(paths.blob_data(d), method)
