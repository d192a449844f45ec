"""The registry's HTTP API over the S3 driver on the session's Ceph RGW:
blob uploads in many PATCH requests served by two registry instances on one
bucket (the upload's state lives in the bucket), digests verified, blob GETs
redirected (307) to a presigned URL that serves the bytes, HEADs answered
from a stat without a redirect."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, AsyncIterator

import pytest_twisted
import treq
from twisted.internet import reactor

from registry.app import make_root
from registry.http import RegistrySite
from registry.storage.driver import IStorageDriver
from tests.storage.conformance import MiB, pattern
from tests.storage.rgw import RGW, s3_driver, shared_gateway
from tests.storage.test_s3 import Recorder, inner


class Instance:
    """One registry process: a Site on a free port over its own S3 driver."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver
        self.port = reactor.listenTCP(0, RegistrySite(make_root(driver, delete_enabled=True)), interface="127.0.0.1")
        self.url = f"http://127.0.0.1:{self.port.getHost().port}"

    async def stop(self) -> None:
        await self.port.stopListening()
        await self.driver.close()


@pytest_twisted.async_yield_fixture(params=["auto", False], ids=["signed", "unsigned-streamed"])
async def instances(request: Any) -> AsyncIterator[tuple[Instance, Instance]]:
    """Two instances on one root; with payloads signed (the default over
    http) or unsigned, when parts are streamed as a request's bytes arrive."""
    gateway: RGW = shared_gateway()
    root = f"t-{uuid.uuid4().hex[:12]}"
    a = Instance(s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=request.param))
    b = Instance(s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=request.param))
    assert gateway.endpoint
    try:
        yield a, b
    finally:
        await a.driver.delete("/")
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_chunked_upload_across_instances_then_redirected_get(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    data = pattern(13 * MiB + 12345, seed=21)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = await treq.post(f"{a.url}/v2/team/app/blobs/uploads/")
    assert r.code == 202, await r.text()
    location = r.headers.getRawHeaders("location")[0]
    path = location if location.startswith("/") else "/" + location.split("/", 3)[3]
    # Chunks of 6 MiB, 2 bytes, 6 MiB and the rest, alternating instances.
    bounds = [0, 6 * MiB, 6 * MiB + 2, 12 * MiB + 2, len(data)]
    for i in range(len(bounds) - 1):
        start, end = bounds[i], bounds[i + 1]
        server = (a, b)[i % 2]
        r = await treq.patch(
            server.url + path,
            data=data[start:end],
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"},
        )
        assert r.code == 202, await r.text()
        await r.content()
        assert r.headers.getRawHeaders("range")[0] == f"0-{end - 1}"
        path = r.headers.getRawHeaders("location")[0]
        path = path if path.startswith("/") else "/" + path.split("/", 3)[3]
    # The other instance reports the same offset.
    r = await treq.get(a.url + path)
    assert r.headers.getRawHeaders("range")[0] == f"0-{len(data) - 1}"
    await r.content()
    sep = "&" if "?" in path else "?"
    recorder = Recorder(b.driver)
    r = await treq.put(f"{b.url}{path}{sep}digest={digest}")
    assert r.code == 201, await r.text()
    await r.content()
    # Finishing verified the digest from the stored hash state, completed
    # the multipart upload the PATCHes kept open (its tail copied as the last
    # part) and moved the 13 MiB server-side: no byte of the blob came back
    # through the registry (a GET with uploadId is ListParts: part sizes).
    assert [(m, k) for m, k, q, h in recorder.calls if m == "GET" and k and k.endswith("/data") and "uploadId" not in q] == []
    copy_objects = [h for m, _, q, h in recorder.calls if m == "PUT" and "x-amz-copy-source" in h and "partNumber" not in q]
    assert len(copy_objects) == 1  # below the 32 MiB threshold: one CopyObject
    assert all("x-amz-copy-source-range" in h for h in recorder.copies() if h not in copy_objects)

    blob_url = f"{a.url}/v2/team/app/blobs/{digest}"
    r = await treq.head(blob_url)
    assert r.code == 200
    assert r.headers.getRawHeaders("content-length") == [str(len(data))]
    r = await treq.get(blob_url, allow_redirects=False)
    assert r.code == 307
    await r.content()
    target = r.headers.getRawHeaders("location")[0]
    assert "X-Amz-Signature=" in target
    r = await treq.get(target)  # straight from S3, no registry credentials needed
    assert r.code == 200
    body = await r.content()
    assert hashlib.sha256(body).hexdigest() == digest.split(":")[1]
    # A ranged GET is served by the registry itself.
    r = await treq.get(blob_url, headers={"Range": "bytes=100-199"})
    assert r.code == 206
    assert await r.content() == data[100:200]


@pytest_twisted.ensureDeferred
async def test_monolithic_push_and_wrong_digest(instances: tuple[Instance, Instance]) -> None:
    a, b = instances
    data = pattern(70_000, seed=22)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = await treq.post(f"{a.url}/v2/mono/blobs/uploads/?digest={digest}", data=data)
    assert r.code == 201, await r.text()
    await r.content()
    r = await treq.get(f"{b.url}/v2/mono/blobs/{digest}", allow_redirects=False)
    assert r.code == 307
    await r.content()
    r = await treq.get(r.headers.getRawHeaders("location")[0])
    assert await r.content() == data
    wrong = "sha256:" + "0" * 64
    r = await treq.post(f"{b.url}/v2/mono/blobs/uploads/?digest={wrong}", data=b"other bytes")
    assert r.code == 400
    body: Any = await r.json()
    assert body["errors"][0]["code"] == "DIGEST_INVALID"


@pytest_twisted.ensureDeferred
async def test_redirect_disable_serves_blobs_through_the_registry() -> None:
    # storage.redirect.disable: true -> the bytes come from the registry, no 307.
    shared_gateway()
    driver = s3_driver(rootdirectory=f"t-{uuid.uuid4().hex[:12]}")
    port = reactor.listenTCP(0, RegistrySite(make_root(driver, redirect=False)), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        data = pattern(20_000, seed=23)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = await treq.post(f"{url}/v2/direct/blobs/uploads/?digest={digest}", data=data)
        assert r.code == 201, await r.text()
        r = await treq.get(f"{url}/v2/direct/blobs/{digest}", allow_redirects=False)
        assert r.code == 200 and await r.content() == data
    finally:
        await driver.delete("/")
        await port.stopListening()
        await driver.close()


def _kind(method: str, key: str | None, query: dict[str, str], headers: dict[str, str]) -> str:
    """A recorded S3 request, named by what it is."""
    if "partNumber" in query:
        return "UploadPartCopy" if "x-amz-copy-source" in headers else "UploadPart"
    if "uploads" in query:
        return "CreateMultipartUpload" if method == "POST" else "ListMultipartUploads"
    if "uploadId" in query:
        return {"GET": "ListParts", "POST": "CompleteMultipartUpload", "DELETE": "AbortMultipartUpload"}[method]
    if "list-type" in query:
        return "ListObjects"
    if "delete" in query:
        return "DeleteObjects"
    if method == "PUT" and "x-amz-copy-source" in headers:
        return "CopyObject"
    name = (key or "").rsplit("/", 1)[-1]
    if method == "PUT" and "x-amz-meta-registry-append-upload" in headers:
        return f"PUT {name} (append state)"
    return f"{method} {name}"


@pytest_twisted.async_yield_fixture(params=["auto", False], ids=["signed", "unsigned-streamed"])
async def default_instances(request: Any) -> AsyncIterator[tuple[Instance, Instance]]:
    """Two instances on one root with the default part size (10 MiB)."""
    shared_gateway()
    root = f"t-{uuid.uuid4().hex[:12]}"
    a = Instance(s3_driver(rootdirectory=root, signpayload=request.param))
    b = Instance(s3_driver(rootdirectory=root, signpayload=request.param))
    try:
        yield a, b
    finally:
        await a.driver.delete("/")
        await a.stop()
        await b.stop()


@pytest_twisted.ensureDeferred
async def test_requests_per_patch_are_pinned(default_instances: tuple[Instance, Instance]) -> None:
    """The S3 requests of a chunked upload, counted at the driver's HTTP
    layer, with every request on the other instance than the one before
    (as round robin over instances or worker processes does: nothing
    remembered in a process helps). An 8 MiB PATCH is one part: the data's
    state read (HEAD, which carries the hash state), the part, and the new
    state (which carries the new hash state) -- one more, the start of the
    multipart upload, for the first. A request added to this path fails here."""
    a, b = default_instances
    data = pattern(4 * 8 * MiB, seed=31)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    recorders = (Recorder(a.driver), Recorder(b.driver))

    def taken() -> list[str]:
        calls = [_kind(*call) for r in recorders for call in r.own()]
        for r in recorders:
            r.calls.clear()
        return sorted(calls)

    r = await treq.post(f"{a.url}/v2/pin/blobs/uploads/")
    assert r.code == 202
    await r.content()
    assert taken() == ["PUT data", "PUT startedat"]  # scratch objects: no object-vs-directory listing
    path = r.headers.getRawHeaders("location")[0]
    for i, start in enumerate(range(0, len(data), 8 * MiB)):
        server = (b, a)[i % 2]
        end = start + 8 * MiB
        r = await treq.patch(
            server.url + path, data=data[start:end],
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"},
        )
        assert r.code == 202, await r.text()
        await r.content()
        path = r.headers.getRawHeaders("location")[0]
        expected = ["HEAD data", "PUT data (append state)", "UploadPart"]
        if i == 0:
            expected = sorted(expected + ["CreateMultipartUpload"])
        assert taken() == expected, f"PATCH {i + 1}"
    # The upload's status on the other instance: one HEAD.
    r = await treq.get((b, a)[len(data) // (8 * MiB) % 2].url + path)
    assert r.code == 204 and r.headers.getRawHeaders("range") == [f"0-{len(data) - 1}"]
    await r.content()
    assert taken() == ["HEAD data"]
    sep = "&" if "?" in path else "?"
    r = await treq.put(f"{a.url}{path}{sep}digest={digest}")
    assert r.code == 201, await r.text()
    await r.content()
    finish = taken()
    assert not any(k.startswith(("GET startedat", "ListObjects")) and "hashstate" in k for k in finish)
    r = await treq.get(f"{b.url}/v2/pin/blobs/{digest}")
    assert r.code == 200
    assert hashlib.sha256(await r.content()).hexdigest() == digest.split(":")[1]


@pytest_twisted.ensureDeferred
async def test_uploads_continue_across_instances_with_and_without_notes() -> None:
    """An instance whose driver keeps no writer notes (as one from before
    notes, during a rolling upgrade) and one that does serve one upload in
    turns: each finds the hash state the other left (the note at the data's
    size, else the ``hashstates`` objects, re-hashing the tail they miss),
    and the blob verifies."""
    shared_gateway()
    root = f"t-{uuid.uuid4().hex[:12]}"
    plain = s3_driver(rootdirectory=root, chunksize=5 * MiB)
    inner(plain).writer_notes = False  # type: ignore[misc]
    old = Instance(plain)
    new = Instance(s3_driver(rootdirectory=root, chunksize=5 * MiB))
    data = pattern(3 * 6 * MiB + 7, seed=33)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    try:
        r = await treq.post(f"{new.url}/v2/mixed/blobs/uploads/")
        assert r.code == 202
        await r.content()
        path = r.headers.getRawHeaders("location")[0]
        bounds = [0, 6 * MiB, 12 * MiB, len(data)]
        for i, server in enumerate((old, new, old)):
            start, end = bounds[i], bounds[i + 1]
            r = await treq.patch(
                server.url + path, data=data[start:end],
                headers={"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"},
            )
            assert r.code == 202, await r.text()
            await r.content()
            path = r.headers.getRawHeaders("location")[0]
            # Both report the offset.
            for other in (old, new):
                r = await treq.get(other.url + path)
                assert r.headers.getRawHeaders("range") == [f"0-{end - 1}"]
                await r.content()
        sep = "&" if "?" in path else "?"
        r = await treq.put(f"{new.url}{path}{sep}digest={digest}")
        assert r.code == 201, await r.text()
        await r.content()
        r = await treq.get(f"{old.url}/v2/mixed/blobs/{digest}")
        assert hashlib.sha256(await r.content()).hexdigest() == digest.split(":")[1]
    finally:
        await new.driver.delete("/")
        await old.stop()
        await new.stop()
