"""Scheduled garbage collection inside the server
(``storage.maintenance.gc``): at most one collection at a time across every
registry instance sharing the storage, about once per ``interval``.

How the instances agree, through the storage only
-------------------------------------------------
One object, ``/docker/registry/v2/_gc/lease``, holds a small JSON document:
the current holder (``owner``, a random ``token``, ``expires``) and the
schedule (``last_started``, ``last_finished``, ``last_owner``,
``last_summary``). Every instance looks at it every ``check`` seconds
(a quarter of the interval, at most a minute; one ``get_content``):

* held (an owner whose ``expires`` is in the future): skip;
* not due (``now < last_started + interval``): skip;
* otherwise *take it*: write the document naming this instance with a fresh
  token, wait ``settle`` seconds, read it back, and collect only if the
  token read back is ours. While collecting, the holder renews ``expires``
  every third of the lease; when done it writes the document back with no
  owner and the run's start, end and summary (the schedule survives).

A holder that crashes stops renewing; its lease expires after at most
``lease`` seconds and the next due check of any instance takes over. Within
one process a tick that finds a collection still running does nothing, so a
collection never overlaps itself there.

Residual races, and why they are harmless
-----------------------------------------
The driver has no compare-and-swap, so taking the lease is "write, wait,
read back": if instance B's read-then-write spans more than ``settle``
seconds (a stalled process or a very slow storage), A may read back its own
token before B's write lands, and both collect. A holder that stalls for
longer than its lease (renewals not getting through) may be overtaken the
same way; it notices at its next renewal (the token is no longer its own),
logs it and stops renewing, but the collection it is in finishes. In both
cases two collections overlap, which costs work, not data: the collector is
safe against concurrent writers and concurrent collectors alike (sweep
fences, re-checks before every deletion, deletions of what is already gone
are quiet; ``registry.storage.gc``). Lease expiry and the schedule use the
processes' wall clocks, which must agree to well within ``settle`` and the
lease. A dry run writes the lease too (it coordinates; it is not data).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.config import GCConfig
from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError, StorageError
from registry.storage.gc import GCError, GCReport, collect

log = Logger(namespace="registry.gc.schedule")

LEASE_PATH = f"{paths.ROOT}/_gc/lease"
#: How long a lease lasts without renewal (seconds); renewed every third.
DEFAULT_LEASE_S = 300.0
#: How long a taker waits before reading its lease back (seconds).
DEFAULT_SETTLE_S = 2.0

Collect = Callable[..., Awaitable[GCReport]]


@dataclass(frozen=True)
class Lease:
    """The lease document as read from the storage."""

    owner: str = ""
    token: str = ""
    expires: float = 0.0
    last_started: float = 0.0
    last_finished: float = 0.0
    last_owner: str = ""
    last_summary: str = ""

    def held(self, now: float) -> bool:
        return bool(self.owner) and self.expires > now

    def to_bytes(self) -> bytes:
        return json.dumps(self.__dict__, sort_keys=True).encode()

    @classmethod
    def parse(cls, data: bytes) -> Lease:
        doc = json.loads(data)
        return cls(
            owner=str(doc.get("owner") or ""),
            token=str(doc.get("token") or ""),
            expires=float(doc.get("expires") or 0.0),
            last_started=float(doc.get("last_started") or 0.0),
            last_finished=float(doc.get("last_finished") or 0.0),
            last_owner=str(doc.get("last_owner") or ""),
            last_summary=str(doc.get("last_summary") or ""),
        )


@dataclass(frozen=True)
class RunRecord:
    """One collection this instance ran: when it took the lease (the
    schedule's ``last_started``), started and finished collecting."""

    taken: float
    started: float
    finished: float
    report: GCReport | None
    error: str | None = None


class GCScheduleService(Service):
    """Runs :func:`registry.storage.gc.collect` over ``driver`` about once per
    ``interval`` across all instances sharing the storage (see the module
    docstring). ``clock`` (default: the reactor) times the checks, the
    settle wait and the renewals, and its ``seconds()`` is the wall clock of
    the lease. ``collect`` is the collection to run (tests wrap the real
    one to hold it open)."""

    def __init__(
        self,
        driver: IStorageDriver,
        *,
        interval: float,
        grace: float,
        delete_untagged: bool = False,
        dry_run: bool = False,
        clock: Any = None,
        lease_s: float = DEFAULT_LEASE_S,
        settle_s: float = DEFAULT_SETTLE_S,
        check_s: float | None = None,
        owner: str | None = None,
        collect: Collect = collect,
    ) -> None:
        if interval <= 0:
            raise ValueError("the garbage collection interval must be positive")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.driver = driver
        self.interval = interval
        self.grace = grace
        self.delete_untagged = delete_untagged
        self.dry_run = dry_run
        self.clock = clock
        self.lease_s = lease_s
        self.settle_s = settle_s
        self.check_s = check_s if check_s is not None else min(interval / 4, 60.0)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._collect = collect
        self._loop: LoopingCall | None = None
        self._running: Deferred[None] | None = None
        #: The collections this instance ran (the last few), newest last.
        self.runs: deque[RunRecord] = deque(maxlen=32)
        #: Why recent checks did not collect ("held", "not due", "lost", "busy").
        self.skips: deque[str] = deque(maxlen=256)

    # -- lifecycle ------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self.tick)
        loop.clock = self.clock
        self._loop = loop
        loop.start(self.check_s, now=False).addErrback(
            lambda f: log.failure("garbage collection schedule stopped", f)
        )
        log.info(
            "scheduled garbage collection: every {interval}s (grace {grace}s, delete untagged: {untagged}, "
            "dry run: {dry}) as {owner}",
            interval=self.interval, grace=self.grace, untagged=self.delete_untagged, dry=self.dry_run,
            owner=self.owner,
        )

    def stopService(self) -> Deferred[None] | None:
        """Stop checking; a collection in progress is cancelled (between two
        storage calls; its fences are lowered) and its lease given back."""
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        running = self._running
        if running is None:
            return None
        done: Deferred[None] = Deferred()
        running.addBoth(lambda _: done.callback(None))
        running.cancel()
        return done

    # -- one check ----------------------------------------------------------------

    def tick(self) -> None:
        """One check (the loop calls it): start an attempt unless one is in
        progress in this process."""
        if self._running is not None:
            self.skips.append("busy")
            return
        attempt = ensureDeferred(self._attempt())
        self._running = attempt

        def finished(result: None | Failure) -> None:
            self._running = None
            if isinstance(result, Failure) and not result.check(CancelledError):
                log.failure("garbage collection check failed", result)

        attempt.addBoth(finished)

    async def _read(self) -> Lease | None:
        try:
            data = await self.driver.get_content(LEASE_PATH)
        except PathNotFoundError:
            return None
        try:
            return Lease.parse(data)
        except (ValueError, TypeError, AttributeError):
            log.warn("garbage collection lease {path} is unreadable; taking it over", path=LEASE_PATH)
            return None

    async def _attempt(self) -> None:
        current = await self._read()
        now = self.clock.seconds()
        if current is not None and current.held(now):
            self.skips.append("held")
            return
        if current is not None and now < current.last_started + self.interval:
            self.skips.append("not due")
            return
        token = uuid.uuid4().hex
        previous = current or Lease()
        mine = Lease(
            owner=self.owner,
            token=token,
            expires=now + self.lease_s,
            last_started=now,
            last_finished=previous.last_finished,
            last_owner=previous.last_owner,
            last_summary=previous.last_summary,
        )
        await self.driver.put_content(LEASE_PATH, mine.to_bytes())
        try:
            await deferLater(self.clock, self.settle_s, lambda: None)
            again = await self._read()
        except CancelledError:
            # Stopping before collecting: give the lease back, schedule unchanged.
            await self._release(mine, Lease(**{**previous.__dict__, "owner": "", "token": "", "expires": 0.0}))
            raise
        if again is None or again.token != token:
            self.skips.append("lost")
            log.info("garbage collection: another instance ({other}) took the lease", other=again.owner if again else "?")
            return
        await self._run(mine)

    async def _run(self, mine: Lease) -> None:
        renewing: list[Deferred[None]] = []

        def renew_once() -> Deferred[None]:
            d = ensureDeferred(self._renew(mine.token))
            renewing[:] = [d]
            return d

        renew = LoopingCall(renew_once)
        renew.clock = self.clock
        renew.start(self.lease_s / 3, now=False).addErrback(
            lambda f: None if f.check(_LeaseLost) else log.failure("garbage collection lease renewal failed", f)
        )
        started = self.clock.seconds()
        report: GCReport | None = None
        error: str | None = None
        try:
            report = await self._collect(
                self.driver, grace_s=self.grace, delete_untagged=self.delete_untagged, dry_run=self.dry_run
            )
            log.info(
                "scheduled garbage collection by {owner} took {seconds:.1f}s: {summary}",
                owner=self.owner, seconds=self.clock.seconds() - started, summary=report.summary(),
            )
        except CancelledError:
            error = "cancelled (the registry is stopping)"
            log.info("scheduled garbage collection cancelled: the registry is stopping")
        except (GCError, StorageError) as e:
            error = str(e)
            log.error("scheduled garbage collection failed: {error}", error=error)
        except Exception as e:
            error = f"{type(e).__name__}: {e}"
            log.failure("scheduled garbage collection failed")
        finally:
            if renew.running:
                renew.stop()
            if renewing and not renewing[0].called:
                # A renewal writing after the release would re-take the lease.
                pending: Deferred[None] = Deferred()
                renewing[0].addBoth(lambda _: pending.callback(None))
                await pending
            finished = self.clock.seconds()
            self.runs.append(RunRecord(mine.last_started, started, finished, report, error))
            summary = report.summary() if report is not None else f"failed: {error}"
            done = Lease(
                last_started=mine.last_started, last_finished=finished, last_owner=self.owner, last_summary=summary[:500]
            )
            await self._release(mine, done)

    async def _renew(self, token: str) -> None:
        current = await self._read()
        if current is None or current.token != token:
            log.warn(
                "garbage collection lease was taken over by {other} while this collection runs "
                "(a stall longer than the lease); finishing it without renewing",
                other=current.owner if current else "nobody",
            )
            raise _LeaseLost()
        renewed = Lease(**{**current.__dict__, "expires": self.clock.seconds() + self.lease_s})
        await self.driver.put_content(LEASE_PATH, renewed.to_bytes())

    async def _release(self, mine: Lease, replacement: Lease) -> None:
        """Write ``replacement`` (no owner) if the lease is still ``mine``."""
        try:
            current = await self._read()
            if current is None or current.token != mine.token:
                return
            await self.driver.put_content(LEASE_PATH, replacement.to_bytes())
        except StorageError as e:
            log.warn("could not give back the garbage collection lease ({error}); it expires by itself", error=str(e))


class _LeaseLost(Exception):
    """Ends the renewal loop (LoopingCall stops on an error)."""


def gc_schedule_service(config: GCConfig, driver: IStorageDriver, collect: Collect = collect) -> GCScheduleService | None:
    """``storage.maintenance.gc`` as a service, None when disabled;
    ``collect`` runs one collection (the app passes one that invalidates the
    blob-descriptor cache)."""
    if not config.enabled:
        return None
    return GCScheduleService(
        driver,
        interval=config.interval,
        grace=config.grace,
        delete_untagged=config.deleteuntagged,
        dry_run=config.dryrun,
        collect=collect,
    )
