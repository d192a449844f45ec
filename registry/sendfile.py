"""Zero-copy downloads: a response body sent with ``os.sendfile`` from a
storage reader that can (``IZeroCopyReader``: the filesystem driver's)
straight into the connection's socket, so the bytes never pass through
Python, a Twisted buffer or a second copy.

How it fits under Twisted
  Twisted owns the socket and buffers what is written to the transport; the
  body may go around it only once everything Twisted holds (the response
  headers) has reached the socket, and nothing else is written to the
  transport until the body is complete (Twisted's HTTP/1.1 channel writes
  nothing for a request while its response is unfinished, and answers
  pipelined requests only after ``finish``). So ``SendfileProducer.run``
  writes the headers, waits until the transport's buffer is empty (the one
  look at Twisted's private state, ``_unsent``), then loops: send what the
  socket takes (``IZeroCopyReader.send_to``), and when it takes nothing,
  wait until the socket is writable again (``_Writable``: a duplicate of the
  socket's descriptor watched by the reactor). The socket's own buffer is the
  backpressure; ``pauseProducing`` is honoured too, ``stopProducing`` (the
  connection was lost) ends the loop, and a peer that resets the connection
  ends it as well (the connection is then aborted, so the request ends as a
  lost one, not as a finished one).

Why a duplicate descriptor
  ``send_to`` runs in the driver's thread pool (so a cold disk blocks a pool
  thread, never the reactor; see the filesystem driver). If the connection
  is closed meanwhile, Twisted closes its descriptor and the number may be
  reused at once by a new connection; the duplicate keeps the socket itself
  open until the loop is done with it, so a late ``sendfile`` fails on the
  dead connection instead of writing into somebody else's.

When it is not used (``zero_copy_transport`` says None): TLS (the transport
encrypts in memory: there is no socket to send plaintext into), HTTP/2 or any
transport that is not a plain TCP or Unix connection, a response without
Content-Length (chunked), a platform without ``os.sendfile``, or a Twisted
whose transport no longer keeps its buffer where ``_unsent`` looks. Callers
copy through the reader then.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorFDSet, ISSLTransport, IWriteDescriptor
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.web import http
from zope.interface import implementer

from registry.http import RegistryRequest
from registry.storage.driver import IZeroCopyReader


@dataclass
class Counters:
    """What went by ``sendfile`` since the process started (for tests and
    for a look in a debugger; the access log's ``bytes_sent`` counts these
    bytes too)."""

    responses: int = 0
    bytes: int = 0


counters = Counters()


def _unsent(transport: Any) -> int | None:
    """Bytes ``transport`` (a ``twisted.internet.abstract.FileDescriptor``)
    holds and has not yet written to its socket, or None if this Twisted
    keeps them elsewhere.

    The one place that reads Twisted's private write buffer (there is no
    public way to ask whether it is empty): ``dataBuffer``/``offset`` (the
    buffer being sent) and ``_tempDataLen`` (what is queued behind it).
    ``tests/api/test_downloads.py`` fails if an upgrade renames them; meanwhile
    None makes every download take the copying path."""
    try:
        pending = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    except (AttributeError, TypeError):
        return None
    return pending if isinstance(pending, int) and pending >= 0 else None


def zero_copy_transport(request: RegistryRequest) -> tcp.Connection | None:
    """The plain TCP/Unix transport under ``request`` that a body may be
    sent into with ``sendfile``, or None (see the module docstring)."""
    if not hasattr(os, "sendfile") or request.gone:
        return None
    if request.responseHeaders.getRawHeaders(b"content-length") is None or request.method != b"GET":
        return None
    channel = request.channel
    if not isinstance(channel, http.HTTPChannel):
        return None
    transport = channel.transport
    if not isinstance(transport, tcp.Connection) or ISSLTransport.providedBy(transport):
        return None
    if getattr(transport, "TLS", False) or not transport.connected or transport.disconnecting:
        return None
    if _unsent(transport) is None:
        return None
    return transport


@implementer(IWriteDescriptor)
class _Writable:
    """Fires ``wait()`` once the socket behind descriptor ``fd`` (our
    duplicate) is writable, or has failed (the next send then says so).

    A duplicate has its own descriptor number, so the reactor watches it
    beside the transport's without the two being confused."""

    def __init__(self, reactor: IReactorFDSet, fd: int) -> None:
        self._reactor = reactor
        self._fd = fd
        self._waiting: Deferred[None] | None = None

    def wait(self) -> Deferred[None]:
        assert self._waiting is None
        self._waiting = Deferred()
        self._reactor.addWriter(self)
        return self._waiting

    def wake(self) -> None:
        """Stop watching; fire the pending ``wait``, if any."""
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            self._reactor.removeWriter(self)
            d.callback(None)

    # IWriteDescriptor ------------------------------------------------------

    def doWrite(self) -> None:
        self.wake()

    def fileno(self) -> int:
        return self._fd

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error on the socket (and stopped watching it).
        if self._waiting is not None:
            d, self._waiting = self._waiting, None
            d.callback(None)

    def logPrefix(self) -> str:
        return "sendfile"


