"""A blob-descriptor cache in front of storage (``storage.cache.blobdescriptor``).

``CachedBlobDescriptors`` wraps an ``IBlobDescriptors`` and remembers what
storage answered: a blob's size (digest -> size) and that a repository links
a blob (repository membership). Only positive answers are kept (a ``None``
size or an unlinked blob may change a moment later in another instance);
the cache is written *after* the storage read or write that it describes.

Two places to keep them:

* ``InMemoryDescriptorCache``: this process only, bounded (least recently
  used entries go), each entry lives ``ttl`` seconds;
* ``RedisDescriptorCache``: shared by every instance, one Redis hash per
  digest (``registry:blob:<digest>``: ``size`` and ``repo:<name>`` fields),
  each hash expires ``ttl`` seconds after it was last filled.

Invalidation, and why no instance serves a deleted blob from the cache
------------------------------------------------------------------------
Blobs are only ever deleted by garbage collection; links are removed by a
blob DELETE (through ``unlink`` here) or by garbage collection. Forgetting a
digest removes everything cached about it and leaves a *tombstone* for
``tombstone_s`` seconds, during which nothing about the digest is cached.
The tombstone closes the race of a reader that read storage before the
deletion and fills the cache after it: a fill is refused while a tombstone
exists (in Redis, the check and the fill are one script). ``unlink`` forgets
before and after removing the link. The garbage collector
(``registry garbage-collect`` with ``redis`` configured) calls
``invalidate_digests`` after raising its fence and before deleting a batch's
blobs or links, and again after deleting them; if Redis cannot be reached
before the deletion, the collector stops without deleting (it must not
delete what a cache may still serve). So, with the Redis cache, an entry of
a deleted blob is gone before the deletion and cannot be filled again unless
a reader's storage read and its cache fill are more than ``tombstone_s``
(60 s) apart.

The bounds that remain: Redis unreachable when ``unlink`` runs leaves the
entry until its ``ttl`` (300 s); the in-memory cache cannot be reached by a
collector in another process nor by another instance's ``unlink``, so there
a deleted blob or removed link may be answered from the cache for up to the
in-memory ``ttl`` (default 30 s) — use the Redis cache when several
instances share a storage, or garbage collection sweeps it while serving. Write
paths do not trust the cache: a manifest PUT and a blob link verify with the
driver (``registry.storage.fence``), and a failed ``link`` forgets the
digest.

Redis down: every lookup is a miss (served from storage), fills and forgets
are skipped; the client logs the outage once and ``status()`` reports it.

The content cache (``ContentCache``): immutable content, this process
-------------------------------------------------------------------------
Under the descriptor caches, the driver-backed stores keep what can never
change under its digest in this process: manifest bytes by digest, blob
sizes by digest, and repository membership (a repository's link to a blob,
its revision link to a manifest). Tags are mutable and never cached (a tag
read is one small read of its current link). One LRU holds it all, bounded
by bytes (manifest payloads count their length) and by entries.

These facts only change by deletion, and every deletion bumps the storage's
host-wide generation (``registry.storage.generation``): the wrapper bumps
after each deletion of a content path, garbage collection (in this process
or the ``registry garbage-collect`` CLI) before and after each batch. Every
lookup compares the generation with the one the cache was filled under and
drops everything on a change; a fill carries the generation read before its
storage read and is refused if it moved meanwhile. So no process on the
host serves a deleted manifest, blob size or link once the deletion
answered, with no time bound to wait.

With ``redis`` configured, instances on several hosts may share the
storage, and the generation is also shared through Redis
(``registry.storage.generation.SharedGeneration``, attached by the
application and by the ``registry garbage-collect`` CLI): a deletion on any
instance advances a Redis counter and answers only after every instance's
lease on the old value has ended, so every instance's cache is dropped
before the deleting request answers; a read costs no Redis round trip while
its process's lease (0.25 s) holds, and a busy process renews it in the
background. While Redis cannot be reached, the lease lapses and the content
cache serves nothing (every read goes to storage) until Redis answers
again; it then starts empty. Several hosts on one storage *without* Redis
are not supported; there an entry is still trusted at most
``CONTENT_MAX_AGE_S`` (60 s), the bound on what another host's deletion can
leave behind.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Awaitable, Callable, Iterable

from twisted.logger import Logger
from zope.interface import Interface, implementer

from registry.digest import Digest
from registry.redis import RedisClient, RedisError
from registry.storage.errors import BlobUnknown
from registry.storage.generation import Generation
from registry.storage.interfaces import IBlobDescriptors

log = Logger(namespace="registry.storage.cache")

#: Seconds a Redis entry lives after it was last filled.
REDIS_TTL_S = 300
#: Seconds an in-memory entry lives.
INMEMORY_TTL_S = 30.0
#: Seconds nothing about a forgotten digest is cached.
TOMBSTONE_S = 60
#: Digests the in-memory cache holds (Distribution's ``blobdescriptorsize`` default).
INMEMORY_SIZE = 10000
#: Bytes the content cache holds (manifest payloads count their length,
#: every other entry ``ENTRY_COST``).
CONTENT_MAX_BYTES = 64 * 1024 * 1024
#: Entries the content cache holds.
CONTENT_MAX_ENTRIES = 200_000
#: What one size or membership entry counts against ``CONTENT_MAX_BYTES``
#: (about what it costs in memory: key tuple, digest, value, dict node).
ENTRY_COST = 512
#: Seconds a content-cache entry is trusted at most. Deletions on this host
#: reach the cache at once through the generation; this bounds what a
#: deletion by another *host* can leave (several hosts on one storage
#: without Redis, which is not a supported way to share a storage).
CONTENT_MAX_AGE_S = 60.0
#: Manifests larger than this are not kept (an index of thousands of
#: platforms should not push out hundreds of ordinary manifests).
CONTENT_MAX_MANIFEST = 1024 * 1024


class ContentCache:
    """Immutable content of one storage in this process, dropped as a whole
    when the storage's ``generation`` moves (see the module docstring).

    Keys are tuples: ``("manifest", digest)`` -> bytes, ``("size", digest)``
    -> int, ``("layer"|"revision", name, digest)`` -> True. Readers::

        hit = cache.get(key)
        if hit is None:
            token = cache.token()          # before the storage read
            value = await read_storage()
            cache.put(key, value, token)   # refused if a deletion came between
    """

    def __init__(
        self,
        generation: Generation,
        *,
        max_bytes: int = CONTENT_MAX_BYTES,
        max_entries: int = CONTENT_MAX_ENTRIES,
        max_manifest: int = CONTENT_MAX_MANIFEST,
        max_age_s: float = CONTENT_MAX_AGE_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.generation = generation
        self.max_age_s = max_age_s
        self.now = now
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.max_manifest = max_manifest
        # key -> (value, cost, expires)
        self._entries: OrderedDict[tuple[Any, ...], tuple[Any, int, float]] = OrderedDict()
        self._bytes = 0
        self._seen = generation.current()
        #: Lookups answered, missed, and times everything was dropped.
        self.hits = 0
        self.misses = 0
        self.drops = 0

    def token(self) -> int:
        """The generation now; drops everything if it moved since last seen."""
        g = self.generation.current()
        if g != self._seen:
            self._seen = g
            if self._entries:
                self._entries.clear()
                self._bytes = 0
                self.drops += 1
        return g

    def get(self, key: tuple[Any, ...]) -> Any:
        """The cached value of ``key`` or None."""
        if self.generation.current() != self._seen:
            self.token()
        entry = self._entries.get(key)
        if entry is None or entry[2] <= self.now():
            if entry is not None:
                del self._entries[key]
                self._bytes -= entry[1]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: tuple[Any, ...], value: Any, token: int) -> None:
        """Keep ``value`` for ``key`` if the generation is still ``token``
        (the one read before the storage read that produced ``value``)."""
        if self.token() != token:
            return
        cost = len(value) if isinstance(value, bytes) else ENTRY_COST
        if isinstance(value, bytes) and cost > self.max_manifest:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old[1]
        now = self.now()
        self._entries[key] = (value, cost, now + self.max_age_s)
        self._bytes += cost
        entries = self._entries
        while self._bytes > self.max_bytes or len(entries) > self.max_entries:
            _, (_, dropped, _) = entries.popitem(last=False)
            self._bytes -= dropped
        # Entries past their age go from the cold end as new ones arrive, so
        # the cache holds about ``max_age_s`` of traffic, not its bound for
        # ever: a process's memory levels off with its working set.
        for _ in range(2):
            if not entries or next(iter(entries.values()))[2] > now:
                break
            _, (_, dropped, _) = entries.popitem(last=False)
            self._bytes -= dropped

    def status(self) -> dict[str, Any]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "hits": self.hits,
            "misses": self.misses,
            "drops": self.drops,
            "shared": self.generation.path is not None,
            **({"redis": self.generation.remote.status()} if self.generation.remote is not None else {}),
        }


class IDescriptorCache(Interface):
    """Where ``CachedBlobDescriptors`` keeps what it learnt. Every method
    returns an awaitable and never fails (an unreachable store is a miss)."""

    def size(d: Digest) -> Any:
        """Fire with the cached size of ``d`` or None."""

    def linked(name: str, d: Digest) -> Any:
        """Fire with True if ``name`` is cached as linking ``d``."""

    def remember_size(d: Digest, size: int) -> Any:
        """Cache the size (unless ``d`` has a tombstone)."""

    def remember_link(name: str, d: Digest) -> Any:
        """Cache that ``name`` links ``d`` (unless ``d`` has a tombstone)."""

    def forget(digests: Iterable[Digest]) -> Any:
        """Drop everything about ``digests`` and leave tombstones. Fires with
        True if the store was reached (False: the entries may remain until
        their ttl)."""

    def status() -> dict[str, Any]:
        """``{"ok": bool, ...}``: whether the cache's store is reachable."""


