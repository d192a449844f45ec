"""One upstream download of a blob, teed to every client pulling it and into
local storage while it arrives.

A :class:`BlobFetch` is the single flight of blob ``d``: the upstream's body
(verified by the client library: SHA-256 as it streams, size, Range resume)
goes into a bounded window of recent chunks. Readers
(:class:`TeeReader`, an ``IFileReader`` the blob resource streams from like
any driver reader) take bytes from the window at their own pace; one of them
is the storage sink, which appends the bytes to an upload and commits it as
blob ``d`` once the download is verified (the upload store verifies the
digest again from its own hash state). A failed download or a digest
mismatch cancels the upload: nothing unverified is ever stored.

Memory stays bounded: the window keeps the bytes some reader still needs
plus the last ``retain`` bytes (so a pull that starts a moment later joins
the same flight), and the upstream is paused while the slowest reader is
more than ``high_water`` bytes behind. A client that holds the upstream back
for longer than ``laggard_timeout`` seconds is detached: it continues from
local storage once the blob is stored, and the others go on at the
upstream's pace.

Clients never receive the blob's last byte before the digest is verified, so
a client cannot mistake a corrupt upstream body for the blob: on a mismatch
its response is cut short.
"""

from __future__ import annotations

import bisect
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from registry.digest import Digest
from registry.proxy.upstream import Upstream
from registry.storage.driver import IFileReader
from registry.storage.interfaces import IBlobStore, IUploadStore

log = Logger(namespace="registry.proxy")

HIGH_WATER = 8 * 1024 * 1024
RETAIN = 4 * 1024 * 1024
LAGGARD_TIMEOUT = 10.0
SINK_CHUNK = 1 << 20


class FetchFailed(Exception):
    """The shared download failed; readers of it see this (after their
    response started, the connection is cut)."""


