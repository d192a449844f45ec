"""Tags: names pointing at manifest digests, in Distribution's layout.

``_manifests/tags/<tag>/current/link`` holds the digest the tag points at;
``_manifests/tags/<tag>/index/<alg>/<hex>/link`` records every digest the tag
has pointed at (Distribution writes and reads the same files). Untagging
removes the tag's whole directory, as Distribution does.
"""

from __future__ import annotations

from zope.interface import implementer

from registry.digest import Digest, DigestError
from registry.storage import paths
from registry.storage.blobs import link_content, parse_link
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.errors import ManifestUnknown
from registry.storage.interfaces import ITagStore


@implementer(ITagStore)
class TagStore:
    """Reads and writes tag links through a storage driver."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    async def resolve(self, name: str, tag: str) -> Digest:
        """The digest ``tag`` points at. Fails with ``ManifestUnknown`` when
        the tag does not exist (or its link is corrupt)."""
        try:
            data = await self.driver.get_content(paths.tag_current_link(name, tag))
            return parse_link(data)
        except (PathNotFoundError, DigestError):
            raise ManifestUnknown(name, tag) from None

    async def tag(self, name: str, tag: str, d: Digest) -> None:
        """Point ``tag`` at ``d``: the index link first, then the current link
        (a reader never sees a current link without its index entry)."""
        await self.driver.put_content(paths.tag_index_link(name, tag, d), link_content(d))
        await self.driver.put_content(paths.tag_current_link(name, tag), link_content(d))

    async def untag(self, name: str, tag: str) -> None:
        """Remove ``tag``. Fails with ``ManifestUnknown`` if it does not exist."""
        try:
            await self.driver.delete(paths.tag_dir(name, tag))
        except PathNotFoundError:
            raise ManifestUnknown(name, tag) from None

    async def all(self, name: str) -> list[str] | None:
        """Every tag of ``name``, sorted; None when the repository has no tags
        directory. One ``list`` call, no per-tag reads."""
        try:
            children = await self.driver.list(paths.tags_dir(name))
        except PathNotFoundError:
            return None
        return sorted(child.rsplit("/", 1)[-1] for child in children)

    async def tags_of(self, name: str, d: Digest) -> list[str]:
        """The tags of ``name`` whose current link is ``d`` (reads every tag's
        link: used by deletes only)."""
        found = []
        for tag in await self.all(name) or []:
            try:
                if await self.resolve(name, tag) == d:
                    found.append(tag)
            except ManifestUnknown:
                continue
        return found
