"""A host-wide deletion generation per storage: what lets a process cache
immutable content in memory and still never serve what another process
deleted.

Content-addressed data never changes under its digest: a manifest's bytes, a
blob's size, a repository's link to a blob or a manifest revision can only
*disappear* (blob or manifest DELETE, garbage collection). So an in-process
cache of them (``registry.storage.cache.ContentCache``) is exact as long as
it learns of every deletion. Deletions happen in every worker process of the
registry and in other processes (``registry garbage-collect``), so the news
travels through one 8-byte counter in a shared memory file:

* the file lives in ``/dev/shm`` (or ``tempfile.gettempdir()`` when there is
  no ``/dev/shm``) and its name is derived from the storage's identity
  (``storage_identity``: the driver name and its location parameters, e.g.
  the real path of a filesystem root or an S3 endpoint, bucket and root
  directory), so every process on the host that uses the same storage maps
  the same counter with no coordination;
* every deletion bumps it after the storage deletion and before the deleter
  answers (``StorageDriverWrapper.delete`` does this for every content path;
  garbage collection also bumps before and after each batch);
* a reader notes the generation *before* its storage read, and its fill is
  refused when the generation moved meanwhile; a cache drops everything when
  it sees the generation change (deletions are rare).

The bump is a read-modify-write under ``flock`` (rare; two deleters never
lose an increment); a read is one aligned 8-byte load from the mapping (a few
hundred nanoseconds, no syscall). The file is made ``0600``: every process on
the storage must run as the same user (they write the same files anyway).
When the file cannot be made (no writable shared directory), the generation
is ``unavailable``: ``current()`` then changes on every call, so nothing is
ever cached.

Scope of the counter: one host. Instances on several hosts share a storage
only with ``redis`` configured, and then the news also travels through Redis
(``SharedGeneration``, attached with ``Generation.attach``):

* a deletion also adds a random amount to one Redis key
  (``registry:content-generation``, ``INCRBY``) and the deleter answers only
  once every other instance's cache has dropped what it held: it waits for
  the ``INCRBY``'s reply and then one *lease* (``LEASE_S``, 0.25 s, plus 1 %
  and 10 ms for clock rate and timer slack) — see ``settle``;
* a reader trusts the Redis value it last read for one lease, counted from
  when it *sent* the ``GET``: a lease that began before the ``INCRBY`` was
  applied ends before the deleter answers, and a ``GET`` applied after it
  sees the new value. While the lease holds, a read costs no Redis round
  trip; in its second half the next read sends one ``GET`` in the background
  (under load: about ``2 / LEASE_S`` = 8 ``GET`` a second per process, not
  one per request), so a busy process never lets its lease run out;
* a lapsed lease (idle, Redis slow or down) makes ``current()`` new on
  every call: nothing is served from or filled into the cache until a
  ``GET`` succeeds again, and a renewal after a lapse always starts a new
  epoch (the cache starts empty: a deletion whose ``INCRBY`` was lost while
  Redis was down, or a restarted Redis whose counter came back to an old
  value, cannot leave an entry behind). The random increments make a
  restarted Redis's counter (it starts from zero) meet an old value only by
  a 2**-31 chance.

Each deleted path waits (a manifest DELETE removes its tags' links and its
revision link one after the other: one lease each). Garbage collection, in
the registry's schedule and in the CLI, deletes through a view
``without_waiting`` (a batch waiting a lease per path would outlive its
fence) and waits once at the end of its run (``settle``): when the run is
over, no instance serves from its cache what it swept.

What Redis down costs: reads are served from storage (a ``GET`` is tried at
most once a second; ``RedisClient`` logs the outage once and the health
check reports it); a deleter that cannot ``INCRBY`` still answers after its
wait (every lease that began before the deletion has ended by then, and no
lease can be renewed without Redis) and retries the ``INCRBY`` every second
until it lands. The case left: Redis reachable by the readers but not by
the deleter (a partition between one instance and Redis) — the readers'
caches then learn of the deletion when the deleter's retry lands.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import itertools
import json
import mmap
import os
import random
import struct
import tempfile
import time
from collections.abc import Mapping
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = [
    "LEASE_S",
    "REDIS_KEY",
    "SHARED_DIR_ENV",
    "TAG_REDIS_KEY",
    "Generation",
    "SharedGeneration",
    "host_path",
    "shared_directory",
    "storage_identity",
]

log = Logger(namespace="registry.storage.generation")

#: Seconds an instance trusts the generation it last read from Redis, and
#: so what a deletion waits before it answers (``SharedGeneration``).
LEASE_S = 0.25
#: The Redis key of the shared generation: one per Redis database (instances
#: of several registries on one Redis only drop each other's caches more
#: often; a per-storage key could differ between hosts that mount one
#: filesystem at different paths, and then miss deletions).
REDIS_KEY = "registry:content-generation"
#: The Redis key of the tag generation (``Generation.companion("tags")``):
#: bumped by every tag write, which a tag cache must never outlive.
TAG_REDIS_KEY = "registry:tag-generation"
#: Seconds between attempts to reach Redis after a failure (reads and the
#: retried ``INCRBY`` of a deletion).
RETRY_S = 1.0
#: The largest random increment of a deletion (2**31: a restarted Redis's
#: counter meets an old value by chance only; 2**32 deletions before the
#: 64-bit counter would overflow).
_MAX_STEP = 1 << 31

_FORMAT = struct.Struct("=Q")
#: Parameters that say *where* a driver's data is (not how to reach it):
#: they, with the driver name, identify a storage.
LOCATION_PARAMS = (
    "rootdirectory",
    "regionendpoint",
    "endpoint",
    "region",
    "bucket",
    "container",
    "accountname",
    "prefix",
)


#: Environment variable naming the directory for host-wide state instead of
#: ``/dev/shm`` (tests and sandboxes; every process of one storage must see
#: the same value, so production leaves it unset).
SHARED_DIR_ENV = "TWISTED_REGISTRY_SHARED_DIR"


def shared_directory() -> str:
    """Where host-wide state lives: ``$TWISTED_REGISTRY_SHARED_DIR`` when
    set, else ``/dev/shm`` if usable, else the temp dir."""
    override = os.environ.get(SHARED_DIR_ENV)
    if override:
        os.makedirs(override, mode=0o700, exist_ok=True)
        return override
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def storage_identity(name: str, params: Mapping[str, Any] | None) -> str:
    """A stable text naming the storage a driver ``name`` with ``params``
    reaches: the name and its location parameters (a filesystem root by its
    real path). Credentials and tuning parameters are not part of it."""
    params = params or {}
    location: dict[str, str] = {}
    for key in LOCATION_PARAMS:
        value = params.get(key)
        if value is None:
            continue
        text = str(value)
        if key == "rootdirectory" and name == "filesystem":
            text = os.path.realpath(text)
        location[key] = text
    return name + ":" + json.dumps(location, sort_keys=True)


def host_path(identity: str, kind: str, directory: str | None = None) -> str:
    """The path of host-wide state ``kind`` (``generation``, ``locks``) of the
    storage named ``identity``: the same in every process on the host."""
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    return os.path.join(directory or shared_directory(), f"registry-{kind}-{digest}")


class Generation:
    """The deletion generation of one storage, shared by every process on
    the host that opens it with the same identity (``shared``), or private
    to this process (``local``: for storages no other process can reach,
    such as the in-memory driver)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._local = [0]  # a list: views (without_waiting) share it
        self._broken = itertools.count(1 << 62)
        if path is None:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            self.path = None
            self.available = False
            return
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                with _Locked(fd):
                    if os.fstat(fd).st_size < _FORMAT.size:
                        os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError):
            os.close(fd)
            self.path = None
            self.available = False
            return
        self._fd = fd

    #: False when a shared file was asked for and could not be made: every
    #: ``current()`` is then new (nothing can be cached safely).
    available = True
    #: The generation shared through Redis (``attach``), or None: this host only.
    remote: SharedGeneration | None = None
    #: Whether ``settled()`` makes each deletion wait for every instance
    #: (False in a view for garbage collection, which waits once per run:
    #: ``without_waiting``).
    wait_each = True
    _view = False
    _companions: dict[str, Generation] | None = None

    @classmethod
    def shared(cls, identity: str, directory: str | None = None) -> Generation:
        """The host-wide generation of the storage named ``identity``."""
        return cls(host_path(identity, "generation", directory))

    @classmethod
    def local(cls) -> Generation:
        """A generation only this process sees."""
        return cls(None)

    def companion(self, kind: str) -> Generation:
        """A second counter of the same storage and scope, for changes of
        another ``kind`` than deletions (``"tags"``: tag writes, which a tag
        cache must see, but which must not empty the content cache). Its
        file sits next to this one's; it is private to this process when
        this one is, and never available when this one is not. One object
        per kind (``attach`` its Redis view separately)."""
        companions = self._companions
        if companions is None:
            companions = self._companions = {}
        found = companions.get(kind)
        if found is None:
            if self.path is not None:
                found = Generation(f"{self.path}-{kind}")
            else:
                found = Generation(None)
                found.available = self.available
            companions[kind] = found
        return found

    def attach(self, remote: SharedGeneration) -> None:
        """Share the generation through Redis too (``redis`` configured)."""
        self.remote = remote

    def without_waiting(self) -> Generation:
        """This generation (the same counter and Redis view), but deletions
        made through the view do not wait for every instance
        (``settled()`` is None): for garbage collection, which answers no
        request and waits once at the end (``settle()``)."""
        view = copy.copy(self)
        view.wait_each = False
        view._view = True
        return view

    def current(self) -> int:
        """The generation now (no syscall; with a Redis view, no round trip
        while its lease holds, and new on every call while it does not)."""
        m = self._map
        if m is not None:
            value: int = _FORMAT.unpack_from(m, 0)[0]
        elif not self.available:
            return next(self._broken)
        else:
            value = self._local[0]
        remote = self.remote
        if remote is None:
            return value
        epoch = remote.epoch()
        if epoch is None:
            return next(self._broken)
        return value | (epoch << 64)

    def bump(self) -> int:
        """Advance the generation (after a deletion); returns the new value
        of the host counter. With a Redis view, the shared counter is
        advanced too (in the background: ``settled()`` waits for it)."""
        if self.remote is not None:
            self.remote.bump()
        m = self._map
        if m is None:
            self._local[0] += 1
            return self._local[0]
        with _Locked(self._fd):
            value = (_FORMAT.unpack_from(m, 0)[0] + 1) & 0xFFFFFFFFFFFFFFFF
            _FORMAT.pack_into(m, 0, value)
        return int(value)

    def changed(self) -> Deferred[None] | None:
        """``bump()`` after a change, then ``settled()``: what the changer
        waits for before it answers (None: nothing to wait for)."""
        self.bump()
        return self.settled()

    def settled(self) -> Deferred[None] | None:
        """After ``bump()``: a Deferred firing once no instance can serve
        from its cache what the bump covers (``SharedGeneration.settle``),
        or None when there is nothing to wait for (this host only: the bump
        already reached every process; or a view ``without_waiting``)."""
        if self.remote is None or not self.wait_each:
            return None
        return self.remote.settle()

    def settle(self) -> Deferred[None]:
        """Like ``settled()`` but always waits for the Redis view (the end
        of a garbage collection run through a view ``without_waiting``)."""
        if self.remote is None:
            return succeed(None)
        return self.remote.settle()

    def close(self) -> None:
        if self._view:
            return
        for companion in (self._companions or {}).values():
            companion.close()
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Locked:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)


