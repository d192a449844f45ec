"""Upload locks local to this process (``IUploadLock``).

One ``DeferredLock`` per upload that is in use, dropped when nobody holds or
waits for it, so the table stays as small as the number of uploads being
written right now. Instances sharing a storage are not excluded from each
other by it: with ``redis`` configured, ``registry.storage.redislock``
takes this one's place (and uses it to queue one instance's requests).
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, DeferredLock, succeed
from zope.interface import implementer

from registry.storage.interfaces import IUploadLock


@implementer(IUploadLock)
class ProcessLocks:
    """Per-upload ``DeferredLock``s of this process."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], DeferredLock] = {}

    async def acquire(self, name: str, upload_id: str) -> Callable[[], "Deferred[None]"]:
        key = (name, upload_id)
        lock = self._locks.setdefault(key, DeferredLock())
        await lock.acquire()

        def release() -> "Deferred[None]":
            lock.release()
            if not lock.locked and not lock.waiting:
                self._locks.pop(key, None)
            return succeed(None)

        return release

    def held(self) -> int:
        """How many uploads have a lock in the table (held or waited for)."""
        return len(self._locks)
