"""Twisted internals the registry relies on, pinned: each test fails loudly
if a Twisted upgrade changes what the code reaches for, instead of the code
silently losing what it gets from it.

The other pins live beside their modules: the request line
(``RegistryChannel.request_line``: ``tests/test_http_channel.py``) and the
out-of-process pipes (``registry.storage.remote.fastpipe``:
``tests/storage/test_remote_fastpipe.py``).
"""

from __future__ import annotations

import inspect
import signal
import socket
from typing import Any

import pytest_twisted
from twisted.application import app
from twisted.internet import reactor
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from registry.http import RegistryRequest, RegistrySite
from registry.workers import ACCEPTS_PER_WAKEUP, AdoptedEndpoint, _stopped_cleanly
from tests.test_http_channel import RecordingRoot


# --- registry.workers: one accept per wake-up (``numberAccepts``) ------------------


class _Counting(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        p = Protocol()
        self.built.append(p)
        return p


async def _accepted_per_read(adopt: bool) -> list[int]:
    """Queue three connections on a listening socket, then let the port
    read three times: how many connections each read accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    factory = _Counting()
    if adopt:
        port: Any = await AdoptedEndpoint(reactor, listener.fileno()).listen(factory)
    else:
        port = reactor.adoptStreamPort(listener.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    counts = []
    try:
        # No await in between: the reactor does not read the port itself.
        for _ in range(3):
            before = len(factory.built)
            port.doRead()
            counts.append(len(factory.built) - before)
    finally:
        for p in factory.built:
            assert p.transport is not None
            p.transport.abortConnection()  # type: ignore[attr-defined]
        for c in clients:
            c.close()
        await port.stopListening()
        listener.close()
    return counts


@pytest_twisted.ensureDeferred
async def test_an_adopted_port_accepts_one_connection_per_wakeup() -> None:
    # Twisted's port takes every queued connection in one read, up to its
    # numberAccepts; the workers' port is held to ACCEPTS_PER_WAKEUP, so
    # that the next connection goes to another worker.
    assert await _accepted_per_read(adopt=False) == [3, 0, 0]
    assert ACCEPTS_PER_WAKEUP == 1
    assert await _accepted_per_read(adopt=True) == [1, 1, 1], (
        "twisted.internet.tcp.Port no longer reads numberAccepts: registry.workers._one_accept_per_wakeup "
        "must be adapted"
    )


# --- registry.workers: exit status 0 after a handled SIGTERM (``_exitSignal``) -----


def test_a_handled_sigterm_clears_the_signal_twistd_would_re_raise() -> None:
    from twisted.internet.selectreactor import SelectReactor

    other = SelectReactor()
    try:
        # The reactor keeps the signal that stopped it in _exitSignal ...
        assert _ISupportsExitSignalCapturing.providedBy(other)
        other.sigTerm(signal.SIGTERM)
        assert other._exitSignal == signal.SIGTERM
        # ... which twistd reads after the reactor stops, to kill itself with it.
        assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner.startReactor)
        _stopped_cleanly(other)
        assert other._exitSignal is None
        # Any other signal is left for twistd.
        other.sigInt(signal.SIGINT)
        _stopped_cleanly(other)
        assert other._exitSignal == signal.SIGINT
    finally:
        other.removeReader(other.waker)
        other.waker.connectionLost(None)  # type: ignore[arg-type]


# --- registry.http: Request._disconnected --------------------------------------------


def test_a_request_knows_its_client_went_away() -> None:
    # RegistryRequest.gone (and the web page's check) read Twisted's private
    # Request._disconnected, set when the connection is lost.
    channel = RegistrySite(RecordingRoot()).buildProtocol(None)
    assert channel is not None
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    request = channel.requests[-1]  # type: ignore[attr-defined]
    assert isinstance(request, RegistryRequest)
    assert request._disconnected is False and not request.gone
    channel.connectionLost(Exception("gone"))
    assert request._disconnected is True and request.gone
