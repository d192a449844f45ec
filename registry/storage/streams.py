"""Stream plumbing shared by every driver: read-ahead and small-write gathering.

A driver that moves bytes in pieces (a thread-pool call, a command to a child
process, an HTTP request to an object store) implements one of two small
contracts and gets a complete ``IFileReader`` / ``IFileWriter`` from here:

* ``IPieceSource`` + ``ReadAhead``: the reader fetches pieces ahead of the
  caller, at most ``depth`` of them in flight or buffered (so a slow
  consumer holds at most ``depth`` pieces), and serves ``read(max_bytes)``
  from them.
* ``IPieceSink`` + ``GatheringWriter``: small writes gather into pieces of
  ``piece_bytes``; large writes are cut into pieces without copying; at most
  ``max_in_flight`` pieces are handed to the sink at a time, and ``write``
  fires once no more than ``window_bytes`` are handed over but not yet
  acknowledged (the backpressure). The first failed piece fails the next
  ``write`` (or ``close``, if no ``write`` has reported it); ``commit`` waits
  for every piece and never commits after a failed one.

Misuse (a second ``read`` before the first fired, use after ``close``) is the
wrapper's job (``registry.storage.wrapper``), not these helpers'.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from registry.storage.driver import IFileReader, IFileWriter

Piece = Sequence["bytes | memoryview"]


class IPieceSource(Interface):
    """Where a ``ReadAhead`` gets its bytes."""

    def fetch(offset: int, size: int) -> "Deferred[bytes]":
        """Fire with up to ``size`` bytes starting at ``offset`` (positional
        sources) or the next up to ``size`` bytes (sequential sources, which
        ignore ``offset``); ``b""`` at the end. Several fetches may be in
        flight; sequential sources must answer them in the order asked."""

    def close() -> "Deferred[None]":
        """Release the source; called once no fetch is in flight."""


class IPieceSink(Interface):
    """Where a ``GatheringWriter`` puts its bytes."""

    def send(piece: Piece) -> "Deferred[None]":
        """Append the bytes of ``piece`` (a list of bytes-like chunks) after
        everything sent before; fire once they are written. The chunks stay
        valid only until ``send`` returns if the sink copies them then, or
        until the Deferred fires otherwise."""

    def close() -> "Deferred[None]":
        """Release the object, keeping what was written (for an append)."""

    def commit() -> "Deferred[None]":
        """Make the object final and durable, then release it."""

    def cancel() -> "Deferred[None]":
        """Discard the object, then release it."""

    def abort() -> "Deferred[None]":
        """A piece failed and the caller asked to commit: release the object
        without committing it (``close`` or ``cancel``, as the backend's
        resumable uploads need)."""


class _Fetch:
    """One piece asked of the source: its offset and, once answered, the result."""

    __slots__ = ("offset", "done", "result")

    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.done = False
        self.result: Any = None


@implementer(IFileReader)
class ReadAhead:
    """An ``IFileReader`` over an ``IPieceSource`` that fetches ahead.

    ``positional`` sources read at offsets (a file): a short piece is the end
    of the object *as it is now*, so pieces asked beyond it are dropped and
    fetching resumes at its end (an object that grows meanwhile is read
    without gaps), and ``b""`` is not final. Sequential sources (a remote
    handle) deliver pieces in order; only ``b""`` ends the stream, for good;
    they are asked for ``depth`` pieces from the first read on, while a
    positional source is asked for one piece at a time until a full one
    arrives (a small file costs one fetch). Pieces are used in the order
    asked, whatever order they arrive in.
    """

    def __init__(
        self, source: IPieceSource, piece_bytes: int, depth: int, offset: int = 0, positional: bool = True
    ) -> None:
        self.source = source
        self.piece_bytes = piece_bytes
        self.depth = depth
        self.positional = positional
        self._next = offset  # offset of the next piece to ask for
        self._ramped = not positional  # fetch up to ``depth`` (else one at a time)
        self._pending: deque[_Fetch] = deque()  # asked and still wanted, in order
        self._in_flight = 0  # asked and not yet answered (wanted or not)
        self._settled: list[Deferred[None]] = []  # fire when _in_flight drops to 0
        self._buffer: deque[bytes] = deque()  # answered, not yet read
        self._head = 0  # bytes of self._buffer[0] already returned
        self._eof = False
        self._error: Failure | None = None
        self._waiter: tuple[Deferred[bytes], int] | None = None
        self._closed = False

    # fetching ------------------------------------------------------------------

    def _fill(self) -> None:
        limit = self.depth if self._ramped else 1
        while (
            not self._eof
            and self._error is None
            and not self._closed
            and len(self._pending) + len(self._buffer) < limit
        ):
            fetch = _Fetch(self._next)
            self._next += self.piece_bytes
            self._in_flight += 1
            self._pending.append(fetch)
            d: Deferred[bytes] = maybeDeferred(self.source.fetch, fetch.offset, self.piece_bytes)
            d.addBoth(self._answered, fetch)

    def _answered(self, result: Any, fetch: _Fetch) -> None:
        fetch.done, fetch.result = True, result
        self._in_flight -= 1
        if self._in_flight == 0:
            settled, self._settled = self._settled, []
            for s in settled:
                s.callback(None)
        if self._closed:
            return
        # A fetch dropped meanwhile is no longer in _pending: its answer
        # (even a failure) is ignored here.
        while self._pending and self._pending[0].done:
            self._use(self._pending.popleft())
        self._wake()
        self._fill()

    def _use(self, fetch: _Fetch) -> None:
        result = fetch.result
        if isinstance(result, Failure):
            if self._error is None:
                self._error = result
            return
        data: bytes = result
        if data:
            self._buffer.append(data)
        if len(data) == self.piece_bytes:
            self._ramped = True
        elif not self.positional:
            if not data:
                self._eof = True
        else:
            # The end of the object as it is now: forget pieces asked beyond it.
            self._pending.clear()
            self._next = fetch.offset + len(data)
            self._ramped = False
            if not data:
                self._eof = True  # until the next read asks again

    # reading -------------------------------------------------------------------

    def _take(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` buffered bytes (at least 1)."""
        first = self._buffer[0]
        start = self._head
        if len(first) - start > max_bytes:
            self._head = start + max_bytes
            return first[start : start + max_bytes]
        self._buffer.popleft()
        self._head = 0
        part = first[start:] if start else first
        if not self._buffer or len(part) + len(self._buffer[0]) > max_bytes:
            return part
        parts = [part]
        size = len(part)
        while self._buffer and size + len(self._buffer[0]) <= max_bytes:
            chunk = self._buffer.popleft()
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def _wake(self) -> None:
        if self._waiter is None:
            return
        d, max_bytes = self._waiter
        if self._buffer:
            self._waiter = None
            data = self._take(max_bytes)
            self._fill()
            d.callback(data)
        elif self._error is not None:
            self._waiter = None
            d.errback(self._error)
        elif self._eof:
            self._waiter = None
            d.callback(b"")

    def read(self, max_bytes: int) -> Deferred[bytes]:
        """Fire with 1..``max_bytes`` bytes, or ``b""`` at the end."""
        if self._buffer:
            data = self._take(max_bytes)
            self._fill()
            return succeed(data)
        if self._error is not None:
            return fail(self._error)
        if self._eof:
            if not self.positional:
                return succeed(b"")
            self._eof = False  # a file may have grown: look again
        d: Deferred[bytes] = Deferred()
        self._waiter = (d, max_bytes)
        self._fill()
        self._wake()
        return d

    def close(self) -> Deferred[None]:
        """Drop what is buffered; close the source once no fetch is in flight."""
        if self._closed:
            return succeed(None)
        self._closed = True
        self._buffer.clear()
        self._head = 0
        self._pending.clear()
        if self._in_flight == 0:
            return maybeDeferred(self.source.close)
        settled: Deferred[None] = Deferred()
        self._settled.append(settled)
        return settled.addCallback(lambda _: self.source.close())