class SharedGeneration:
    """The deletion generation shared by every instance through one Redis
    key, read under a lease (see the module docstring for why this is exact).

    ``client`` is a ``registry.redis.RedisClient`` (anything with
    ``execute(*args)`` and ``closed``); ``clock`` a monotonic clock in
    seconds (the lease and the deleter's wait are both measured with it).
    """

    def __init__(
        self,
        client: Any,
        reactor: Any,
        *,
        key: str = REDIS_KEY,
        lease_s: float = LEASE_S,
        retry_s: float = RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.reactor = reactor
        self.key = key
        self.lease_s = lease_s
        self.retry_s = retry_s
        self.clock = clock
        self._value: Any = None
        self._epoch = 0
        self._until = float("-inf")  # the lease's end (clock seconds)
        self._held = False
        self._refreshing = False
        self._next_try = float("-inf")
        self._bumps: set[Deferred[Any]] = set()
        self._retry: Any = None  # the DelayedCall of a lost bump's retry
        #: Leases renewed, renewals that started a new epoch, reads Redis did
        #: not answer, deletions whose ``INCRBY`` failed (then retried).
        self.renewals = 0
        self.epochs = 0
        self.errors = 0
        self.lost_bumps = 0

    # -- readers ---------------------------------------------------------------

    def epoch(self) -> int | None:
        """The epoch of the view while its lease holds, else None (nothing
        may be served from a cache). Sends a ``GET`` in the background when
        the lease is in its second half or over."""
        now = self.clock()
        left = self._until - now
        if left < self.lease_s / 2 and not self._refreshing and now >= self._next_try:
            self._refresh(now)
            left = self._until - now  # a synchronous reply (tests) counts
        if left <= 0:
            self._held = False
            return None
        return self._epoch

    def _refresh(self, sent: float) -> None:
        self._refreshing = True
        try:
            d: Deferred[Any] = Deferred.fromCoroutine(self.client.execute("GET", self.key))
        except Exception as e:  # a closed client may fail at once
            self._refreshing = False
            self._failed(e)
            return
        d.addCallbacks(self._renewed, self._failed, callbackArgs=(sent,))
        d.addErrback(lambda f: log.failure("renewing the shared generation's lease failed", f))

    def _renewed(self, value: Any, sent: float) -> None:
        self._refreshing = False
        if not self._held or self.clock() >= self._until or value != self._value:
            # A lapse or a deletion: whatever was cached under the old epoch
            # may be stale (after a lapse even when the value is the same).
            self._epoch += 1
            self.epochs += 1
        self._value = value
        self._until = sent + self.lease_s
        self._held = True
        self.renewals += 1

    def _failed(self, failure: Any) -> None:
        self._refreshing = False
        self.errors += 1
        self._next_try = self.clock() + self.retry_s
        # The lease read before still holds until it ends; it is not renewed.

    # -- deleters --------------------------------------------------------------

    def bump(self) -> None:
        """Advance the shared counter (a deletion just happened)."""
        try:
            d: Deferred[Any] = Deferred.fromCoroutine(self.client.execute("INCRBY", self.key, random.randint(1, _MAX_STEP)))
        except Exception:
            self._lost()
            return
        self._bumps.add(d)

        def done(result: Any) -> None:
            self._bumps.discard(d)
            if isinstance(result, Failure):
                self._lost()

        d.addBoth(done)

    def _lost(self) -> None:
        """An ``INCRBY`` did not land: retry until one does (one suffices
        for any number of lost bumps)."""
        self.lost_bumps += 1
        if self._retry is None and not getattr(self.client, "closed", False):
            log.warn("could not advance the shared content generation in Redis; retrying every {s:g}s", s=self.retry_s)
            self._retry = self.reactor.callLater(self.retry_s, self._retry_bump)

    def _retry_bump(self) -> None:
        self._retry = None
        self.bump()

    def settle(self) -> Deferred[None]:
        """Fires once every ``INCRBY`` sent so far has its answer (or
        failed) and then one lease more has passed (plus 1 % and 10 ms):
        every instance's lease that began before those deletions has ended,
        so none serves from a cache what they deleted."""
        return Deferred.fromCoroutine(self._settle())

    async def _settle(self) -> None:
        pending = list(self._bumps)
        if pending:
            await DeferredList(pending, consumeErrors=True)
        deadline = self.clock() + self.lease_s * 1.01 + 0.01
        while True:
            left = deadline - self.clock()
            if left <= 0:
                return
            # ``callLater`` counts with the reactor's clock, which may be the
            # wall clock: check against the monotonic one and wait again.
            await deferLater(self.reactor, left, lambda: None)

    def close(self) -> None:
        """Stop retrying a lost bump."""
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def status(self) -> dict[str, Any]:
        return {
            "lease": self._held and self.clock() < self._until,
            "renewals": self.renewals,
            "epochs": self.epochs,
            "errors": self.errors,
            "lost_bumps": self.lost_bumps,
        }