@implementer(IConsumer)
class BlobFetch:
    """The single flight of one blob; see the module docstring.

    ``name`` is a repository the upstream has the blob in (the one the first
    pull asked for); ``size`` its size there. ``run()`` downloads, stores and
    links the blob into ``name`` and every name in ``link_names``; it never
    fails (``stored`` says how it ended)."""

    def __init__(
        self,
        upstream: Upstream,
        local: IBlobStore,
        uploads: IUploadStore,
        name: str,
        d: Digest,
        size: int,
        clock: Any,
        *,
        high_water: int = HIGH_WATER,
        retain: int = RETAIN,
        laggard_timeout: float = LAGGARD_TIMEOUT,
    ) -> None:
        self.upstream = upstream
        self.local = local
        self.uploads = uploads
        self.name = name
        self.digest = d
        self.size = size
        self.clock = clock
        self.high_water = high_water
        self.retain = retain
        self.laggard_timeout = laggard_timeout
        self.link_names: set[str] = {name}
        # The window: chunks[i] holds bytes from starts[i].
        self._starts: list[int] = []
        self._chunks: list[bytes] = []
        self.head = 0  # bytes received
        self.verified = False
        self.error: BaseException | None = None
        self.readers: set[TeeReader] = set()
        self._waiters: list[Deferred[None]] = []
        self._producer: IPushProducer | None = None
        self._paused = False
        self._laggard_call: Any = None
        #: Fires (with True when the blob is stored, False when not) at the end of ``run``.
        self._stored: list[Deferred[bool]] = []
        self.done = False
        self.stored_ok = False
        self.peak_window = 0
        #: Called when the flight ends, before anyone waiting is told.
        self.on_done: Any = None
        # The storage sink reads from the start; registered before any byte arrives.
        self.sink = TeeReader(self, 0, trusted=True)

    # ------------------------------------------------------------ the window

    @property
    def base(self) -> int:
        """The first byte still in the window."""
        return self._starts[0] if self._starts else self.head

    def window_bytes(self) -> int:
        return self.head - self.base

    def visible(self, trusted: bool) -> int:
        """How far a reader may read: everything for the sink; for clients,
        all but the last byte until the download is verified."""
        if trusted or self.verified:
            return self.head
        return min(self.head, self.size - 1)

    def slice(self, pos: int, max_bytes: int, limit: int) -> bytes:
        """Bytes from ``pos`` (in the window), at most ``max_bytes``, below ``limit``."""
        end = min(limit, pos + max_bytes)
        i = bisect.bisect_right(self._starts, pos) - 1
        parts: list[bytes] = []
        while pos < end and i < len(self._chunks):
            start, chunk = self._starts[i], self._chunks[i]
            piece = chunk[pos - start : end - start]
            parts.append(piece)
            pos += len(piece)
            i += 1
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _min_position(self) -> int:
        positions = [r.pos for r in self.readers if not r.detached]
        return min(positions) if positions else self.head

    def _trim(self) -> None:
        keep_from = min(self._min_position(), self.head - self.retain)
        drop = 0
        while drop < len(self._chunks) and self._starts[drop] + len(self._chunks[drop]) <= keep_from:
            drop += 1
        if drop:
            del self._starts[:drop]
            del self._chunks[:drop]

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.callback(None)

    def changed(self) -> "Deferred[None]":
        """Fires at the next change (bytes, verification, failure)."""
        w: Deferred[None] = Deferred()
        self._waiters.append(w)
        return w

    def advanced(self) -> None:
        """A reader moved or left: drop what nobody needs, maybe resume."""
        self._trim()
        if self._paused and self.head - self._min_position() <= self.high_water // 2:
            self._resume()

    # ------------------------------------------------------------ IConsumer (the upstream download)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None
        self._cancel_laggard_check()

    def write(self, data: bytes) -> None:
        self._starts.append(self.head)
        self._chunks.append(data)
        self.head += len(data)
        self.peak_window = max(self.peak_window, self.window_bytes())
        self._wake()
        if not self._paused and self.head - self._min_position() > self.high_water:
            self._pause()

    def _pause(self) -> None:
        if self._producer is None:
            return
        self._paused = True
        self._producer.pauseProducing()
        if self._laggard_call is None and self.laggard_timeout > 0:
            self._laggard_call = self.clock.callLater(self.laggard_timeout, self._detach_laggards)

    def _resume(self) -> None:
        self._paused = False
        self._cancel_laggard_check()
        if self._producer is not None:
            self._producer.resumeProducing()

    def _cancel_laggard_check(self) -> None:
        if self._laggard_call is not None and self._laggard_call.active():
            self._laggard_call.cancel()
        self._laggard_call = None

    def _detach_laggards(self) -> None:
        """The upstream was held back too long: detach the clients that hold
        it (never the storage sink); they continue from storage."""
        self._laggard_call = None
        if not self._paused:
            return
        behind = self.head - self.high_water // 2
        for reader in list(self.readers):
            if not reader.trusted and not reader.detached and reader.pos < behind:
                reader.detached = True
                log.info("a slow client of blob {digest} continues from storage", digest=str(self.digest))
        self.advanced()

    # ------------------------------------------------------------ readers

    def join(self, offset: int) -> "TeeReader | None":
        """A reader from ``offset``, or None when those bytes have left the
        window (the caller reads the stored blob after ``wait_stored``)."""
        if self.error is not None or offset < self.base or self.done:
            return None
        return TeeReader(self, offset)

    def wait_stored(self) -> "Deferred[bool]":
        if self.done:
            return succeed(self.stored_ok)
        d: Deferred[bool] = Deferred()
        self._stored.append(d)
        return d

    # ------------------------------------------------------------ the flight

    async def run(self) -> None:
        """Download, store and link; never fails (``wait_stored`` tells)."""
        download = Deferred.fromCoroutine(self._download())
        try:
            await self._store()
        except BaseException as e:
            log.warn("storing blob {digest} fetched from the upstream failed: {error}", digest=str(self.digest), error=str(e))
        finally:
            # Without the sink the window no longer waits for storage; the
            # clients reading still get the (verified) download.
            self.sink.close()
            await download  # _download never fails
            self._finish()

    async def _download(self) -> None:
        try:
            await self.upstream.fetch_blob(self.name, self.digest, self, self.size)
            if self.head != self.size:
                raise FetchFailed(f"blob {self.digest}: the upstream sent {self.head} bytes, expected {self.size}")
            self.verified = True
        except BaseException as e:  # noqa: B036 - every failure ends the flight for its readers
            self.error = e
            log.warn("upstream download of {digest} failed: {error}", digest=str(self.digest), error=str(e))
        finally:
            self._cancel_laggard_check()
            self._wake()

    async def _store(self) -> None:
        """Append the bytes to an upload as they pass; commit when verified."""
        upload_id = await self.uploads.create(self.name)
        appender = await self.uploads.open_appender(self.name, upload_id)
        appended = False
        try:
            while True:
                chunk = await self.sink.read(SINK_CHUNK)
                if not chunk:
                    break
                await appender.write(chunk)
            appended = True
            await appender.finish()
        except BaseException:
            if not appended:
                await appender.fail()
            await self._cancel_upload(upload_id)
            return
        try:
            await self.uploads.commit(self.name, upload_id, self.digest)
        except BaseException as e:
            log.warn("storing blob {digest} fetched from the upstream failed: {error}", digest=str(self.digest), error=str(e))
            await self._cancel_upload(upload_id)
            return
        for other in self.link_names - {self.name}:
            try:
                await self.local.descriptors.link(other, self.digest)
            except Exception as e:
                log.warn("linking {digest} into {name} failed: {error}", digest=str(self.digest), name=other, error=str(e))
        self.stored_ok = True

    async def _cancel_upload(self, upload_id: str) -> None:
        try:
            await self.uploads.cancel(self.name, upload_id)
        except Exception as e:
            log.warn("removing the partial copy of {digest} failed: {error}", digest=str(self.digest), error=str(e))

    def _finish(self) -> None:
        self.done = True
        if self.on_done is not None:
            self.on_done(self)
        waiters, self._stored = self._stored, []
        for w in waiters:
            w.callback(self.stored_ok)
        self._wake()


