"""Blob downloads over real sockets: zero-copy (``registry.sendfile``) from
the filesystem driver, the copying path over TLS and the in-memory driver,
ranges, keep-alive and pipelining, slow readers, clients that go away."""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from registry import sendfile
from registry.app import make_root
from registry.digest import Digest
from registry.http import RegistrySite
from registry.storage import paths
from registry.storage.driver import DriverError, InvalidOffsetError, IZeroCopyReader
from registry.storage.drivers import pagecache
from registry.storage.factory import create_driver
from registry.tls import TLSSettings, server_endpoint
from tests.api.conftest import Server, _serve, sha
from tests.tlsutil import PKI, make_pki

MIB = 1 << 20


def blob(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(b"%d" % seed).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


@pytest_twisted.async_yield_fixture
async def fs_server(tmp_path: Path) -> AsyncIterator[Server]:
    async for s in _serve(create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})):
        yield s


def port_of(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


# -- a blocking HTTP/1.1 client (run in a thread) -------------------------------


def _read_head(sock: Any, buf: bytearray) -> tuple[int, dict[str, str]]:
    while b"\r\n\r\n" not in buf:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError(f"connection closed before the headers ended: {bytes(buf)!r}")
        buf += more
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[: end + 4]
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


def _read_body(sock: Any, buf: bytearray, length: int, delay: float = 0.0, recv_size: int = 1 << 20) -> bytes:
    body = bytearray(buf[:length])
    del buf[:length]
    while len(body) < length:
        if delay:
            time.sleep(delay)
        more = sock.recv(min(recv_size, length - len(body)))
        if not more:
            raise ConnectionError(f"connection closed after {len(body)} of {length} body bytes")
        body += more
    return bytes(body)


def request_lines(path: str, method: str = "GET", headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def fetch(port: int, requests: list[tuple[str, str, dict[str, str]]], *, rcvbuf: int | None = None,
          delay: float = 0.0, recv_size: int = 1 << 20, pipelined: bool = False,
          context: ssl.SSLContext | None = None) -> list[tuple[int, dict[str, str], bytes]]:
    """Send ``requests`` (method, path, headers) over one connection, one
    after the other (or all at once when ``pipelined``); return each
    response's status, headers and body (read by Content-Length)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    raw.settimeout(60)
    raw.connect(("127.0.0.1", port))
    sock: Any = context.wrap_socket(raw, server_hostname="127.0.0.1") if context is not None else raw
    out = []
    try:
        if pipelined:
            sock.sendall(b"".join(request_lines(p, m, h) for m, p, h in requests))
        buf = bytearray()
        for method, path, headers in requests:
            if not pipelined:
                sock.sendall(request_lines(path, method, headers))
            status, head = _read_head(sock, buf)
            length = 0 if method == "HEAD" else int(head.get("content-length", "0"))
            out.append((status, head, _read_body(sock, buf, length, delay, recv_size)))
        assert not buf, "more bytes than the responses' Content-Length"
    finally:
        sock.close()
    return out


async def get(port: int, path: str, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    result: list[tuple[int, dict[str, str], bytes]] = await threads.deferToThread(
        fetch, port, [("GET", path, headers or {})], **kw)
    return result[0]


def snapshot() -> tuple[int, int]:
    return sendfile.counters.responses, sendfile.counters.bytes


def _since(before: tuple[int, int]) -> tuple[int, int]:
    return sendfile.counters.responses - before[0], sendfile.counters.bytes - before[1]


async def sent_since(before: tuple[int, int], expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """What went by sendfile since ``before``; waits a little for
    ``expected`` (the client may have its bytes before the pool thread
    that sent them has reported back to the reactor)."""
    deadline = time.monotonic() + 5
    while expected is not None and _since(before) != expected and time.monotonic() < deadline:
        await deferLater(reactor, 0.01, lambda: None)
    return _since(before)


# -- the one look at Twisted's private state -------------------------------------


@pytest_twisted.ensureDeferred
async def test_unsent_reads_the_transport_buffer_of_this_twisted() -> None:
    """``registry.sendfile._unsent`` reads Twisted's private write buffer: if
    an upgrade renames it, this fails (and downloads would all copy)."""
    from twisted.internet.protocol import Factory, Protocol

    seen: list[Any] = []

    class Hold(Protocol):
        def connectionMade(self) -> None:
            seen.append(self.transport)

    port = reactor.listenTCP(0, Factory.forProtocol(Hold), interface="127.0.0.1")
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        while not seen:
            await deferLater(reactor, 0.01, lambda: None)
        transport = seen[0]
        assert sendfile._unsent(transport) == 0
        transport.write(b"x" * (32 * MIB))  # more than loopback buffers: some stays with Twisted
        assert sendfile._unsent(transport) == 32 * MIB
        deadline = time.monotonic() + 10
        while sendfile._unsent(transport) == 32 * MIB and time.monotonic() < deadline:
            await deferLater(reactor, 0.01, lambda: None)
        pending = sendfile._unsent(transport)
        assert pending is not None and 0 < pending < 32 * MIB
    finally:
        client.close()
        await port.stopListening()
        if seen:
            seen[0].abortConnection()


# -- zero-copy downloads -----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_whole_blob_goes_by_sendfile(fs_server: Server) -> None:
    data = blob(9 * MIB + 12345)
    digest = await fs_server.push_blob("a/b", data)
    before = snapshot()
    status, headers, body = await get(port_of(fs_server), f"/v2/a/b/blobs/{digest}")
    assert status == 200
    assert headers["content-length"] == str(len(data))
    assert headers["docker-content-digest"] == digest
    assert "transfer-encoding" not in headers
    assert sha(body) == digest
    assert await sent_since(before, (1, len(data))) == (1, len(data))


@pytest_twisted.ensureDeferred
async def test_cold_blob_is_sent_from_the_pool(fs_server: Server, tmp_path: Path) -> None:
    """Bytes not in the page cache are sent from the driver's thread pool
    (a cold disk never blocks the reactor); cached ones from the reactor."""
    data = blob(6 * MIB + 1, 8)
    digest = await fs_server.push_blob("a/b", data)
    fs = fs_server.driver.wrapped  # type: ignore[attr-defined]
    evict(tmp_path / "store" / paths.blob_data(Digest.parse(digest)).lstrip("/"))
    pooled = fs.sends_pooled
    before = snapshot()
    status, _, body = await get(port_of(fs_server), f"/v2/a/b/blobs/{digest}")
    assert status == 200 and body == data
    assert await sent_since(before, (1, len(data))) == (1, len(data))
    assert fs.sends_pooled > pooled
    # Now it is cached: the reactor sends it without the pool.
    pooled, inline = fs.sends_pooled, fs.sends_inline
    status, _, body = await get(port_of(fs_server), f"/v2/a/b/blobs/{digest}")
    assert status == 200 and body == data
    assert fs.sends_pooled == pooled and fs.sends_inline > inline


@pytest_twisted.ensureDeferred
async def test_ranges_go_by_sendfile(fs_server: Server) -> None:
    size = 3 * MIB + 7
    data = blob(size, 1)
    digest = await fs_server.push_blob("a/b", data)
    port = port_of(fs_server)
    cases = {
        "bytes=0-9": (0, 9),
        f"bytes={size - 1000}-": (size - 1000, size - 1),  # open-ended
        "bytes=-5": (size - 5, size - 1),  # suffix
        "bytes=-99999999": (0, size - 1),  # suffix longer than the blob
        f"bytes=1048570-{2 * MIB + 3}": (1048570, 2 * MIB + 3),  # across pieces
        f"bytes=100-{size + 50}": (100, size - 1),  # end past the end
    }
    for header, (start, end) in cases.items():
        before = snapshot()
        status, headers, body = await get(port, f"/v2/a/b/blobs/{digest}", {"Range": header})
        assert status == 206, header
        assert headers["content-range"] == f"bytes {start}-{end}/{size}", header
        assert headers["content-length"] == str(end - start + 1), header
        assert body == data[start : end + 1], header
        assert await sent_since(before, (1, end - start + 1)) == (1, end - start + 1), header
    # Not satisfiable: an error envelope, nothing sent by sendfile.
    before = snapshot()
    status, headers, _ = await get(port, f"/v2/a/b/blobs/{digest}", {"Range": f"bytes={size}-"})
    assert status == 416 and headers["content-range"] == f"bytes */{size}"
    assert await sent_since(before, (0, 0)) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_head_and_empty_blob_send_no_body(fs_server: Server) -> None:
    data = blob(MIB)
    digest = await fs_server.push_blob("a/b", data)
    empty = await fs_server.push_blob("a/b", b"")
    port = port_of(fs_server)
    before = snapshot()
    results = await threads.deferToThread(fetch, port, [
        ("HEAD", f"/v2/a/b/blobs/{digest}", {}),
        ("GET", f"/v2/a/b/blobs/{empty}", {}),
        ("HEAD", f"/v2/a/b/blobs/{digest}", {"Range": "bytes=5-"}),
        ("GET", f"/v2/a/b/blobs/{digest}", {}),
    ])
    (s1, h1, b1), (s2, h2, b2), (s3, h3, b3), (s4, h4, b4) = results
    assert (s1, h1["content-length"], b1) == (200, str(MIB), b"")
    assert (s2, h2["content-length"], b2) == (200, "0", b"")
    assert (s3, h3["content-length"], h3["content-range"], b3) == (206, str(MIB - 5), f"bytes 5-{MIB - 1}/{MIB}", b"")
    assert (s4, b4) == (200, data)
    assert await sent_since(before, (1, MIB)) == (1, MIB)


@pytest_twisted.ensureDeferred
async def test_keep_alive_and_pipelined_requests_stay_in_order(fs_server: Server) -> None:
    """Responses after a sendfile body follow it on the same connection,
    whether the requests come one by one or all at once."""
    a, b = blob(2 * MIB + 1, 2), blob(3 * MIB + 3, 3)
    da, db = await fs_server.push_blob("a/b", a), await fs_server.push_blob("a/b", b)
    port = port_of(fs_server)
    reqs = [
        ("GET", f"/v2/a/b/blobs/{da}", {}),
        ("GET", "/v2/", {}),
        ("GET", f"/v2/a/b/blobs/{db}", {"Range": "bytes=10-"}),
        ("HEAD", f"/v2/a/b/blobs/{db}", {}),
        ("GET", f"/v2/a/b/blobs/{da}", {}),
    ]
    for pipelined in (False, True):
        before = snapshot()
        results = await threads.deferToThread(fetch, port, reqs, pipelined=pipelined)
        assert [r[0] for r in results] == [200, 200, 206, 200, 200]
        assert results[0][2] == a and results[2][2] == b[10:] and results[4][2] == a
        assert await sent_since(before, (3, 2 * len(a) + len(b) - 10)) == (3, 2 * len(a) + len(b) - 10)


@pytest_twisted.ensureDeferred
async def test_slow_reader_gets_every_byte_and_the_reactor_stays_free(fs_server: Server) -> None:
    """A client with a tiny receive buffer that reads slowly: the socket's
    own buffer is the backpressure, every byte arrives, and other requests
    are answered meanwhile."""
    data = blob(2 * MIB + 5, 4)
    digest = await fs_server.push_blob("a/b", data)
    port = port_of(fs_server)
    before = snapshot()
    slow = threads.deferToThread(fetch, port, [("GET", f"/v2/a/b/blobs/{digest}", {})],
                                 rcvbuf=4096, delay=0.002, recv_size=16384)
    answered = 0
    while not slow.called:
        r = await treq.get(f"{fs_server.url}/v2/")
        await r.content()
        assert r.code == 200
        answered += 1
        await deferLater(reactor, 0.05, lambda: None)
    ((status, _, body),) = await slow
    assert status == 200 and sha(body) == digest
    assert answered >= 3
    assert (await sent_since(before, (1, len(data))))[0] == 1


def evict(path: Path) -> None:
    """Drop a file's pages from the page cache (fsync first: dirty pages or
    pages under writeback would stay)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if pagecache.AVAILABLE:
            assert not pagecache.resident(fd, 0, os.fstat(fd).st_size), "the kernel kept the pages"
    finally:
        os.close(fd)


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest_twisted.ensureDeferred
async def test_client_that_goes_away_mid_download_leaks_no_descriptor(fs_server: Server) -> None:
    data = blob(16 * MIB, 5)
    digest = await fs_server.push_blob("a/b", data)
    port = port_of(fs_server)
    assert (await get(port, f"/v2/a/b/blobs/{digest}"))[2] == data  # warm everything up

    def abandon(reset: bool) -> int:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", port))
        s.sendall(request_lines(f"/v2/a/b/blobs/{digest}"))
        got = 0
        while got < 256 * 1024:
            got += len(s.recv(65536))
        if reset:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        return got

    data_path = fs_server.driver.wrapped.root + paths.blob_data(Digest.parse(digest))  # type: ignore[attr-defined]
    for reset, cold in ((False, False), (True, False), (False, True), (True, True)):
        if cold:  # the sends go through the pool: the connection dies under them
            evict(Path(data_path))
        baseline = _open_fds()
        before = snapshot()
        await threads.deferToThread(abandon, reset)
        deadline = time.monotonic() + 10
        while _open_fds() > baseline and time.monotonic() < deadline:
            await deferLater(reactor, 0.05, lambda: None)
        assert _open_fds() == baseline, os.listdir("/proc/self/fd")
        responses, sent = await sent_since(before)
        assert responses == 1 and sent < len(data)
    # The server still answers.
    assert (await get(port, f"/v2/a/b/blobs/{digest}", {"Range": "bytes=-3"}))[2] == data[-3:]


# -- where it is not used -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_transport_whose_buffer_cannot_be_read_is_not_used(
    fs_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If a Twisted upgrade moves the write buffer, ``_unsent`` says None and
    every download takes the copying path, still correct."""

    class Moved:
        pass

    assert sendfile._unsent(Moved()) is None
    data = blob(2 * MIB + 9, 9)
    digest = await fs_server.push_blob("a/b", data)
    monkeypatch.setattr(sendfile, "_unsent", lambda transport: None)
    before = snapshot()
    status, _, body = await get(port_of(fs_server), f"/v2/a/b/blobs/{digest}", {"Range": "bytes=3-"})
    assert status == 206 and body == data[3:]
    assert await sent_since(before, (0, 0)) == (0, 0)


@pytest_twisted.ensureDeferred
async def test_inmemory_driver_copies(mem_server: Server) -> None:
    data = blob(3 * MIB + 1, 6)
    digest = await mem_server.push_blob("a/b", data)
    before = snapshot()
    status, _, body = await get(port_of(mem_server), f"/v2/a/b/blobs/{digest}", {"Range": "bytes=1-"})
    assert status == 206 and body == data[1:]
    assert await sent_since(before, (0, 0)) == (0, 0)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest_twisted.ensureDeferred
async def test_tls_falls_back_to_copying(pki: PKI, tmp_path: Path) -> None:
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    site = RegistrySite(make_root(driver))
    listening = await server_endpoint(reactor, 0, TLSSettings(str(pki.chain), str(pki.key)),
                                      interface="127.0.0.1").listen(site)
    plain = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        data = blob(5 * MIB + 3, 7)
        digest = await Server(f"http://127.0.0.1:{plain.getHost().port}", driver).push_blob("a/b", data)
        context = ssl.create_default_context(cafile=str(pki.root))
        before = snapshot()
        results = await threads.deferToThread(fetch, listening.getHost().port, [
            ("GET", f"/v2/a/b/blobs/{digest}", {}),
            ("GET", f"/v2/a/b/blobs/{digest}", {"Range": "bytes=-1000"}),
        ], context=context)
        assert [(s, b) for s, _, b in results] == [(200, data), (206, data[-1000:])]
        assert await sent_since(before, (0, 0)) == (0, 0)
    finally:
        await listening.stopListening()
        await plain.stopListening()
        await driver.close()


# -- the reader capability through the wrapper ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_send_to_is_guarded_by_the_wrapper(tmp_path: Path) -> None:
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    try:
        await driver.put_content("/x", b"0123456789")
        evict(tmp_path / "store" / "x")  # the first send goes through the pool: it is pending a while
        fs = driver.wrapped
        reader = await driver.reader("/x", 2)
        assert IZeroCopyReader.providedBy(reader)
        first = reader.send_to(-1, 2, 8)  # a bad descriptor: sendfile's EBADF, as DriverError
        with pytest.raises(DriverError, match="before the previous"):
            await reader.send_to(-1, 2, 8)
        with pytest.raises(DriverError, match="EBADF|Bad file descriptor"):
            await first
        assert (fs.sends_inline, fs.sends_pooled) == (0, 1)
        # close() waits for a send still in the pool before closing the file.
        evict(tmp_path / "store" / "x")
        other = await driver.reader("/x")
        left, right = socket.socketpair()
        try:
            pending = other.send_to(right.fileno(), 0, 10)
            closing = other.close()
            assert not pending.called and not closing.called
            assert await pending == 10 and left.recv(10) == b"0123456789"
            await closing
        finally:
            left.close()
            right.close()
        assert (fs.sends_inline, fs.sends_pooled) == (0, 2)
        left, right = socket.socketpair()
        right.setblocking(False)
        try:
            assert await reader.send_to(right.fileno(), 2, 100) == 8
            assert left.recv(100) == b"23456789"
            with pytest.raises(InvalidOffsetError):
                await reader.send_to(right.fileno(), 10, 1)  # at the end: the object is shorter
            with pytest.raises(DriverError):
                await reader.send_to(right.fileno(), 0, 0)
            # A full socket takes nothing (0); a closed peer is -1.
            sent = 0
            while (n := await reader.send_to(right.fileno(), 0, 10)) > 0:
                sent += n
            assert n == 0 and sent > 0
            left.close()
            assert await reader.send_to(right.fileno(), 0, 10) == -1
            assert fs.sends_inline > 0
            await reader.close()
            with pytest.raises(DriverError, match="closed"):
                await reader.send_to(right.fileno(), 0, 10)
        finally:
            left.close()
            right.close()
    finally:
        await driver.close()
    memory = create_driver("inmemory", {})
    await memory.put_content("/x", b"0123456789")
    reader = await memory.reader("/x")
    assert not IZeroCopyReader.providedBy(reader)
    await reader.close()