@implementer(IPushProducer)
class PausableProducer:
    """The push-producer half of a body writer: ``pauseProducing`` holds the
    writer at its next ``await self.unpaused()``, ``resumeProducing`` lets it
    go on, ``stopProducing`` ends it (``stopped``)."""

    def __init__(self) -> None:
        self._paused = False
        self._stopped = False
        self._resume: Deferred[None] | None = None

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._resume is not None:
            d, self._resume = self._resume, None
            d.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()

    async def unpaused(self) -> None:
        """Return once the consumer wants bytes (at once when it does)."""
        while self._paused and not self._stopped:
            self._resume = Deferred()
            await self._resume


@implementer(IPushProducer)
class SendfileProducer(PausableProducer):
    """Sends ``length`` bytes of ``reader``'s object from ``offset`` as the
    body of ``request`` over ``transport`` (from ``zero_copy_transport``),
    by ``sendfile``; ``run()`` fires when it is done. The caller has set the
    status and headers (Content-Length included) and closes the reader."""

    def __init__(
        self,
        request: RegistryRequest,
        transport: tcp.Connection,
        reader: IZeroCopyReader,
        offset: int,
        length: int,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.request = request
        self.transport = transport
        self.reader = reader
        self.offset = offset
        self.remaining = length
        self.reactor = reactor
        super().__init__()
        self._writable: _Writable | None = None

    def stopProducing(self) -> None:
        super().stopProducing()
        if self._writable is not None:
            self._writable.wake()

    # -------------------------------------------------------------------------

    def _done(self) -> bool:
        return self._stopped or self.request.gone or not self.transport.connected

    async def run(self) -> None:
        request = self.request
        sock = os.dup(self.transport.fileno())
        writable = self._writable = _Writable(self.reactor, sock)
        request.write(b"")  # the status line and headers, into Twisted's buffer
        request.registerProducer(self, True)
        counters.responses += 1
        try:
            # Twisted sends the headers when the socket is writable (in the
            # same reactor turn as our watch fires): look once it is over.
            while not self._done() and _unsent(self.transport):
                await writable.wait()
                await deferLater(self.reactor, 0, lambda: None)
            while self.remaining > 0 and not self._done():
                if self._paused:
                    self._resume = Deferred()
                    await self._resume
                    continue
                sent = await self.reader.send_to(sock, self.offset, self.remaining)
                if sent > 0:
                    self.offset += sent
                    self.remaining -= sent
                    request.sentLength += sent
                    counters.bytes += sent
                elif sent == 0:
                    await writable.wait()
                else:
                    break
            if self.remaining > 0:
                await self._peer_gone()
        finally:
            writable.wake()
            self._writable = None
            os.close(sock)
            if not request.gone:
                request.unregisterProducer()

    async def _peer_gone(self) -> None:
        """The body stopped short (the peer reset the connection before
        Twisted noticed, or we were told to stop): unless the request has
        heard already, abort the connection and wait until it has, so that
        it ends as a lost request, never ``finish``ed as if complete."""
        if self.request.gone:
            return
        lost: Deferred[None] = Deferred()
        self.request.notifyFinish().addBoth(lambda _: lost.callback(None))
        self.transport.abortConnection()
        await lost
