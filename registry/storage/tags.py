"""Tags: names pointing at manifest digests, in Distribution's layout.

``_manifests/tags/<tag>/current/link`` holds the digest the tag points at;
``_manifests/tags/<tag>/index/<alg>/<hex>/link`` records every digest the tag
has pointed at (Distribution writes and reads the same files). Untagging
removes the tag's whole directory, as Distribution does.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from zope.interface import implementer

from registry.digest import Digest, DigestError
from registry.storage import paths
from registry.storage.blobs import link_content, parse_link
from registry.storage.cache import ContentCache
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.errors import ManifestUnknown
from registry.storage.generation import Generation
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

    async def untag_each(self, name: str, tags: list[str]) -> list[str]:
        removed = []
        for tag in tags:
            try:
                await self.untag(name, tag)
            except ManifestUnknown:
                continue
            removed.append(tag)
        return removed

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


#: Tags a ``CachedTagStore`` keeps (the most recently filled ones) and for
#: how long at most: a tag written by a process outside this registry's
#: instances (which bump no generation) is seen after that long.
TAG_CACHE_ENTRIES = 10000
TAG_CACHE_MAX_AGE_S = 60.0


@implementer(ITagStore)
class CachedTagStore:
    """``inner`` with its ``resolve`` answers kept in this process, exact
    across processes and instances through a tag ``generation``
    (``Generation.companion("tags")``, shared on the host and, with Redis,
    between instances):

    * every ``tag`` and ``untag`` bumps the generation after the storage
      write and answers once every instance's cache has dropped what it held
      (``Generation.changed``: one Redis lease, 0.25 s, with several hosts;
      nothing to wait for on one host);
    * a ``resolve`` keeps its answer the way the content cache keeps
      content (a ``ContentCache`` over the tag generation: the fill is
      refused if the generation moved during the storage read, and
      everything is dropped whenever it has moved; tag writes are rarer
      than reads by orders of magnitude).

    So a pull on any instance sees a tag as it was when the last push or
    delete of it answered, as without the cache, and a manifest GET by tag
    costs no storage read while nothing was retagged. An unknown tag is not
    cached. ``all`` and ``tags_of`` read storage."""

    def __init__(
        self,
        inner: ITagStore,
        generation: Generation,
        *,
        max_entries: int = TAG_CACHE_ENTRIES,
        max_age_s: float = TAG_CACHE_MAX_AGE_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.inner = inner
        self.generation = generation
        self.cache = ContentCache(generation, max_entries=max_entries, max_age_s=max_age_s, now=now)

    @property
    def hits(self) -> int:
        return self.cache.hits

    @property
    def misses(self) -> int:
        return self.cache.misses

    async def resolve(self, name: str, tag: str) -> Digest:
        key = ("tag", name, tag)
        hit: Digest | None = self.cache.get(key)
        if hit is not None:
            return hit
        token = self.cache.token()
        d = await self.inner.resolve(name, tag)
        self.cache.put(key, d, token)
        return d

    async def _changed(self) -> None:
        waiting = self.generation.changed()
        if waiting is not None:
            await waiting

    async def tag(self, name: str, tag: str, d: Digest) -> None:
        try:
            await self.inner.tag(name, tag, d)
        finally:
            await self._changed()  # a failed write may have changed the tag too

    async def untag(self, name: str, tag: str) -> None:
        try:
            await self.inner.untag(name, tag)
        finally:
            await self._changed()

    async def untag_each(self, name: str, tags: list[str]) -> list[str]:
        try:
            return await self.inner.untag_each(name, tags)
        finally:
            await self._changed()

    async def all(self, name: str) -> list[str] | None:
        return await self.inner.all(name)

    async def tags_of(self, name: str, d: Digest) -> list[str]:
        return await self.inner.tags_of(name, d)

    def status(self) -> dict[str, Any]:
        return self.cache.status()
