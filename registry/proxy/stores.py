"""Read-through stores of a pull-through cache: the data model's blob,
manifest and tag stores wrapped so that what the local storage lacks is
fetched from the upstream registry and kept.

* Blobs (:class:`ProxyBlobStore`): a blob the repository has locally is
  served from storage. Otherwise the upstream is asked (``HEAD``) whether the
  repository has it; the pull then joins or starts the blob's single upstream
  download (:class:`registry.proxy.tee.BlobFetch`), streamed to the client
  while it is written into storage. With ``flights``
  (:class:`registry.proxy.flights.HostFlights`) one process of the host
  downloads a blob; a pull in another worker process waits for it to be
  stored and serves it from storage. ``open`` takes no repository name, so
  ``repo_size`` (which the blob resource calls first, as the interface asks)
  remembers which repository the upstream has the blob in.
* Manifests (:class:`ProxyManifestStore`): by digest, served from storage
  forever once cached (content addressed: it cannot change); fetched from the
  upstream and stored (bytes, revision link; no reference checks: the blobs
  are fetched when pulled) when not cached.
* Tags (:class:`ProxyTagStore`): a cached tag is served for ``ttl`` seconds
  after it was last checked (the modification time of its ``current/link``,
  rewritten at each check, so the age survives restarts); then the upstream
  is asked with a ``HEAD`` whether the tag still points at the stored digest,
  and a new digest's manifest is fetched. An unreachable upstream serves the
  cached tag; a tag the cache does not hold is then 503 ``UNAVAILABLE``.
  Tag listings come from the upstream (the cache's own when it is down).

Writes (pushes, deletes) never reach these stores: the resources refuse them
with 405 ``UNSUPPORTED`` in a pull-through cache (``Context.pull_through``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from zope.interface import implementer

from registry.digest import Digest
from registry.manifest_types import ManifestError, parse_manifest
from registry.proxy.flights import HostFlights
from registry.proxy.tee import BlobFetch
from registry.proxy.upstream import Upstream, UpstreamUnavailable
from registry.storage import paths
from registry.storage.blobs import link_content
from registry.storage.driver import DriverError, IFileReader, IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown, ManifestUnknown
from registry.storage.interfaces import IBlobStore, IManifestStore, ITagStore, IUploadStore

#: Flights a pull that joined too late waits for before giving up, when
#: storing the blob keeps failing.
OPEN_ATTEMPTS = 3
#: Blobs whose upstream repository ``repo_size`` remembers for ``open``.
SOURCES_KEPT = 4096


@implementer(IBlobStore)
class ProxyBlobStore:
    """``IBlobStore`` reading through to the upstream (module docstring)."""

    def __init__(
        self,
        local: IBlobStore,
        uploads: IUploadStore,
        upstream: Upstream,
        clock: Any,
        *,
        flights: HostFlights | None = None,
        **fetch_options: Any,
    ) -> None:
        self.local = local
        self.descriptors = local.descriptors
        self.uploads = uploads
        self.upstream = upstream
        self.clock = clock
        #: Which process of the host fetches a blob (None: this process only).
        self.flights = flights
        self.fetch_options = fetch_options
        #: The single flights: one download per blob digest.
        self.fetches: dict[Digest, BlobFetch] = {}
        self._sources: OrderedDict[Digest, tuple[str, int]] = OrderedDict()

    async def repo_size(self, name: str, d: Digest) -> int:
        try:
            return await self.local.repo_size(name, d)
        except BlobUnknown:
            pass
        fetch = self.fetches.get(d)
        if fetch is not None and name in fetch.link_names:
            return fetch.size
        size = await self.upstream.blob_size(name, d)
        if size is None:
            raise BlobUnknown(d, name)
        if fetch is not None:
            fetch.link_names.add(name)
        elif await self.descriptors.size(d) == size:
            # Stored for another repository; the upstream says this one has it too.
            await self.descriptors.link(name, d)
        self._remember(d, name, size)
        return size

    def _remember(self, d: Digest, name: str, size: int) -> None:
        self._sources[d] = (name, size)
        self._sources.move_to_end(d)
        while len(self._sources) > SOURCES_KEPT:
            self._sources.popitem(last=False)

    async def open(self, d: Digest, offset: int = 0) -> IFileReader:
        for _ in range(OPEN_ATTEMPTS):
            fetch = self.fetches.get(d)
            if fetch is None:
                stored = await self.descriptors.size(d) is not None
                # Another pull may have started the flight while we looked.
                fetch = self.fetches.get(d)
            if fetch is None:
                if stored:
                    return await self.local.open(d, offset)
                source = self._sources.get(d)
                if source is None:
                    raise BlobUnknown(d)
                fetch = await self._flight(d, *source)
                if fetch is None:  # another process fetched and stored it
                    return await self.local.open(d, offset)
            reader = fetch.join(offset)
            if reader is not None:
                return reader
            # Those bytes already left the window: read the stored copy.
            if await fetch.wait_stored():
                return await self.local.open(d, offset)
            if fetch.error is not None:
                if isinstance(fetch.error, UpstreamUnavailable):
                    raise fetch.error
                raise UpstreamUnavailable(f"blob {d}", str(fetch.error))
            # Verified but not stored (a storage failure): fetch again.
        raise DriverError("proxy", f"blob {d} was fetched from the upstream but could not be stored")

    async def _flight(self, d: Digest, name: str, size: int) -> BlobFetch | None:
        """This process's flight of blob ``d``: the running one, or a new one
        once no other process of the host is fetching ``d``; None when the
        blob was stored meanwhile (by the flight of another process)."""
        if self.flights is None:
            return self._start(d, name, size)
        while True:
            fetch = self.fetches.get(d)
            if fetch is not None:
                return fetch
            release = self.flights.try_acquire(d)
            if release is not None:
                try:
                    stored = await self.descriptors.size(d) is not None
                except BaseException:
                    release()
                    raise
                if stored:
                    release()
                    # Stored by another process's flight, which linked its own
                    # repositories: this pull's repository is linked here.
                    await self.descriptors.link(name, d)
                    return None
                return self._start(d, name, size, release)
            # Another process (or a flight of ours that is ending) has it.
            await deferLater(self.clock, self.flights.poll_s, lambda: None)

    def _start(self, d: Digest, name: str, size: int, release: Callable[[], None] | None = None) -> BlobFetch:
        fetch = BlobFetch(self.upstream, self.local, self.uploads, name, d, size, self.clock, **self.fetch_options)
        self.fetches[d] = fetch

        def ended(done: BlobFetch) -> None:
            if self.fetches.get(d) is done:
                del self.fetches[d]
            if release is not None:
                release()  # stored (or failed): other processes may look now

        fetch.on_done = ended
        Deferred.fromCoroutine(fetch.run())  # never fails
        return fetch

    async def get_content(self, d: Digest) -> bytes:
        return await self.local.get_content(d)

    async def put_content(self, d: Digest, data: bytes) -> None:
        await self.local.put_content(d, data)

    async def redirect_url(self, d: Digest, method: str = "GET") -> str | None:
        if d in self.fetches or await self.descriptors.size(d) is None:
            return None  # being fetched: served here, as it arrives
        return await self.local.redirect_url(d, method)


async def store_manifest(driver: IStorageDriver, blobs: IBlobStore, name: str, d: Digest, body: bytes) -> None:
    """Keep manifest ``body`` (digest ``d``, verified) as a revision of
    ``name``, as a push would, without reference checks; with its referrers
    entry when it has a subject."""
    await blobs.put_content(d, body)
    await driver.put_content(paths.manifest_revision_link(name, d), link_content(d))
    try:
        subject = parse_manifest(body, None).subject
    except ManifestError:
        subject = None
    if subject is not None:
        await driver.put_content(paths.referrer_link(name, subject.digest, d), link_content(d))


@implementer(IManifestStore)
class ProxyManifestStore:
    """``IManifestStore`` reading through to the upstream (module docstring)."""

    def __init__(self, local: IManifestStore, driver: IStorageDriver, blobs: IBlobStore, upstream: Upstream) -> None:
        self.local = local
        self.driver = driver
        self.blobs = blobs
        self.upstream = upstream

    async def exists(self, name: str, d: Digest) -> bool:
        if await self.local.exists(name, d):
            return True
        try:
            await self.get(name, d)
        except ManifestUnknown:
            return False
        return True

    async def get(self, name: str, d: Digest) -> bytes:
        try:
            return await self.local.get(name, d)
        except ManifestUnknown:
            pass
        fetched = await self.upstream.get_manifest(name, str(d))
        if fetched is None or fetched.digest != d:
            raise ManifestUnknown(name, str(d))
        await store_manifest(self.driver, self.blobs, name, d, fetched.body)
        return fetched.body

    async def put(self, name: str, body: bytes, manifest: Any, d: Digest, tag: str | None = None) -> None:
        await self.local.put(name, body, manifest, d, tag)

    async def delete(self, name: str, d: Digest) -> list[str]:
        result: list[str] = await self.local.delete(name, d)
        return result

    async def referrers(self, name: str, subject: Digest) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self.local.referrers(name, subject)
        return result


@implementer(ITagStore)
class ProxyTagStore:
    """``ITagStore`` revalidating cached tags with the upstream after ``ttl``
    seconds (module docstring)."""

    def __init__(
        self,
        local: ITagStore,
        driver: IStorageDriver,
        blobs: IBlobStore,
        upstream: Upstream,
        ttl: float,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.local = local
        self.driver = driver
        self.blobs = blobs
        self.upstream = upstream
        self.ttl = ttl
        self.now = now

    async def _cached(self, name: str, tag: str) -> tuple[Digest, float] | None:
        """The cached digest of the tag and its age in seconds, or None."""
        try:
            d: Digest = await self.local.resolve(name, tag)
            info = await self.driver.stat(paths.tag_current_link(name, tag))
        except (ManifestUnknown, PathNotFoundError):
            return None
        return d, self.now() - info.mod_time

    async def resolve(self, name: str, tag: str) -> Digest:
        cached = await self._cached(name, tag)
        if cached is not None and cached[1] < self.ttl:
            return cached[0]
        try:
            if cached is not None:
                upstream_digest = await self.upstream.manifest_digest(name, tag)
                if upstream_digest is None:
                    raise ManifestUnknown(name, tag)
                if upstream_digest == cached[0]:
                    await self.local.tag(name, tag, upstream_digest)  # checked now: the ttl starts again
                    return upstream_digest
            fetched = await self.upstream.get_manifest(name, tag)
        except UpstreamUnavailable:
            if cached is not None:
                return cached[0]  # stale, but the upstream cannot say otherwise
            raise
        if fetched is None:
            raise ManifestUnknown(name, tag)
        await store_manifest(self.driver, self.blobs, name, fetched.digest, fetched.body)
        await self.local.tag(name, tag, fetched.digest)
        return fetched.digest

    async def tag(self, name: str, tag: str, d: Digest) -> None:
        await self.local.tag(name, tag, d)

    async def untag(self, name: str, tag: str) -> None:
        await self.local.untag(name, tag)

    async def untag_each(self, name: str, tags: list[str]) -> list[str]:
        removed: list[str] = await self.local.untag_each(name, tags)
        return removed

    async def all(self, name: str) -> list[str] | None:
        try:
            upstream = await self.upstream.tags(name)
        except UpstreamUnavailable:
            cached: list[str] | None = await self.local.all(name)
            return cached
        return sorted(upstream) if upstream is not None else None

    async def tags_of(self, name: str, d: Digest) -> list[str]:
        result: list[str] = await self.local.tags_of(name, d)
        return result
