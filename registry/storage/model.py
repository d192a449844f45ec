"""The registry's data model as one object, ``DataModel``: blobs, uploads,
manifests, tags and the catalog over one storage driver.

Resources reach storage only through a ``DataModel`` and the interfaces of
its stores (``registry.storage.interfaces``). The stores are constructor
arguments, so a cache or a pull-through proxy wraps one and hands the
wrapper in; ``DataModel.over(driver)`` builds the driver-backed defaults and
takes the pieces worth replacing (blob descriptors, tags, upload lock) as
keywords::

    model = DataModel.over(driver)                                  # as served
    model = DataModel.over(driver, descriptors=Cached(BlobDescriptors(driver)))
"""

from __future__ import annotations

from registry.digest import Digest
from registry.reference import check_name
from registry.storage.blobs import BlobDescriptors, BlobStore
from registry.storage.cache import ContentCache
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver
from registry.storage.generation import Generation
from registry.storage.interfaces import (
    IBlobDescriptors,
    IBlobStore,
    ICatalog,
    IManifestStore,
    ITagStore,
    IUploadLock,
    IUploadStore,
)
from registry.storage.locks import ProcessLocks
from registry.storage.manifests import ManifestStore
from registry.storage.tags import CachedTagStore, TagStore
from registry.storage.verify import ILayerVerifier
from registry.storage.uploads import UploadStore


class DataModel:
    """The stores of one registry's content. The stores must share their
    parts (the manifest and upload stores use ``blobs`` and ``tags``), which
    ``over`` sees to."""

    def __init__(
        self,
        blobs: IBlobStore,
        uploads: IUploadStore,
        manifests: IManifestStore,
        tags: ITagStore,
        catalog: ICatalog,
    ) -> None:
        self.blobs = blobs
        self.uploads = uploads
        self.manifests = manifests
        self.tags = tags
        self.catalog = catalog

    @classmethod
    def over(
        cls,
        driver: IStorageDriver,
        *,
        descriptors: IBlobDescriptors | None = None,
        tags: ITagStore | None = None,
        lock: IUploadLock | None = None,
        verifier: ILayerVerifier | None = None,
        content_cache: ContentCache | None | str = "auto",
    ) -> DataModel:
        """The data model over ``driver``: driver-backed stores, with
        ``descriptors`` (default ``BlobDescriptors(driver)``), ``tags``
        (default ``TagStore(driver)``) and the upload ``lock`` (default
        ``ProcessLocks()``) used wherever the stores need them; ``verifier``
        checks layers on manifest PUT (``registry.storage.verify``).

        ``content_cache`` (``registry.storage.cache.ContentCache``) keeps
        immutable content in this process (manifest bytes, blob sizes,
        links); ``"auto"`` (default) makes one over the driver's deletion
        generation when the driver has one (``StorageDriverWrapper``), None
        turns it off (several hosts on one storage, see the cache module).
        With a content cache, the default tag store is a ``CachedTagStore``
        over the generation's ``tags`` companion."""
        cache: ContentCache | None
        if content_cache == "auto":
            generation = getattr(driver, "generation", None)
            cache = ContentCache(generation) if isinstance(generation, Generation) else None
        else:
            assert content_cache is None or isinstance(content_cache, ContentCache)
            cache = content_cache
        blobs = BlobStore(driver, descriptors if descriptors is not None else BlobDescriptors(driver, cache))
        tag_store: ITagStore
        if tags is not None:
            tag_store = tags
        elif cache is not None:
            # Where content is cached, tags are too, over their own generation.
            tag_store = CachedTagStore(TagStore(driver), cache.generation.companion("tags"))
        else:
            tag_store = TagStore(driver)
        return cls(
            blobs=blobs,
            uploads=UploadStore(driver, blobs, lock if lock is not None else ProcessLocks()),
            manifests=ManifestStore(driver, blobs, tag_store, verifier, cache=cache),
            tags=tag_store,
            catalog=Catalog(driver),
        )

    async def try_mount(self, name: str, d: Digest, source: str | None, *, automatic: bool = True) -> bool:
        """Link blob ``d`` into ``name`` without an upload, if possible.

        With ``source``: only when ``source`` has it linked (the caller has
        checked that the client may read ``source``). Without (automatic
        mount): when the blob is stored at all, if ``automatic`` (the client
        may read every repository); otherwise only when ``name`` already has
        it. Returns False (upload instead) when the blob is not available; an
        invalid ``source`` is no error, just no mount (as Distribution
        answers)."""
        descriptors = self.blobs.descriptors
        if await descriptors.size(d) is None:
            return False
        if await descriptors.is_linked(name, d):
            return True
        if source is None and not automatic:
            return False
        if source is not None:
            try:
                check_name(source)
            except ValueError:
                return False
            if not await descriptors.is_linked(source, d):
                return False
        await descriptors.link(name, d)
        return True
