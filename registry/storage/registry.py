"""The registry's data model as one object: blobs, uploads (and, as they
land, manifests, tags and referrers) over one storage driver."""

from __future__ import annotations

from registry.digest import Digest
from registry.reference import check_name
from registry.storage.blobs import BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver
from registry.storage.manifests import ManifestStore
from registry.storage.tags import TagStore
from registry.storage.uploads import UploadStore


class Registry:
    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver
        self.blobs = BlobStore(driver)
        self.uploads = UploadStore(driver, self.blobs)
        self.tags = TagStore(driver)
        self.manifests = ManifestStore(driver, self.blobs, self.tags)
        self.catalog = Catalog(driver)

    async def try_mount(self, name: str, d: Digest, source: str | None) -> bool:
        """Link blob ``d`` into ``name`` without an upload, if possible.

        With ``source``: only when ``source`` has it linked. Without (automatic
        mount): when the blob is stored at all — every repository is readable
        by every client until access control lands, which must narrow this to
        repositories the client may read. Returns False (upload instead) when
        the blob is not available; an invalid ``source`` is no error, just no
        mount (as Distribution answers)."""
        if await self.blobs.size(d) is None:
            return False
        if await self.blobs.is_linked(name, d):
            return True
        if source is not None:
            try:
                check_name(source)
            except ValueError:
                return False
            if not await self.blobs.is_linked(source, d):
                return False
        await self.blobs.link(name, d)
        return True