@implementer(IFileWriter)
class GatheringWriter:
    """An ``IFileWriter`` over an ``IPieceSink``; see the module docstring.

    ``size`` starts at the object's size (for appends) and counts every byte
    accepted by ``write``.
    """

    def __init__(
        self,
        sink: IPieceSink,
        piece_bytes: int,
        window_bytes: int,
        max_in_flight: int | None = None,
        size: int = 0,
    ) -> None:
        self.sink = sink
        self.piece_bytes = piece_bytes
        self.window_bytes = window_bytes
        self.max_in_flight = max_in_flight
        self.size = size
        self._gathered: list[bytes | memoryview] = []
        self._gathered_bytes = 0
        self._queued: deque[tuple[Piece, int]] = deque()  # cut, not yet sent
        self._in_flight = 0  # pieces sent, not yet answered
        self._unacked = 0  # bytes queued or in flight
        self._error: Failure | None = None
        self._error_reported = False  # a write() has failed with _error
        self._waiter: Deferred[None] | None = None
        self._drained: list[Deferred[None]] = []

    # pieces --------------------------------------------------------------------

    def _submit(self, piece: Piece, n: int) -> None:
        self._unacked += n
        self._queued.append((piece, n))
        self._pump()

    def _pump(self) -> None:
        while self._queued and self._error is None and (self.max_in_flight is None or self._in_flight < self.max_in_flight):
            piece, n = self._queued.popleft()
            self._in_flight += 1
            d: Deferred[None] = maybeDeferred(self.sink.send, piece)
            d.addBoth(self._answered, n)

    def _answered(self, result: Any, n: int) -> None:
        self._in_flight -= 1
        self._unacked -= n
        if isinstance(result, Failure):
            if self._error is None:
                self._error = result
            # Nothing after a failed piece may be written.
            for _, m in self._queued:
                self._unacked -= m
            self._queued.clear()
        self._pump()
        if self._waiter is not None and (self._error is not None or self._unacked <= self.window_bytes):
            d, self._waiter = self._waiter, None
            if self._error is not None:
                self._error_reported = True
                d.errback(self._error)
            else:
                d.callback(None)
        if self._unacked == 0:
            drained, self._drained = self._drained, []
            for w in drained:
                w.callback(None)

    def _flush(self) -> None:
        """Submit what small writes left gathered."""
        if self._gathered:
            piece, n = self._gathered, self._gathered_bytes
            self._gathered, self._gathered_bytes = [], 0
            self._submit(piece, n)

    def _drain(self) -> Deferred[None]:
        """Fire once every piece submitted so far has been answered."""
        if self._unacked == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    # IFileWriter ---------------------------------------------------------------

    def write(self, data: bytes) -> Deferred[None]:
        """Gather ``data`` into pieces; fire once at most ``window_bytes`` are
        unacknowledged. Fails with the first error of an earlier piece."""
        if self._error is not None:
            self._error_reported = True
            return fail(self._error)
        n = len(data)
        self.size += n
        piece_bytes = self.piece_bytes
        if self._gathered_bytes + n < piece_bytes:
            if n:
                self._gathered.append(data)
                self._gathered_bytes += n
            return succeed(None)
        # Pieces are cut from views of ``data`` (immutable bytes), no copy.
        view = memoryview(data).cast("B")
        pos = 0
        if self._gathered:
            pos = piece_bytes - self._gathered_bytes
            piece: list[bytes | memoryview] = [*self._gathered, view[:pos]]
            self._gathered, self._gathered_bytes = [], 0
            self._submit(piece, piece_bytes)
        whole = pos + (n - pos) // piece_bytes * piece_bytes
        for start in range(pos, whole, piece_bytes):
            self._submit([view[start : start + piece_bytes]], piece_bytes)
        if whole < n:
            # A view, not a copy: it keeps at most this one caller's buffer
            # alive until the next piece is cut.
            self._gathered.append(view[whole:])
            self._gathered_bytes = n - whole
        if self._error is not None:
            self._error_reported = True
            return fail(self._error)
        if self._unacked <= self.window_bytes:
            return succeed(None)
        self._waiter = Deferred()
        return self._waiter

    def close(self) -> Deferred[None]:
        """Write out what is gathered and release, keeping the bytes. Fails
        (after releasing) with the error of a failed piece that no ``write``
        has reported yet."""
        if self._error is None:
            self._flush()

        def release(_: Any) -> Deferred[None]:
            error = None if self._error_reported else self._error
            d: Deferred[None] = maybeDeferred(self.sink.close)
            if error is not None:
                d.addCallback(lambda _: error)
            return d

        return self._drain().addCallback(release)

    def commit(self) -> Deferred[None]:
        """Write out what is gathered, wait for every piece, then commit, or
        (if any piece failed) ``abort`` and fail with its error."""
        if self._error is None:
            self._flush()

        def decide(_: Any) -> Deferred[None]:
            if self._error is not None:
                error = self._error
                d: Deferred[None] = maybeDeferred(self.sink.abort)
                d.addErrback(lambda f: None)
                return d.addCallback(lambda _: error)
            return maybeDeferred(self.sink.commit)

        return self._drain().addCallback(decide)

    def cancel(self) -> Deferred[None]:
        """Drop what is gathered, wait for pieces in flight, discard the object."""
        self._gathered, self._gathered_bytes = [], 0
        for _, m in self._queued:
            self._unacked -= m
        self._queued.clear()
        return self._drain().addCallback(lambda _: self.sink.cancel())