def _blob_key(d: Digest) -> str:
    return f"registry:blob:{d}"


def _gone_key(d: Digest) -> str:
    return f"registry:blob-gone:{d}"


# KEYS[1] hash, KEYS[2] tombstone; ARGV field, value, ttl
_FILL = (
    "if redis.call('exists', KEYS[2]) == 1 then return 0 end "
    "redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) "
    "redis.call('expire', KEYS[1], ARGV[3]) return 1"
)
# KEYS: hash1, gone1, hash2, gone2, ...; ARGV[1] tombstone seconds
_FORGET = (
    "for i = 1, #KEYS, 2 do "
    "redis.call('set', KEYS[i + 1], '1', 'EX', ARGV[1]) redis.call('del', KEYS[i]) "
    "end return #KEYS / 2"
)


@implementer(IDescriptorCache)
class RedisDescriptorCache:
    """Descriptor entries in Redis, shared by every instance."""

    def __init__(self, client: RedisClient, *, ttl_s: int = REDIS_TTL_S, tombstone_s: int = TOMBSTONE_S) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.tombstone_s = tombstone_s
        #: Lookups Redis did not answer (each also counts as a miss above).
        self.errors = 0

    async def _get(self, d: Digest, field: str) -> bytes | None:
        try:
            value = await self.client.execute("HGET", _blob_key(d), field)
        except RedisError:
            self.errors += 1
            return None
        return value if isinstance(value, bytes) else None

    async def _fill(self, d: Digest, field: str, value: str) -> None:
        try:
            await self.client.execute("EVAL", _FILL, 2, _blob_key(d), _gone_key(d), field, value, self.ttl_s)
        except RedisError:
            pass

    async def size(self, d: Digest) -> int | None:
        value = await self._get(d, "size")
        try:
            return int(value) if value is not None else None
        except ValueError:
            return None

    async def linked(self, name: str, d: Digest) -> bool:
        return await self._get(d, f"repo:{name}") is not None

    async def remember_size(self, d: Digest, size: int) -> None:
        await self._fill(d, "size", str(size))

    async def remember_link(self, name: str, d: Digest) -> None:
        await self._fill(d, f"repo:{name}", "1")

    async def forget(self, digests: Iterable[Digest]) -> bool:
        keys: list[str] = []
        for d in digests:
            keys += [_blob_key(d), _gone_key(d)]
        if not keys:
            return True
        try:
            await self.client.execute("EVAL", _FORGET, len(keys), *keys, self.tombstone_s)
        except RedisError as e:
            log.warn("could not remove cached descriptors from Redis ({error}); they expire within {ttl}s", error=e, ttl=self.ttl_s)
            return False
        return True

    def status(self) -> dict[str, Any]:
        return {"cache": "redis", **self.client.status()}


