"""Over-long request lines and header blocks get an answer (414 / 431) before
the connection closes, over a real socket; requests within the bounds, and
several of them on one persistent connection, are served as usual."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.python.failure import Failure

from registry.http import MAX_HEADER_BLOCK, MAX_HEADER_COUNT, MAX_HEADER_LINE, MAX_REQUEST_LINE
from tests.api.conftest import Server, mem_server

__all__ = ["mem_server"]  # the fixture


class _Raw(Protocol):
    """Sends bytes as they are, collects everything until the server closes."""

    def __init__(self, payload: bytes, done: Deferred[bytes]) -> None:
        self.payload = payload
        self.done = done
        self.received = bytearray()

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.done.callback(bytes(self.received))


async def exchange(server: Server, payload: bytes) -> bytes:
    """Everything the server sends for ``payload`` before it closes (the
    payload's last request says ``Connection: close`` when it is valid)."""
    port = int(server.url.rsplit(":", 1)[1])
    done: Deferred[bytes] = Deferred()
    factory = ClientFactory.forProtocol(lambda: _Raw(payload, done))  # type: ignore[arg-type]
    reactor.connectTCP("127.0.0.1", port, factory, timeout=10)
    received = await done
    return received


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response[9:12])


def request(path: bytes = b"/v2/", headers: list[bytes] | None = None, close: bool = True) -> bytes:
    lines = [b"GET " + path + b" HTTP/1.1", b"Host: 127.0.0.1"] + (headers or [])
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


@pytest_twisted.ensureDeferred
async def test_one_huge_header_gets_431(mem_server: Server) -> None:
    response = await exchange(mem_server, request(headers=[b"X-Big: " + b"a" * 64 * 1024]))
    assert status_of(response) == 431
    assert b"Connection: close" in response
    assert b"request headers exceed" in response


@pytest_twisted.ensureDeferred
async def test_many_headers_totalling_64k_get_431(mem_server: Server) -> None:
    headers = [b"X-H%d: " % i + b"b" * 1000 for i in range(64)]
    assert status_of(await exchange(mem_server, request(headers=headers))) == 431


@pytest_twisted.ensureDeferred
async def test_too_many_small_headers_get_431(mem_server: Server) -> None:
    headers = [b"X-N%d: 1" % i for i in range(MAX_HEADER_COUNT + 1)]
    assert status_of(await exchange(mem_server, request(headers=headers))) == 431


@pytest_twisted.ensureDeferred
async def test_header_line_just_over_the_line_limit_gets_431(mem_server: Server) -> None:
    line = b"X-Line: " + b"c" * (MAX_HEADER_LINE - 7)
    assert len(line) == MAX_HEADER_LINE + 1
    assert status_of(await exchange(mem_server, request(headers=[line]))) == 431


@pytest_twisted.ensureDeferred
async def test_over_long_request_line_gets_414(mem_server: Server) -> None:
    for length in (MAX_REQUEST_LINE + 1, 64 * 1024):
        response = await exchange(mem_server, request(path=b"/v2/" + b"a" * length))
        assert status_of(response) == 414, length
        assert b"request line is longer" in response


@pytest_twisted.ensureDeferred
async def test_requests_within_the_bounds_are_served(mem_server: Server) -> None:
    # Big but allowed: one long header (a token with a certificate chain) and
    # a block near the limit, then many fields.
    allowed = [
        [b"Authorization: Bearer " + b"t" * (MAX_HEADER_LINE - 40)],
        [b"X-H%d: " % i + b"d" * 1000 for i in range(MAX_HEADER_BLOCK // 1100)],
        [b"X-N%d: 1" % i for i in range(MAX_HEADER_COUNT - 2)],
    ]
    for headers in allowed:
        response = await exchange(mem_server, request(headers=headers))
        assert status_of(response) == 200, response[:300]
    # The bounds are per request: three large heads on one connection.
    heads = [b"X-H%d: " % i + b"e" * 1000 for i in range(MAX_HEADER_BLOCK // 1100)]
    payload = request(headers=heads, close=False) * 2 + request(headers=heads)
    response = await exchange(mem_server, payload)
    assert response.count(b"HTTP/1.1 200 OK") == 3, response[:500]
