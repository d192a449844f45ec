"""The blob-descriptor cache over a real filesystem driver, in memory and in
a real Redis: what it caches, what it never caches, invalidation by unlink
and by garbage collection (in another "process": its own driver and Redis
client), and Redis going away."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from zope.interface.verify import verifyObject

from registry.digest import Digest, sha256_digest
from registry.redis import RedisClient, RedisSettings
from registry.storage import paths
from registry.storage.blobs import BlobDescriptors
from registry.storage.cache import (
    CachedBlobDescriptors,
    IDescriptorCache,
    InMemoryDescriptorCache,
    RedisDescriptorCache,
    invalidate_digests,
)
from registry.storage.driver import IStorageDriver
from registry.storage.errors import BlobUnknown
from registry.storage.factory import create_driver
from registry.storage.gc import GarbageCollector, GCError
from registry.storage.interfaces import IBlobDescriptors
from tests.redis.server import RedisServer, free_port


class Counting:
    """Counts the storage lookups that reach the wrapped descriptors."""

    def __init__(self, inner: IBlobDescriptors) -> None:
        self.inner = inner
        self.lookups = 0

    async def size(self, d: Digest) -> int | None:
        self.lookups += 1
        return await self.inner.size(d)

    async def is_linked(self, name: str, d: Digest) -> bool:
        self.lookups += 1
        return await self.inner.is_linked(name, d)

    async def link(self, name: str, d: Digest) -> None:
        await self.inner.link(name, d)

    async def unlink(self, name: str, d: Digest) -> None:
        await self.inner.unlink(name, d)


def redis_client(server: RedisServer) -> RedisClient:
    return RedisClient(reactor, RedisSettings("127.0.0.1", server.port))


@pytest.fixture(params=["inmemory", "redis"])
def make_cache(request: Any, redis_server: RedisServer) -> Any:
    def make() -> IDescriptorCache:
        if request.param == "inmemory":
            return InMemoryDescriptorCache()
        return RedisDescriptorCache(redis_client(redis_server))

    return make


_open: list[IStorageDriver] = []


def fs(root: Path) -> IStorageDriver:
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    _open.append(driver)
    return driver


@pytest_twisted.async_yield_fixture(autouse=True)
async def _close_drivers() -> AsyncIterator[None]:
    """Every driver a test made stops its thread pool afterwards."""
    yield
    while _open:
        await _open.pop().close()  # type: ignore[attr-defined]


async def store_blob(driver: IStorageDriver, data: bytes) -> Digest:
    d = sha256_digest(data)
    await driver.put_content(paths.blob_data(d), data)
    return d


@pytest_twisted.ensureDeferred
async def test_positive_answers_are_cached_negative_never(tmp_path: Path, make_cache: Any) -> None:
    driver = fs(tmp_path)
    counting = Counting(BlobDescriptors(driver))
    cached = CachedBlobDescriptors(counting, make_cache())
    verifyObject(IBlobDescriptors, cached)
    missing = sha256_digest(b"not yet")
    assert await cached.size(missing) is None
    assert await cached.size(missing) is None
    assert counting.lookups == 2  # a None is never cached
    assert not await cached.is_linked("repo", missing)
    d = await store_blob(driver, b"not yet")
    assert await cached.size(d) == 7  # stored a moment later: seen at once
    assert not await cached.is_linked("repo", d)
    await cached.link("repo", d)
    before = counting.lookups
    for _ in range(3):
        assert await cached.size(d) == 7
        assert await cached.is_linked("repo", d)
    assert counting.lookups == before  # answered from the cache
    assert not await cached.is_linked("other", d)
    assert cached.status()["ok"] is True


@pytest_twisted.ensureDeferred
async def test_unlink_invalidates_for_every_instance(tmp_path: Path, make_cache: Any, redis_server: RedisServer) -> None:
    driver = fs(tmp_path)
    backend = make_cache()
    a = CachedBlobDescriptors(BlobDescriptors(driver), backend)
    d = await store_blob(driver, b"layer")
    await a.link("repo", d)
    assert await a.is_linked("repo", d)
    if isinstance(backend, RedisDescriptorCache):
        # A second instance with its own client sees the entry and its removal.
        b = CachedBlobDescriptors(BlobDescriptors(fs(tmp_path)), RedisDescriptorCache(redis_client(redis_server)))
        assert await b.cache.linked("repo", d)
        await a.unlink("repo", d)
        assert not await b.is_linked("repo", d)
    else:
        await a.unlink("repo", d)
    assert not await a.is_linked("repo", d)
    with pytest.raises(BlobUnknown):
        await a.unlink("repo", d)


@pytest_twisted.ensureDeferred
async def test_tombstone_refuses_a_fill_from_before_the_deletion(make_cache: Any) -> None:
    """A reader that read storage before a deletion and fills the cache
    after the invalidation must not bring the entry back."""
    backend = make_cache()
    d = sha256_digest(b"x")
    await backend.forget([d])  # the collector, before deleting
    await backend.remember_size(d, 1)  # the slow reader
    await backend.remember_link("repo", d)
    assert await backend.size(d) is None
    assert not await backend.linked("repo", d)


def test_inmemory_bounds() -> None:
    now = [0.0]
    cache = InMemoryDescriptorCache(max_digests=2, ttl_s=10, tombstone_s=5, now=lambda: now[0])

    async def run() -> None:
        a, b, c = (sha256_digest(x) for x in (b"a", b"b", b"c"))
        await cache.remember_size(a, 1)
        await cache.remember_size(b, 2)
        assert await cache.size(a) == 1  # a is now the most recent
        await cache.remember_size(c, 3)
        assert await cache.size(b) is None  # least recently used went
        assert await cache.size(a) == 1
        now[0] = 11
        assert await cache.size(a) is None  # expired
        await cache.forget([a])
        await cache.remember_size(a, 1)
        assert await cache.size(a) is None
        now[0] = 17
        await cache.remember_size(a, 1)
        assert await cache.size(a) == 1

    import asyncio

    asyncio.run(run())


async def _pushed_then_orphaned(tmp_path: Path, cached: CachedBlobDescriptors) -> Digest:
    """A blob linked into a repository (cached), whose link no manifest
    references: garbage collection with no grace removes link and blob."""
    d = await store_blob(cached.inner.driver, b"orphan layer")  # type: ignore[attr-defined]
    await cached.link("repo", d)
    assert await cached.size(d) == len(b"orphan layer")
    assert await cached.is_linked("repo", d)
    return d


@pytest_twisted.ensureDeferred
async def test_garbage_collection_in_another_process_invalidates_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    instance = CachedBlobDescriptors(BlobDescriptors(fs(tmp_path)), RedisDescriptorCache(redis_client(redis_server)))
    d = await _pushed_then_orphaned(tmp_path, instance)
    gc_client = redis_client(redis_server)

    async def invalidate(digests: list[Digest]) -> None:
        await invalidate_digests(gc_client, digests)

    report = await GarbageCollector(fs(tmp_path), grace_s=0, invalidate=invalidate).run()
    assert [b for b, _ in report.blobs] == [str(d)]
    assert await instance.size(d) is None
    assert not await instance.is_linked("repo", d)


@pytest_twisted.ensureDeferred
async def test_without_invalidation_the_cache_would_serve_the_deleted_blob(tmp_path: Path, redis_server: RedisServer) -> None:
    """The control for the test above: the entry really is served from the
    cache when nobody invalidates it (so that test can fail)."""
    instance = CachedBlobDescriptors(BlobDescriptors(fs(tmp_path)), RedisDescriptorCache(redis_client(redis_server)))
    d = await _pushed_then_orphaned(tmp_path, instance)
    await GarbageCollector(fs(tmp_path), grace_s=0).run()
    assert await BlobDescriptors(fs(tmp_path)).size(d) is None
    assert await instance.size(d) == len(b"orphan layer")


@pytest_twisted.ensureDeferred
async def test_collector_deletes_nothing_when_redis_is_unreachable(tmp_path: Path, redis_server: RedisServer) -> None:
    instance = CachedBlobDescriptors(BlobDescriptors(fs(tmp_path)), RedisDescriptorCache(redis_client(redis_server)))
    d = await _pushed_then_orphaned(tmp_path, instance)
    dead = RedisClient(reactor, RedisSettings("127.0.0.1", free_port(), dial_timeout=1))

    async def invalidate(digests: list[Digest]) -> None:
        await invalidate_digests(dead, digests)

    with pytest.raises(GCError, match="cannot be reached"):
        await GarbageCollector(fs(tmp_path), grace_s=0, invalidate=invalidate).run()
    assert await BlobDescriptors(fs(tmp_path)).size(d) == len(b"orphan layer")
    assert await BlobDescriptors(fs(tmp_path)).is_linked("repo", d)


@pytest_twisted.ensureDeferred
async def test_redis_down_serves_from_storage_and_says_so(tmp_path: Path, redis_server: RedisServer) -> None:
    driver = fs(tmp_path)
    counting = Counting(BlobDescriptors(driver))
    cached = CachedBlobDescriptors(counting, RedisDescriptorCache(redis_client(redis_server)))
    d = await store_blob(driver, b"blob")
    await cached.link("repo", d)
    assert await cached.size(d) == 4
    redis_server.stop()
    before = counting.lookups
    assert await cached.size(d) == 4
    assert await cached.is_linked("repo", d)
    assert counting.lookups == before + 2  # misses, answered by storage
    # The metrics' registry_storage_cache_total: both lookups were errors.
    assert (cached.hits, cached.misses, cached.errors) == (0, 3, 2)
    status = cached.status()
    assert status["ok"] is False and status["cache"] == "redis" and status["error"]
    await cached.unlink("repo", d)  # link changes still work
    assert not await cached.is_linked("repo", d)


@pytest_twisted.ensureDeferred
async def test_failed_link_forgets_the_digest(tmp_path: Path, make_cache: Any) -> None:
    driver = fs(tmp_path)
    cached = CachedBlobDescriptors(BlobDescriptors(driver), make_cache())
    d = await store_blob(driver, b"gone soon")
    assert await cached.size(d) == 9
    await driver.delete(paths.blob_dir(d))  # swept behind the cache's back
    with pytest.raises(BlobUnknown):
        await cached.link("repo", d)
    assert await cached.size(d) is None


@pytest_twisted.ensureDeferred
async def test_scheduled_collection_in_this_process_forgets_in_the_inmemory_cache(tmp_path: Path) -> None:
    """``storage.maintenance.gc`` runs the collector inside the server: the
    collection the application schedules forgets swept digests in the
    process's own cache too."""
    from registry.app import _collect_for

    cache = InMemoryDescriptorCache()
    instance = CachedBlobDescriptors(BlobDescriptors(fs(tmp_path)), cache)
    d = await _pushed_then_orphaned(tmp_path, instance)
    report = await _collect_for(cache)(fs(tmp_path), grace_s=0)
    assert [b for b, _ in report.blobs] == [str(d)]
    assert await cache.size(d) is None and not await cache.linked("repo", d)
    assert await instance.size(d) is None
