"""Staged writes on the S3 driver (``IStagedWriting``: bytes invisible at
the path until ``commit``; a multipart upload at the key) and the registry's
monolithic uploads through them: a blob whose digest is known before its
bytes goes straight to the blob's path, with no ``_uploads`` object, no
server-side copy, nothing visible before the digest verified, and nothing
written for a blob already stored. On the session's Ceph RGW."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq

from registry.storage import paths
from registry.digest import Digest
from registry.storage.driver import DriverError, IStorageDriver, PathNotFoundError
from tests.storage.conformance import MiB, pattern, read_all
from tests.storage.rgw import s3_driver, shared_gateway
from tests.storage.test_s3 import Recorder, inner, uploads_below
from tests.storage.test_s3_registry import Instance, _kind


@pytest_twisted.async_yield_fixture(params=["auto", False], ids=["signed", "unsigned-streamed"])
async def driver(request: Any) -> AsyncIterator[IStorageDriver]:
    shared_gateway()
    d = s3_driver(chunksize=5 * MiB, signpayload=request.param)
    try:
        yield d
    finally:
        await d.delete("/")
        await d.close()


async def _write(writer: Any, data: bytes, step: int = 256 * 1024) -> None:
    for start in range(0, len(data), step):
        await writer.write(data[start : start + step])


# -- the driver's staged writer --------------------------------------------------


@pytest.mark.parametrize("size", [0, 70_000, 12 * MiB + 3])
@pytest_twisted.ensureDeferred
async def test_staged_bytes_are_invisible_until_commit(driver: IStorageDriver, size: int) -> None:
    assert driver.staged_writes  # type: ignore[attr-defined]
    path = "/blobs/sha256/ab/abc/data"
    data = pattern(size, seed=41)
    writer = await driver.staged_writer(path)  # type: ignore[attr-defined]
    writer.expect(size)
    await _write(writer, data)
    with pytest.raises(PathNotFoundError):
        await driver.stat(path)
    with pytest.raises(PathNotFoundError):
        await driver.list("/blobs")
    await writer.commit()
    assert (await driver.stat(path)).size == size
    assert await read_all(driver, path) == data
    assert await uploads_below(driver, "/") == []


@pytest.mark.parametrize("finish", ["cancel", "close"])
@pytest_twisted.ensureDeferred
async def test_a_cancelled_staged_writer_leaves_the_path_as_it_was(driver: IStorageDriver, finish: str) -> None:
    path = "/blobs/sha256/ab/abc/data"
    await driver.put_content(path, b"committed before")
    writer = await driver.staged_writer(path)  # type: ignore[attr-defined]
    writer.expect(11 * MiB)
    await _write(writer, pattern(11 * MiB, seed=42))  # parts were sent
    await getattr(writer, finish)()
    assert await driver.get_content(path) == b"committed before"
    assert await uploads_below(driver, "/") == []
    # A staged writer that never got a byte leaves nothing either.
    writer = await driver.staged_writer("/other/data")  # type: ignore[attr-defined]
    await writer.cancel()
    assert [i.path for i in await driver.walk("/") if not i.is_dir] == [path]


@pytest_twisted.ensureDeferred
async def test_a_staged_writer_keeps_the_object_versus_directory_rule(driver: IStorageDriver) -> None:
    await driver.put_content("/a/b/c", b"x")
    # The check runs while the bytes arrive (no round trips before the
    # first byte): a writer of a path that cannot be an object fails by its
    # commit at the latest, and leaves nothing behind.
    for path, size in (("/a/b", 3), ("/a/b/c/d", 3), ("/a/b", 6 * MiB + 1)):
        writer = await driver.staged_writer(path)  # type: ignore[attr-defined]
        try:
            await writer.write(pattern(size, seed=1))
        except DriverError as e:  # the check had answered: no more parts
            assert "cannot create" in str(e)
            await writer.cancel()
        else:
            with pytest.raises(DriverError, match="cannot create"):
                await writer.commit()
        assert await driver.get_content("/a/b/c") == b"x"
        assert await driver.list("/a/b") == ["/a/b/c"]
        assert await uploads_below(driver, "/a") == []


# -- monolithic uploads through the registry -------------------------------------------


@pytest_twisted.async_yield_fixture(params=["auto", False], ids=["signed", "unsigned-streamed"])
async def instance(request: Any) -> AsyncIterator[Instance]:
    """One registry on a fresh root with the default 10 MiB parts."""
    shared_gateway()
    inst = Instance(s3_driver(rootdirectory=f"t-{uuid.uuid4().hex[:12]}", signpayload=request.param))
    try:
        yield inst
    finally:
        await inst.driver.delete("/")
        await inst.stop()


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def _objects(driver: IStorageDriver) -> list[str]:
    return [i.path for i in await driver.walk("/") if not i.is_dir]


@pytest_twisted.ensureDeferred
async def test_monolithic_upload_requests_are_pinned(instance: Instance) -> None:
    """A 24 MiB ``POST ?digest=`` into a repository that has a blob: the
    blob's stat (HEAD + listing: absent), the object-versus-directory check
    of its path, the parts of a multipart upload at the blob's key and its
    completion, then the link (stat, check, PUT). Nothing under
    ``_uploads``, no copy, no ListParts, no delete. A request added to this
    path fails here."""
    driver = instance.driver
    first = pattern(1000, seed=43)
    r = await treq.post(f"{instance.url}/v2/pin/blobs/uploads/?digest={_sha(first)}", data=first)
    assert r.code == 201, await r.text()
    await r.content()
    recorder = Recorder(driver)
    data = pattern(24 * MiB, seed=44)
    r = await treq.post(f"{instance.url}/v2/pin/blobs/uploads/?digest={_sha(data)}", data=data)
    assert r.code == 201, await r.text()
    await r.content()
    calls = recorder.own()
    assert not [c for c in calls if "_uploads" in (c[1] or "") or "_uploads" in c[2].get("prefix", "")]
    hexd = _sha(data).split(":")[1]
    kinds = sorted(_kind(*c).replace(hexd, "<hex>").replace(f"HEAD {hexd[:2]}", "HEAD <xx>") for c in calls)
    # Streamed (unsigned): 10 + 14 MiB as the bytes arrive; signed: 10 + 10 gathered, the last 4 at commit.
    part_count = 3 if inner(driver).config.signpayload else 2
    assert kinds == sorted([
        "HEAD data", "ListObjects",  # the blob's stat: not stored yet
        # may .../<xx>/<hex>/data be created (a new <xx> here: the check walks up to blobs/sha256)?
        "ListObjects", "ListObjects", "HEAD <hex>", "ListObjects", "HEAD <xx>", "ListObjects",
        "CreateMultipartUpload", *["UploadPart"] * part_count, "CompleteMultipartUpload",
        "ListObjects", "ListObjects", "HEAD <hex>", "ListObjects", "PUT link",  # the layer link, checked
        "ListObjects", "HEAD data", "HEAD link",  # the link's fence against a concurrent sweep
    ]), kinds
    r = await treq.get(f"{instance.url}/v2/pin/blobs/{_sha(data)}")
    assert r.code == 200 and await r.content() == data


@pytest_twisted.ensureDeferred
async def test_a_wrong_digest_leaves_no_blob_and_no_upload(instance: Instance) -> None:
    driver = instance.driver
    for size in (3000, 23 * MiB):  # one PUT at commit / a multipart upload at the blob's key
        data = pattern(size, seed=45)
        wrong = _sha(data + b"!")
        r = await treq.post(f"{instance.url}/v2/bad/blobs/uploads/?digest={wrong}", data=data)
        assert r.code == 400
        body: Any = await r.json()
        assert body["errors"][0]["code"] == "DIGEST_INVALID"
        for d in (wrong, _sha(data)):
            with pytest.raises(PathNotFoundError):
                await driver.stat(paths.blob_data(Digest.parse(d)))
        assert not [p for p in await _objects(driver) if "/_uploads/" in p or "/blobs/" in p]
        assert await uploads_below(driver, "/") == []


@pytest_twisted.ensureDeferred
async def test_a_blob_already_stored_is_not_written_again(instance: Instance) -> None:
    driver = instance.driver
    data = pattern(12 * MiB, seed=46)
    r = await treq.post(f"{instance.url}/v2/one/blobs/uploads/?digest={_sha(data)}", data=data)
    assert r.code == 201, await r.text()
    await r.content()
    stored = await driver.stat(paths.blob_data(Digest.parse(_sha(data))))
    recorder = Recorder(driver)
    # Another repository pushes the same bytes: hashed, verified, linked.
    r = await treq.post(f"{instance.url}/v2/two/blobs/uploads/?digest={_sha(data)}", data=data)
    assert r.code == 201, await r.text()
    await r.content()
    kinds = [_kind(*c) for c in recorder.own()]
    assert not [k for k in kinds if k in ("CreateMultipartUpload", "UploadPart", "PUT data", "CopyObject")], kinds
    assert (await driver.stat(paths.blob_data(Digest.parse(_sha(data))))).mod_time == stored.mod_time
    # The same bytes under a wrong digest: refused, the stored blob untouched.
    r = await treq.post(f"{instance.url}/v2/three/blobs/uploads/?digest={_sha(data)}", data=data[:-1])
    assert r.code == 400
    await r.content()
    r = await treq.get(f"{instance.url}/v2/two/blobs/{_sha(data)}")
    assert r.code == 200 and await r.content() == data
    assert (await treq.head(f"{instance.url}/v2/three/blobs/{_sha(data)}")).code == 404
    assert not [p for p in await _objects(driver) if "/_uploads/" in p]


@pytest_twisted.ensureDeferred
async def test_put_with_every_byte_on_an_empty_session_goes_straight_to_the_blob(instance: Instance) -> None:
    driver = instance.driver
    data = pattern(11 * MiB, seed=47)
    r = await treq.post(f"{instance.url}/v2/put/blobs/uploads/")
    assert r.code == 202
    await r.content()
    location = r.headers.getRawHeaders("location")[0]
    sep = "&" if "?" in location else "?"
    # A wrong digest: refused, no blob; the session stays, still empty.
    r = await treq.put(f"{instance.url}{location}{sep}digest={_sha(b'other')}", data=data)
    assert r.code == 400
    await r.content()
    assert not [p for p in await _objects(driver) if "/blobs/" in p]
    assert await uploads_below(driver, "/") == []
    r = await treq.get(instance.url + location)
    assert r.code == 204 and r.headers.getRawHeaders("range") == ["0-0"]
    await r.content()
    recorder = Recorder(driver)
    r = await treq.put(f"{instance.url}{location}{sep}digest={_sha(data)}", data=data,
                       headers={"Content-Range": f"0-{len(data) - 1}"})
    assert r.code == 201, await r.text()
    await r.content()
    kinds = [_kind(*c) for c in recorder.own()]
    assert "CopyObject" not in kinds and "UploadPartCopy" not in kinds and "PUT data (append state)" not in kinds, kinds
    assert not [p for p in await _objects(driver) if "/_uploads/" in p]
    r = await treq.get(f"{instance.url}/v2/put/blobs/{_sha(data)}")
    assert r.code == 200 and await r.content() == data