@implementer(IDescriptorCache)
class InMemoryDescriptorCache:
    """Descriptor entries of this process: at most ``max_digests`` digests,
    each entry ``ttl_s`` seconds."""

    def __init__(
        self,
        *,
        max_digests: int = INMEMORY_SIZE,
        ttl_s: float = INMEMORY_TTL_S,
        tombstone_s: float = TOMBSTONE_S,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_digests = max_digests
        self.ttl_s = ttl_s
        self.tombstone_s = tombstone_s
        self.now = now
        # digest -> (expires, size or None, linked names)
        self._entries: OrderedDict[Digest, tuple[float, int | None, frozenset[str]]] = OrderedDict()
        self._gone: dict[Digest, float] = {}

    def _entry(self, d: Digest) -> tuple[float, int | None, frozenset[str]] | None:
        entry = self._entries.get(d)
        if entry is None:
            return None
        if entry[0] <= self.now():
            del self._entries[d]
            return None
        self._entries.move_to_end(d)
        return entry

    def _blocked(self, d: Digest) -> bool:
        until = self._gone.get(d)
        if until is None:
            return False
        if until <= self.now():
            del self._gone[d]
            return False
        return True

    def _put(self, d: Digest, size: int | None, name: str | None) -> None:
        if self._blocked(d):
            return
        entry = self._entry(d)
        if entry is None:
            entry = (self.now() + self.ttl_s, None, frozenset())
        expires, old_size, names = entry
        self._entries[d] = (
            expires,
            size if size is not None else old_size,
            names | {name} if name is not None else names,
        )
        self._entries.move_to_end(d)
        while len(self._entries) > self.max_digests:
            self._entries.popitem(last=False)

    async def size(self, d: Digest) -> int | None:
        entry = self._entry(d)
        return entry[1] if entry is not None else None

    async def linked(self, name: str, d: Digest) -> bool:
        entry = self._entry(d)
        return entry is not None and name in entry[2]

    async def remember_size(self, d: Digest, size: int) -> None:
        self._put(d, size, None)

    async def remember_link(self, name: str, d: Digest) -> None:
        self._put(d, None, name)

    async def forget(self, digests: Iterable[Digest]) -> bool:
        now = self.now()
        for gone in [g for g, until in self._gone.items() if until <= now]:
            del self._gone[gone]
        for d in digests:
            self._entries.pop(d, None)
            self._gone[d] = now + self.tombstone_s
        return True

    def status(self) -> dict[str, Any]:
        return {"cache": "inmemory", "ok": True, "entries": len(self._entries)}


@implementer(IBlobDescriptors)
class CachedBlobDescriptors:
    """``IBlobDescriptors`` answered from ``cache`` when it knows, else from
    ``inner`` (whose positive answers are then cached)."""

    def __init__(self, inner: IBlobDescriptors, cache: IDescriptorCache) -> None:
        self.inner = inner
        self.cache = cache
        #: Lookups answered by the cache, and those that went to ``inner``
        #: (the metrics' ``registry_storage_cache_total``).
        self.hits = 0
        self.misses = 0

    @property
    def errors(self) -> int:
        """Lookups the cache's store did not answer (counted in ``misses`` too)."""
        return int(getattr(self.cache, "errors", 0))

    async def size(self, d: Digest) -> int | None:
        cached = await self.cache.size(d)
        if cached is not None:
            self.hits += 1
            return int(cached)
        self.misses += 1
        size: int | None = await self.inner.size(d)
        if size is not None:
            await self.cache.remember_size(d, size)
        return size

    async def is_linked(self, name: str, d: Digest) -> bool:
        if await self.cache.linked(name, d):
            self.hits += 1
            return True
        self.misses += 1
        linked: bool = await self.inner.is_linked(name, d)
        if linked:
            await self.cache.remember_link(name, d)
        return linked

    async def link(self, name: str, d: Digest) -> None:
        try:
            await self.inner.link(name, d)
        except BlobUnknown:
            # The blob is gone (swept): whatever is cached about it is stale.
            await self.cache.forget([d])
            raise
        await self.cache.remember_link(name, d)

    async def unlink(self, name: str, d: Digest) -> None:
        await self.cache.forget([d])
        try:
            await self.inner.unlink(name, d)
        finally:
            await self.cache.forget([d])

    def status(self) -> dict[str, Any]:
        """Whether the cache's store is reachable (for the health check)."""
        result: dict[str, Any] = self.cache.status()
        return result


def collector_invalidate(cache: IDescriptorCache) -> Callable[[list[Digest]], Awaitable[None]]:
    """For a collector in this process (``storage.maintenance.gc``): forget
    digests in ``cache``, failing when its store cannot be reached (the
    collector then deletes nothing)."""

    async def invalidate(digests: list[Digest]) -> None:
        if not await cache.forget(digests):
            raise RedisError("the blob-descriptor cache's Redis cannot be reached")

    return invalidate


async def invalidate_digests(client: RedisClient, digests: Iterable[Digest]) -> None:
    """For the garbage collector: forget ``digests`` in the Redis cache and
    leave tombstones. Raises ``RedisError`` if Redis cannot be reached (the
    collector then deletes nothing)."""
    keys: list[str] = []
    for d in digests:
        keys += [_blob_key(d), _gone_key(d)]
    if keys:
        await client.execute("EVAL", _FORGET, len(keys), *keys, TOMBSTONE_S)
