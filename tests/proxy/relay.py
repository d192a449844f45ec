"""A TCP relay on 127.0.0.1 in front of an upstream registry that counts the
HTTP requests passing through it (the proxy sends GET/HEAD only, so request
lines can be read off the client-to-server bytes) and can take the upstream
"down" (stop listening, drop the open connections).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol

_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n")


class _Server(Protocol):
    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.server_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.relay.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.relay.transport.loseConnection()


class _ServerFactory(ClientFactory):
    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _Server:
        return _Server(self.relay)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.relay.transport.loseConnection()


class _Relay(Protocol):
    def __init__(self, owner: "CountingRelay") -> None:
        self.owner = owner
        self.server: _Server | None = None
        self.pending: list[bytes] = []
        self.seen = b""

    def connectionMade(self) -> None:
        self.owner.open.add(self)
        reactor.connectTCP("127.0.0.1", self.owner.target_port, _ServerFactory(self))

    def server_ready(self, server: _Server) -> None:
        self.server = server
        for data in self.pending:
            server.transport.write(data)
        self.pending = []

    def dataReceived(self, data: bytes) -> None:
        self.seen = (self.seen + data)[-8192:]
        while True:
            m = _REQUEST_LINE.search(self.seen)
            if m is None:
                break
            self.owner.requests[(m.group(1).decode(), m.group(2).decode())] += 1
            self.seen = self.seen[m.end():]
        if self.server is None:
            self.pending.append(data)
        else:
            self.server.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.owner.open.discard(self)
        if self.server is not None:
            self.server.transport.loseConnection()


class CountingRelay:
    """Listen on a free 127.0.0.1 port and relay to ``target_port``;
    ``requests[(method, path)]`` counts what passed."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.requests: Counter[tuple[str, str]] = Counter()
        self.open: set[_Relay] = set()
        self._factory = Factory.forProtocol(lambda: _Relay(self))
        self.port: Any = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        self.port_number = self.port.getHost().port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    def count(self, method: str, path_part: str) -> int:
        return sum(n for (m, p), n in self.requests.items() if m == method and path_part in p)

    async def down(self) -> None:
        """Refuse connections (as a stopped upstream does) and cut the open ones."""
        if self.port is not None:
            await self.port.stopListening()
            self.port = None
        for relay in list(self.open):
            relay.transport.abortConnection()
            if relay.server is not None:
                relay.server.transport.abortConnection()

    def up(self) -> None:
        if self.port is None:
            self.port = reactor.listenTCP(self.port_number, self._factory, interface="127.0.0.1")

    async def close(self) -> None:
        await self.down()
