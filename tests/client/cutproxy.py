"""A TCP relay on 127.0.0.1 that can drop a connection after a number of bytes.

It stands between the client and a real registry to make the failures the
client must survive: a download whose connection drops (or stalls) mid-body,
an upload chunk cut off mid-way.  ``cut_download_after`` / ``cut_upload_after`` arm
one cut each: the first connection that carries more than that many bytes
(server to client, or client to server) is aborted at that byte.
``stall_download_after`` makes the first such connection go silent instead.

It also notes what passed: ``requests`` (method, path and headers of each
request head the client sent) and ``statuses`` (the status of each response
head), so a test can tell a resumption from a restart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import reactor
from twisted.internet.protocol import ClientFactory, Factory, Protocol


_REQUEST_HEAD = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n((?:[^\r\n]+\r\n)*)\r\n")
_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) [^\r\n]*\r\n")
_SCAN_KEPT = 64 * 1024


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)


class _Upstream(Protocol):
    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay

    def connectionMade(self) -> None:
        self.relay.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.relay.from_server(data)

    def connectionLost(self, reason: Any = None) -> None:
        self.relay.transport.loseConnection()


class _UpstreamFactory(ClientFactory):
    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> _Upstream:
        return _Upstream(self.relay)

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:
        self.relay.transport.loseConnection()


class _Relay(Protocol):
    def __init__(self, proxy: "CutProxy") -> None:
        self.proxy = proxy
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []
        self.down = 0
        self.up = 0
        self.cut = False
        self.stalled = False
        self._seen_up = b""
        self._seen_down = b""

    def _note_up(self, data: bytes) -> None:
        self._seen_up = (self._seen_up + data)[-_SCAN_KEPT:]
        while (m := _REQUEST_HEAD.search(self._seen_up)) is not None:
            headers = {}
            for line in m.group(3).decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            self.proxy.requests.append(SeenRequest(m.group(1).decode(), m.group(2).decode(), headers))
            self._seen_up = self._seen_up[m.end():]

    def _note_down(self, data: bytes) -> None:
        self._seen_down = (self._seen_down + data)[-_SCAN_KEPT:]
        while (m := _STATUS_LINE.search(self._seen_down)) is not None:
            self.proxy.statuses.append(int(m.group(1)))
            self._seen_down = self._seen_down[m.end():]

    def connectionMade(self) -> None:
        self.proxy.connections += 1
        reactor.connectTCP("127.0.0.1", self.proxy.target_port, _UpstreamFactory(self))

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        for data in self.pending:
            self.from_client(data)
        self.pending = []

    def _abort(self) -> None:
        self.cut = True
        self.proxy.cuts += 1
        self.transport.abortConnection()
        if self.upstream is not None:
            self.upstream.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.from_client(data)

    def from_client(self, data: bytes) -> None:
        if self.cut or self.upstream is None:
            return
        limit = self.proxy.cut_upload_after
        if limit is not None and self.up + len(data) > limit:
            self.proxy.cut_upload_after = None
            self._note_up(data[: max(0, limit - self.up)])
            self.upstream.transport.write(data[: max(0, limit - self.up)])
            self.up = limit
            # let the server read what got through before the reset
            reactor.callLater(0.2, self._abort)
            self.cut = True
            return
        self.up += len(data)
        self._note_up(data)
        self.upstream.transport.write(data)

    def from_server(self, data: bytes) -> None:
        if self.cut or self.stalled:
            return
        stall = self.proxy.stall_download_after
        if stall is not None and self.down + len(data) > stall:
            # keep the connection open but forward nothing more
            self.proxy.stall_download_after = None
            self.transport.write(data[: max(0, stall - self.down)])
            self.down = stall
            self.stalled = True
            self.proxy.stalls += 1
            return
        limit = self.proxy.cut_download_after
        if limit is not None and self.down + len(data) > limit:
            self.proxy.cut_download_after = None
            self.transport.write(data[: max(0, limit - self.down)])
            self.down = limit
            self._abort()
            return
        self.down += len(data)
        self._note_down(data)
        self.transport.write(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.upstream is not None and not self.cut:
            self.upstream.transport.loseConnection()


class CutProxy:
    """Listen on a free 127.0.0.1 port and relay to ``target_port``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cut_download_after: int | None = None
        self.cut_upload_after: int | None = None
        self.stall_download_after: int | None = None
        self.cuts = 0
        self.stalls = 0
        self.connections = 0
        self.requests: list[SeenRequest] = []
        self.statuses: list[int] = []
        factory = Factory.forProtocol(lambda: _Relay(self))
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"

    async def close(self) -> None:
        await self.port.stopListening()
