"""Sweep fences: how garbage collection in another process and the writes
of a serving registry stay out of each other's way, through the storage.

The storage driver has no compare-and-swap, so neither side can make "check,
then delete" or "check, then write" atomic. Instead both sides follow one
ordering rule (the two-flag handshake of Dekker's algorithm):

* The **collector**, before the final check that nothing uses a digest and
  the deletion of anything stored under it (a blob's data, a repository's
  layer link, a manifest revision link), writes a *fence*: an object under
  ``/docker/registry/v2/_gc/sweeping/`` naming those digests. It removes
  the fence only after the deletions.
* A **writer** that makes something depend on a digest (a manifest PUT's
  revision link, an upload's or mount's layer link) first writes that
  dependency, then reads the fences, waits while one names a digest it
  depends on, and then verifies, with the driver, that everything it depends
  on still exists.

Either the collector's final check comes after the writer's write (and sees
it, so it keeps the digest), or the writer's read of the fences comes after
the collector wrote its fence (and sees it, or, if the fence is already gone,
its verification sees the deletion). There is no third order, so a writer
never reports success for a dependency that a concurrent collection removes.

A fence carries an expiry (wall-clock seconds), so a collector that crashed
does not block writers forever: writers ignore an expired fence. A collector
therefore deletes only while less than half of its fence's lease has
passed (``Fence.usable``); the remaining risk is a collector that stalls for
more than half a lease between that check and one storage call, which the
lease (default 60 s) makes remote. Clocks of the processes sharing a storage
must agree to well within the lease.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from twisted.internet.task import deferLater

from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError

FENCE_DIR = f"{paths.ROOT}/_gc/sweeping"
#: How long a fence protects its digests after it is written (seconds).
LEASE_S = 60.0
#: How often a waiting writer re-reads the fences (seconds).
POLL_S = 0.02


@dataclass(frozen=True)
class FenceInfo:
    """A fence as a writer reads it."""

    path: str
    run: str
    expires: float
    digests: frozenset[str]


async def read_fences(driver: IStorageDriver) -> list[FenceInfo]:
    """Every fence in the storage (expired ones included); one ``list`` call
    when there are none. A fence that vanishes while being read is skipped;
    an unreadable one is kept with no expiry (it protects everything)."""
    try:
        entries = await driver.list(FENCE_DIR)
    except PathNotFoundError:
        return []
    found = []
    for entry in entries:
        try:
            data = await driver.get_content(entry)
        except PathNotFoundError:
            continue
        try:
            doc = json.loads(data)
            found.append(
                FenceInfo(entry, str(doc["run"]), float(doc["expires"]), frozenset(str(d) for d in doc["digests"]))
            )
        except (ValueError, KeyError, TypeError):
            # Being written by a driver without atomic put (not ours), or
            # damaged: honour it until it is old enough by its mtime.
            try:
                mtime = (await driver.stat(entry)).mod_time
            except PathNotFoundError:
                continue
            found.append(FenceInfo(entry, "?", mtime + LEASE_S, frozenset({"*"})))
    return found


async def wait_clear(
    driver: IStorageDriver,
    digests: Iterable[object],
    *,
    clock: Any = None,
    now: Callable[[], float] = time.time,
) -> None:
    """Return once no unexpired fence names any of ``digests`` (compared as
    strings). Call it after writing what depends on them and before
    verifying they exist."""
    wanted = {str(d) for d in digests}
    if clock is None:
        from twisted.internet import reactor

        clock = reactor
    while True:
        current = now()
        blocking = [
            f for f in await read_fences(driver) if f.expires > current and ("*" in f.digests or f.digests & wanted)
        ]
        if not blocking:
            return
        await deferLater(clock, POLL_S, lambda: None)


class Fence:
    """The collector's side: raise a fence over some digests, check that it
    may still delete, lower it."""

    def __init__(
        self,
        driver: IStorageDriver,
        run: str,
        digests: Iterable[object],
        lease_s: float = LEASE_S,
        now: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.driver = driver
        self.run = run
        self.digests = sorted({str(d) for d in digests})
        self.lease_s = lease_s
        self.path = f"{FENCE_DIR}/{run}-{uuid.uuid4().hex[:12]}"
        self._now = now
        self._monotonic = monotonic
        self._raised_at: float | None = None

    async def raise_(self) -> None:
        """Write the fence. Everything checked after this returns is safe to
        delete (if it is unused) while ``usable()``."""
        doc = {
            "run": self.run,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": self._now() + self.lease_s,
            "digests": self.digests,
        }
        started = self._monotonic()
        await self.driver.put_content(self.path, json.dumps(doc).encode())
        self._raised_at = started

    def usable(self) -> bool:
        """True while less than half the lease has passed since the fence was
        written (measured from before the write)."""
        return self._raised_at is not None and self._monotonic() - self._raised_at < self.lease_s / 2

    async def lower(self) -> None:
        """Remove the fence (after the deletions it covered)."""
        try:
            await self.driver.delete(self.path)
        except PathNotFoundError:
            pass
        self._raised_at = None
