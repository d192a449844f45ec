"""Upload locks shared by every instance through Redis (``IUploadLock``).

A lock is the Redis key ``registry:upload-lock:<name>:<upload id>`` holding
an owner token (random per acquisition), set with ``SET NX PX lease``: only
one holder at a time, and it disappears by itself ``lease`` after the last
renewal. The holder renews it every third of the lease while it holds it;
renewing and releasing are scripts that act only while the key still holds
the holder's token, so a holder whose lock expired can never extend or
remove the next holder's lock.

Bounds: an instance killed while holding a lock blocks other requests of
that upload for at most ``lease_s`` (default 5 s); a waiter notices a freed
lock within ``poll_s``. Requests of one upload inside one instance first
queue on a process-local lock (``ProcessLocks``), so only one request per
instance polls Redis.

Redis unreachable: acquiring fails with ``RedisUnavailable`` (a
``StorageError``, answered 503 by the resources) instead of falling back to
a lock that would not exclude other instances: two instances never append
to one upload at the same time, at the price of upload requests failing
while Redis is down (pulls are unaffected). A holder whose renewal fails
keeps going (its request is already appending); the lease bounds how long
the lock outlives a lost holder.
"""

from __future__ import annotations

import uuid
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from zope.interface import implementer

from registry.redis import RedisClient, RedisError, RedisUnavailable
from registry.storage.driver import StorageError
from registry.storage.interfaces import IUploadLock
from registry.storage.locks import ProcessLocks

log = Logger(namespace="registry.storage.redislock")

#: Seconds a lock lives after its last renewal.
LEASE_S = 5.0
#: Seconds between attempts of a waiter.
POLL_S = 0.05

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class LockUnavailable(StorageError):
    """The shared upload lock cannot be taken because Redis is unreachable."""


def lock_key(name: str, upload_id: str) -> str:
    return f"registry:upload-lock:{name}:{upload_id}"


@implementer(IUploadLock)
class RedisUploadLocks:
    """Per-upload locks in Redis, renewed while held."""

    def __init__(
        self, client: RedisClient, *, lease_s: float = LEASE_S, poll_s: float = POLL_S, reactor: Any = None
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.client = client
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.reactor = reactor
        self.local = ProcessLocks()

    async def acquire(self, name: str, upload_id: str) -> Callable[[], Awaitable[None]]:
        release_local = await self.local.acquire(name, upload_id)
        try:
            release_shared = await self._acquire_shared(lock_key(name, upload_id))
        except BaseException:
            await release_local()
            raise

        async def release() -> None:
            try:
                await release_shared()
            finally:
                await release_local()

        return release

    async def _acquire_shared(self, key: str) -> Callable[[], Awaitable[None]]:
        token = uuid.uuid4().hex
        lease_ms = int(self.lease_s * 1000)
        while True:
            try:
                got = await self.client.execute("SET", key, token, "NX", "PX", lease_ms)
            except RedisError as e:
                raise LockUnavailable(f"the upload lock cannot be taken: {e}") from None
            if got is not None:
                break
            await deferLater(self.reactor, self.poll_s, lambda: None)

        renewing = LoopingCall(self._renew, key, token, lease_ms)
        renewing.clock = self.reactor
        renewing.start(self.lease_s / 3, now=False)

        async def release() -> None:
            if renewing.running:
                renewing.stop()
            try:
                await self.client.execute("EVAL", _RELEASE, 1, key, token)
            except RedisError as e:
                # The key expires after the lease anyway.
                log.warn("releasing upload lock {key} failed ({error}); it expires by itself", key=key, error=e)

        return release

    def _renew(self, key: str, token: str, lease_ms: int) -> "Deferred[None]":
        async def renew() -> None:
            try:
                if not await self.client.execute("EVAL", _RENEW, 1, key, token, lease_ms):
                    log.warn("upload lock {key} was lost before its holder finished (its lease ran out)", key=key)
            except RedisError as e:
                log.warn("renewing upload lock {key} failed: {error}", key=key, error=e)

        from twisted.internet.defer import ensureDeferred

        return ensureDeferred(renew())


__all__ = ["LEASE_S", "LockUnavailable", "RedisUploadLocks", "RedisUnavailable", "lock_key"]