@implementer(IFileReader)
class TeeReader:
    """A reader of a :class:`BlobFetch` from ``pos``. ``trusted``: the storage
    sink (reads unverified bytes). A detached reader continues from the
    stored blob."""

    def __init__(self, fetch: BlobFetch, pos: int, *, trusted: bool = False) -> None:
        self.fetch = fetch
        self.pos = pos
        self.trusted = trusted
        self.detached = False
        self.closed = False
        self._local: IFileReader | None = None
        fetch.readers.add(self)

    def read(self, max_bytes: int) -> "Deferred[bytes]":
        return Deferred.fromCoroutine(self._read(max_bytes))

    async def _read(self, max_bytes: int) -> bytes:
        fetch = self.fetch
        while True:
            if self._local is not None:
                chunk: bytes = await self._local.read(max_bytes)
                self.pos += len(chunk)
                return chunk
            if self.closed:
                raise FetchFailed("read of a closed reader")
            if self.detached:
                await self._continue_from_storage()
                continue
            if fetch.error is not None:
                raise FetchFailed(f"the upstream download of {fetch.digest} failed: {fetch.error}")
            limit = fetch.visible(self.trusted)
            if self.pos < limit:
                chunk = fetch.slice(self.pos, max_bytes, limit)
                self.pos += len(chunk)
                fetch.advanced()
                return chunk
            if self.pos >= fetch.size and (self.trusted or fetch.verified):
                return b""
            if fetch.done:
                raise FetchFailed(f"the upstream download of {fetch.digest} ended early")
            await fetch.changed()

    async def _continue_from_storage(self) -> None:
        fetch = self.fetch
        fetch.readers.discard(self)
        fetch.advanced()
        if not await fetch.wait_stored():
            raise FetchFailed(f"blob {fetch.digest} could not be stored, so a slow reader cannot continue")
        self._local = await fetch.local.open(fetch.digest, self.pos)

    def close(self) -> "Deferred[None]":
        if not self.closed:
            self.closed = True
            self.fetch.readers.discard(self)
            self.fetch.advanced()
        if self._local is not None:
            local, self._local = self._local, None
            return local.close()
        return succeed(None)

