"""The blob upload API over real sockets: every status, header and error code."""

from __future__ import annotations

import os

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.iweb import UNKNOWN_LENGTH
from zope.interface import implementer
from twisted.web.iweb import IBodyProducer

from registry.digest import Digest
from registry.storage import paths
from tests.api.conftest import Server, error_code, sha


@implementer(IBodyProducer)
class ChunkedProducer:
    """A body of unknown length: treq sends it with Transfer-Encoding: chunked."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def startProducing(self, consumer: object) -> Deferred[None]:
        for c in self.chunks:
            consumer.write(c)  # type: ignore[attr-defined]
        return Deferred.fromCoroutine(_done())

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


async def _done() -> None:
    return None


@pytest_twisted.ensureDeferred
async def test_base_endpoint(mem_server: Server) -> None:
    r = await treq.get(mem_server.url + "/v2/")
    assert r.code == 200
    assert r.headers.getRawHeaders("docker-distribution-api-version") == ["registry/2.0"]
    assert await r.json() == {}


@pytest_twisted.ensureDeferred
async def test_chunked_upload_with_content_range(server: Server) -> None:
    data = os.urandom(3 * 100_000 + 7)
    r = await treq.post(server.url + "/v2/lib/app/blobs/uploads/")
    assert r.code == 202
    loc = r.headers.getRawHeaders("location")[0]
    assert loc.startswith("/v2/lib/app/blobs/uploads/")
    assert r.headers.getRawHeaders("range") == ["0-0"]
    assert r.headers.getRawHeaders("docker-upload-uuid")[0] in loc
    assert int(r.headers.getRawHeaders("oci-chunk-min-length")[0]) > 0
    url = server.url + loc
    for start in range(0, len(data), 100_000):
        chunk = data[start : start + 100_000]
        r = await treq.patch(url, data=chunk, headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"})
        assert r.code == 202, await r.text()
        assert r.headers.getRawHeaders("range") == [f"0-{start + len(chunk) - 1}"]
        url = server.url + r.headers.getRawHeaders("location")[0]
    r = await treq.get(url)
    assert r.code == 204
    assert r.headers.getRawHeaders("range") == [f"0-{len(data) - 1}"]
    r = await treq.put(url + "?digest=" + sha(data))
    assert r.code == 201, await r.text()
    assert r.headers.getRawHeaders("docker-content-digest") == [sha(data)]
    assert r.headers.getRawHeaders("location") == [f"/v2/lib/app/blobs/{sha(data)}"]
    r = await treq.get(server.blob_url("lib/app", sha(data)))
    assert r.code == 200 and await r.content() == data
    # The upload directory is gone once the blob is committed.
    assert not [p for p in await server.files() if "/_uploads/" in p]


@pytest_twisted.ensureDeferred
async def test_streamed_patch_without_content_range_chunked_encoding(server: Server) -> None:
    data = os.urandom(500_000)
    url = await server.start_upload("streamed")
    r = await treq.patch(url, data=ChunkedProducer([data[:123_456], data[123_456:]]),
                         headers={"Content-Type": "application/octet-stream"})
    assert r.code == 202, await r.text()
    assert r.headers.getRawHeaders("range") == [f"0-{len(data) - 1}"]
    r = await treq.put(server.url + r.headers.getRawHeaders("location")[0] + "?digest=" + sha(data))
    assert r.code == 201


@pytest_twisted.ensureDeferred
async def test_put_with_final_chunk(mem_server: Server) -> None:
    data = os.urandom(10_000)
    url = await mem_server.start_upload("final")
    r = await treq.patch(url, data=data[:4000])
    assert r.code == 202
    r = await treq.put(url + "?digest=" + sha(data), data=data[4000:],
                       headers={"Content-Range": f"4000-{len(data) - 1}"})
    assert r.code == 201, await r.text()
    r = await treq.get(mem_server.blob_url("final", sha(data)))
    assert await r.content() == data


@pytest_twisted.ensureDeferred
async def test_out_of_order_and_retried_chunks_answer_416_with_range(mem_server: Server) -> None:
    url = await mem_server.start_upload("order")
    r = await treq.patch(url, data=b"a" * 100, headers={"Content-Range": "0-99"})
    assert r.code == 202
    before = await mem_server.files()
    # A gap.
    r = await treq.patch(url, data=b"b" * 10, headers={"Content-Range": "200-209"})
    assert r.code == 416
    assert await error_code(r) == "RANGE_INVALID"
    assert r.headers.getRawHeaders("range") == ["0-99"]
    assert r.headers.getRawHeaders("location")
    # A retry of a chunk already received.
    r = await treq.patch(url, data=b"a" * 50, headers={"Content-Range": "50-99"})
    assert r.code == 416
    assert r.headers.getRawHeaders("range") == ["0-99"]
    # A range whose end is before its start, and a malformed one.
    for bad in ("100-90", "x-y", "bytes 1-"):
        r = await treq.patch(url, data=b"c", headers={"Content-Range": bad})
        assert r.code == 416, bad
        assert await error_code(r) == "RANGE_INVALID"
    assert await mem_server.files() == before


@pytest_twisted.ensureDeferred
async def test_content_length_must_match_content_range(mem_server: Server) -> None:
    url = await mem_server.start_upload("lie")
    before = await mem_server.files()
    r = await treq.patch(url, data=b"x" * 10, headers={"Content-Range": "0-99"})
    assert r.code == 400
    assert await error_code(r) == "SIZE_INVALID"
    assert await mem_server.files() == before


@pytest_twisted.ensureDeferred
async def test_chunked_body_shorter_than_content_range_keeps_what_arrived(mem_server: Server) -> None:
    url = await mem_server.start_upload("short")
    r = await treq.patch(url, data=ChunkedProducer([b"y" * 30]), headers={"Content-Range": "0-99"})
    assert r.code == 416
    assert r.headers.getRawHeaders("range") == ["0-29"]
    # The client can resynchronise and finish.
    r = await treq.patch(url, data=b"z" * 70, headers={"Content-Range": "30-99"})
    assert r.code == 202
    r = await treq.put(url + "?digest=" + sha(b"y" * 30 + b"z" * 70))
    assert r.code == 201


@pytest_twisted.ensureDeferred
async def test_digest_mismatch_commits_nothing(server: Server) -> None:
    data = b"some layer bytes"
    url = await server.start_upload("mismatch")
    assert (await treq.patch(url, data=data)).code == 202
    wrong = sha(b"other bytes")
    r = await treq.put(url + "?digest=" + wrong)
    assert r.code == 400
    assert await error_code(r) == "DIGEST_INVALID"
    files = await server.files()
    assert not [p for p in files if "/blobs/" in p or "/_layers/" in p]
    assert (await treq.head(server.blob_url("mismatch", wrong))).code == 404
    assert (await treq.head(server.blob_url("mismatch", sha(data)))).code == 404


@pytest_twisted.ensureDeferred
async def test_put_digest_parameter_errors(mem_server: Server) -> None:
    url = await mem_server.start_upload("params")
    for query, code in [
        ("", "DIGEST_INVALID"),
        ("?digest=sha256:abc", "DIGEST_INVALID"),
        ("?digest=md5:" + "0" * 32, "DIGEST_INVALID"),
        ("?digest=SHA256:" + "0" * 64, "DIGEST_INVALID"),
        ("?digest=sha256:" + "G" * 64, "DIGEST_INVALID"),
    ]:
        before = await mem_server.files()
        r = await treq.put(url + query, data=b"body bytes")
        assert r.code == 400, query
        assert await error_code(r) == code, query
        assert await mem_server.files() == before, query


@pytest_twisted.ensureDeferred
async def test_monolithic_post(server: Server) -> None:
    data = os.urandom(70_000)
    r = await treq.post(f"{server.url}/v2/mono/blobs/uploads/?digest={sha(data)}", data=data)
    assert r.code == 201, await r.text()
    assert r.headers.getRawHeaders("docker-content-digest") == [sha(data)]
    r = await treq.post(f"{server.url}/v2/mono/blobs/uploads/?digest={sha(b'nope')}", data=data)
    assert r.code == 400
    assert await error_code(r) == "DIGEST_INVALID"
    assert (await treq.head(server.blob_url("mono", sha(b"nope")))).code == 404


@pytest_twisted.ensureDeferred
async def test_empty_blob(mem_server: Server) -> None:
    r = await treq.post(f"{mem_server.url}/v2/empty/blobs/uploads/?digest={sha(b'')}", data=b"")
    assert r.code == 201
    r = await treq.get(mem_server.blob_url("empty", sha(b"")))
    assert r.code == 200 and await r.content() == b""
    assert r.original.length == 0  # the client moves Content-Length into .length


@pytest_twisted.ensureDeferred
async def test_upload_status_cancel_and_unknown(mem_server: Server) -> None:
    url = await mem_server.start_upload("cancel")
    r = await treq.delete(url)
    assert r.code == 204
    for method in (treq.get, treq.delete):
        r = await method(url)
        assert r.code == 404
        assert await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    r = await treq.patch(url, data=b"x")
    assert r.code == 404 and await error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    r = await treq.get(mem_server.url + "/v2/cancel/blobs/uploads/bad%20id")
    assert r.code == 400 and await error_code(r) == "BLOB_UPLOAD_INVALID"
    assert await mem_server.files() == {}


@pytest_twisted.ensureDeferred
async def test_cross_repository_mount(server: Server) -> None:
    data = os.urandom(5000)
    digest = await server.push_blob("src", data)
    r = await treq.post(f"{server.url}/v2/dst/blobs/uploads/?mount={digest}&from=src")
    assert r.code == 201
    assert r.headers.getRawHeaders("location") == [f"/v2/dst/blobs/{digest}"]
    assert r.headers.getRawHeaders("docker-content-digest") == [digest]
    assert await (await treq.get(server.blob_url("dst", digest))).content() == data
    # Source lacks it: fall back to an upload.
    other = sha(b"unknown")
    r = await treq.post(f"{server.url}/v2/dst2/blobs/uploads/?mount={other}&from=src")
    assert r.code == 202
    assert r.headers.getRawHeaders("location")[0].startswith("/v2/dst2/blobs/uploads/")
    # Automatic mount: no from, blob already stored.
    r = await treq.post(f"{server.url}/v2/dst3/blobs/uploads/?mount={digest}")
    assert r.code == 201
    # Invalid from name: no mount, no error.
    r = await treq.post(f"{server.url}/v2/dst4/blobs/uploads/?mount={other}&from=Bad..Name")
    assert r.code == 202
    r = await treq.post(f"{server.url}/v2/dst4/blobs/uploads/?mount=sha256:zz&from=src")
    assert r.code == 400 and await error_code(r) == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_blob_get_head_and_ranges(server: Server) -> None:
    data = os.urandom(1000)
    digest = await server.push_blob("ranges", data)
    url = server.blob_url("ranges", digest)
    r = await treq.head(url)
    assert r.code == 200
    assert r.headers.getRawHeaders("content-length") == ["1000"]
    assert r.headers.getRawHeaders("docker-content-digest") == [digest]
    assert r.headers.getRawHeaders("etag") == [f'"{digest}"']
    assert r.headers.getRawHeaders("accept-ranges") == ["bytes"]
    for header, (start, end) in [("bytes=0-9", (0, 9)), ("bytes=990-", (990, 999)), ("bytes=-5", (995, 999)),
                                 ("bytes=500-5000", (500, 999))]:
        r = await treq.get(url, headers={"Range": header})
        assert r.code == 206, header
        assert await r.content() == data[start : end + 1]
        assert r.headers.getRawHeaders("content-range") == [f"bytes {start}-{end}/1000"]
        assert r.original.length == end - start + 1
    for header in ("bytes=1000-", "bytes=5000-6000"):
        r = await treq.get(url, headers={"Range": header})
        assert r.code == 416, header
        assert r.headers.getRawHeaders("content-range") == ["bytes */1000"]
        assert await error_code(r) == "RANGE_INVALID"
    r = await treq.get(url, headers={"Range": "bytes=9-3"})
    assert r.code == 416
    # Several ranges: the whole blob (a server may ignore Range).
    r = await treq.get(url, headers={"Range": "bytes=0-1,5-6"})
    assert r.code == 200 and await r.content() == data
    r = await treq.get(url, headers={"If-None-Match": f'"{digest}"'})
    assert r.code == 304
    r = await treq.get(url.replace("sha256:", "sha256%3A"))
    assert r.code == 200 and await r.content() == data
    r = await treq.get(url.replace("/ranges/", "/ran%67es/"))
    assert r.code == 200


@pytest_twisted.ensureDeferred
async def test_blob_visible_only_where_linked_and_delete(server: Server) -> None:
    digest = await server.push_blob("owner", b"private")
    r = await treq.get(server.blob_url("stranger", digest))
    assert r.code == 404 and await error_code(r) == "BLOB_UNKNOWN"
    r = await treq.delete(server.blob_url("owner", digest))
    assert r.code == 202
    r = await treq.head(server.blob_url("owner", digest))
    assert r.code == 404
    r = await treq.delete(server.blob_url("owner", digest))
    assert r.code == 404 and await error_code(r) == "BLOB_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_bad_names_and_endpoints(mem_server: Server) -> None:
    d = sha(b"x")
    for name in ("Upper", "a/../b", "a//b", "-lead", "trail-", "a" * 256, "a/" * 127 + "bb"):
        r = await treq.get(f"{mem_server.url}/v2/{name}/blobs/{d}")
        assert r.code == 400, name
        assert await error_code(r) == "NAME_INVALID", name
    r = await treq.get(f"{mem_server.url}/v2/{'a' * 255}/blobs/{d}")
    assert r.code == 404 and await error_code(r) == "BLOB_UNKNOWN"
    r = await treq.get(f"{mem_server.url}/v2/a/nothing/here")
    assert r.code == 404
    assert (await r.json())["errors"][0]["code"]
    r = await treq.request("OPTIONS", f"{mem_server.url}/v2/a/blobs/{d}")
    assert r.code == 405 and await error_code(r) == "UNSUPPORTED"
    assert "GET" in r.headers.getRawHeaders("allow")[0]
    r = await treq.get(f"{mem_server.url}/v2/a/blobs/sha256:{'0' * 63}")
    assert r.code == 400 and await error_code(r) == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_deletes_disabled_and_read_only() -> None:
    from tests.api.conftest import _serve
    from registry.storage.factory import create_driver

    driver = create_driver("inmemory", {})
    async for s in _serve(driver, delete_enabled=False):
        digest = await s.push_blob("keep", b"data")
        r = await treq.delete(s.blob_url("keep", digest))
        assert r.code == 405 and await error_code(r) == "UNSUPPORTED"
        assert "storage.delete.enabled" in (await r.json())["errors"][0]["message"]
    async for s in _serve(driver, readonly=True):
        before = await s.files()
        r = await treq.post(s.url + "/v2/keep/blobs/uploads/")
        assert r.code == 405 and await error_code(r) == "UNSUPPORTED"
        r = await treq.post(f"{s.url}/v2/keep/blobs/uploads/?digest={sha(b'x')}", data=b"x")
        assert r.code == 405
        r = await treq.get(s.blob_url("keep", digest))
        assert r.code == 200 and await r.content() == b"data"
        assert await s.files() == before


@pytest_twisted.ensureDeferred
async def test_body_streams_into_storage_before_it_is_complete(mem_server: Server) -> None:
    """The PATCH body reaches the driver's writer while the request is still
    arriving (it is not spooled into request.content first)."""
    written: list[int] = []
    driver = mem_server.driver
    open_writer = driver.writer

    async def counting_writer(path: str, append: bool = False) -> object:
        w = await open_writer(path, append)
        write = w.write

        def counted(data: bytes) -> object:
            written.append(len(data))
            return write(data)

        w.write = counted  # type: ignore[method-assign]
        return w

    driver.writer = counting_writer  # type: ignore[method-assign]
    url = await mem_server.start_upload("live")
    host, port = mem_server.url[len("http://"):].split(":")
    from twisted.internet.protocol import ClientCreator, Protocol

    proto = await ClientCreator(reactor, Protocol).connectTCP(host, int(port))
    proto.transport.write(
        f"PATCH {url[len(mem_server.url):]} HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n".encode()
    )
    proto.transport.write(b"q" * 1_000_000)
    for _ in range(300):
        await deferLater(reactor, 0.01, lambda: None)
        if sum(written) >= 1_000_000:
            break
    # Half the body is still to come, and all that was sent is in the writer.
    assert sum(written) == 1_000_000
    proto.transport.loseConnection()
    await deferLater(reactor, 0.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_tls_client_hello_on_plain_port_gets_400_and_close(mem_server: Server) -> None:
    from twisted.internet.protocol import ClientCreator, Protocol

    received: list[bytes] = []
    closed: Deferred[None] = Deferred()

    class Probe(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

        def connectionLost(self, reason: object) -> None:
            closed.callback(None)

    host, port = mem_server.url[len("http://"):].split(":")
    proto = await ClientCreator(reactor, Probe).connectTCP(host, int(port))
    proto.transport.write(bytes.fromhex("160301020001") + os.urandom(64))
    await closed
    assert b"".join(received).startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest_twisted.ensureDeferred
async def test_upload_survives_lost_connection_and_resumes(mem_server: Server) -> None:
    """A PATCH cut off mid-body keeps what arrived; GET status tells the
    client where to continue, and the finished digest verifies."""
    data = os.urandom(400_000)
    url = await mem_server.start_upload("cut")
    host, port = mem_server.url[len("http://"):].split(":")
    from twisted.internet.protocol import ClientCreator, Protocol

    proto = await ClientCreator(reactor, Protocol).connectTCP(host, int(port))
    proto.transport.write(
        f"PATCH {url[len(mem_server.url):]} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    )
    proto.transport.write(data[:150_000])
    upload_id = url.rsplit("/", 1)[1]
    for _ in range(500):  # until some of the body is in storage (in-memory writes land at once)
        await deferLater(reactor, 0.01, lambda: None)
        if (await mem_server.driver.stat(paths.upload_data("cut", upload_id))).size > 0:
            break
    proto.transport.abortConnection()
    await deferLater(reactor, 0.2, lambda: None)
    r = await treq.get(url)
    assert r.code == 204
    end = int(r.headers.getRawHeaders("range")[0].split("-")[1])
    offset = end + 1
    assert 0 < offset <= 150_000
    r = await treq.patch(url, data=data[offset:], headers={"Content-Range": f"{offset}-{len(data) - 1}"})
    assert r.code == 202, await r.text()
    r = await treq.put(url + "?digest=" + sha(data))
    assert r.code == 201, await r.text()
    assert str(Digest.parse(sha(data))) == r.headers.getRawHeaders("docker-content-digest")[0]


@pytest_twisted.ensureDeferred
async def test_expect_100_continue(mem_server: Server) -> None:
    url = await mem_server.start_upload("expect")
    r = await treq.patch(url, data=b"abc", headers={"Expect": "100-continue"})
    assert r.code == 202

