"""The S3 driver against a real S3 (the session's Ceph RADOS Gateway, see
``tests/storage/rgw.py``), beyond the shared conformance suite: appends
resumed by other driver instances and after a crash, server-side copies,
pagination, presigned URLs, configuration, and clear errors (bad
credentials, a missing bucket, an unreachable or silent endpoint) instead
of hangs."""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import DeferredSemaphore, ensureDeferred, gatherResults
from twisted.internet.protocol import Factory, Protocol

from registry.config import load_config
from registry.storage.driver import DriverError, IStorageDriver, PathNotFoundError
from registry.storage.drivers.s3 import LAST_PART, S3Driver, parse_params
from registry.storage.factory import create_driver
from tests.storage.conformance import MiB, pattern, read_all, write_all
from tests.storage.rgw import RGW, s3_driver, shared_gateway


def inner(driver: IStorageDriver) -> S3Driver:
    """The S3 driver inside the wrapper ``create_driver`` returns."""
    found: Any = getattr(driver, "wrapped", driver)
    assert isinstance(found, S3Driver)
    return found


class Recorder:
    """Records every S3 request a driver makes (method, key, query, headers)."""

    def __init__(self, driver: IStorageDriver) -> None:
        self.calls: list[tuple[str, str | None, dict[str, str], dict[str, str]]] = []
        s3 = self._s3 = inner(driver)
        original = s3._request

        async def recording(method: str, key: str | None, query: Any = None, headers: Any = None, **kw: Any) -> Any:
            self.calls.append((method, key, dict(query or {}), dict(headers or {})))
            return await original(method, key, query, headers, **kw)

        s3._request = recording  # type: ignore[method-assign]

    def own(self) -> list[tuple[str, str | None, dict[str, str], dict[str, str]]]:
        """The calls without those of the driver's start-up check (a HEAD
        of the bucket and a one-key listing of the root, made when the
        driver is created, so racing with what a test counts)."""
        root = self._s3._prefix
        return [
            c for c in self.calls
            if c[1] is not None or not (c[0] == "HEAD" or (c[2].get("prefix") == root and c[2].get("max-keys") == "1"))
        ]

    def copies(self) -> list[dict[str, str]]:
        return [h for m, _, _, h in self.calls if m == "PUT" and "x-amz-copy-source" in h]

    def gets(self, key: str) -> int:
        """GETs of the object's bytes (not ListParts, a GET with ``uploadId``)."""
        return sum(1 for m, k, q, _ in self.calls if m == "GET" and k == key and "uploadId" not in q)


async def close(*drivers: IStorageDriver) -> None:
    for d in drivers:
        await d.close()


async def write_closed(driver: IStorageDriver, path: str, data: bytes, append: bool = False) -> None:
    """Write ``data`` in 256 KiB writes and ``close`` (not commit): at 5 MiB
    or more this leaves an append state (an open multipart upload)."""
    writer = await driver.writer(path, append=append)
    for start in range(0, len(data), 256 * 1024):
        await writer.write(data[start : start + 256 * 1024])
    await writer.close()


async def uploads_below(driver: IStorageDriver, prefix: str) -> list[str]:
    """Keys of the multipart uploads in progress below ``prefix`` (raw S3)."""
    s3 = inner(driver)
    root = await s3._xml("GET", None, {"uploads": "", "prefix": s3._k(prefix)})
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    return [u.findtext(ns + "Key") or "" for u in root.iter(ns + "Upload")]


@pytest.fixture
def gateway() -> RGW:
    return shared_gateway()


@pytest.fixture
def root() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest_twisted.async_yield_fixture
async def pair(gateway: RGW, root: str) -> AsyncIterator[tuple[IStorageDriver, IStorageDriver]]:
    """Two independent driver instances (two registry processes) on one root,
    with 5 MiB parts."""
    a = s3_driver(rootdirectory=root, chunksize=5 * MiB)
    b = s3_driver(rootdirectory=root, chunksize=5 * MiB)
    try:
        yield a, b
        assert await a.walk("/") == [], "test left objects behind"
    finally:
        await close(a, b)


# -- appends across instances ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_append_continues_on_another_instance(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    a, b = pair
    path = "/repo/_uploads/u/data"
    pieces = [pattern(6 * MiB + 5, seed=1), pattern(3 * MiB, seed=2), pattern(7, seed=3), pattern(11 * MiB, seed=4)]
    writer = await a.writer(path)
    for start in range(0, len(pieces[0]), 256 * 1024):
        await writer.write(pieces[0][start : start + 256 * 1024])
    await writer.close()
    expected = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        driver = (b, a)[i % 2]
        recorder = Recorder(driver)
        writer = await driver.writer(path, append=True)
        assert writer.size == len(expected)
        for start in range(0, len(piece), 1 * MiB):
            await writer.write(piece[start : start + MiB])
        await writer.close()
        # The existing >= 5 MiB were never read back. The first session
        # continues the open multipart upload of the append state (reading
        # back only its tail, under 5 MiB, exactly that version); the later
        # ones find a complete object (the reads below completed it) and
        # copy it inside S3.
        gets = [h for m, k, q, h in recorder.calls if m == "GET" and k == inner(driver)._k(path) and "uploadId" not in q]
        copies = recorder.copies()
        if i == 0:
            assert len(gets) == 1 and gets[0]["If-Match"], recorder.calls
            assert copies == [], recorder.calls
        else:
            assert gets == [], recorder.calls
            assert copies, recorder.calls
            assert all(h["x-amz-copy-source-if-match"] for h in copies)
        expected += piece
        other = a if driver is b else b
        assert (await other.stat(path)).size == len(expected)
        assert await read_all(other, path, len(expected) - len(piece) - 3, MiB) == expected[-len(piece) - 3 :]
    writer = await b.writer(path, append=True)
    await writer.commit()  # nothing new: no request rewrites the object
    assert await a.get_content(path) == expected
    await a.delete("/repo")


@pytest_twisted.ensureDeferred
async def test_a_writers_note_goes_with_its_bytes(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """``set_note`` stores a note in the same PUT as the bytes (a small plain
    object or an append state); the next writer on any instance reads it
    from the HEAD it opens with. A session storing bytes without a note of
    its own leaves none (a stale note would describe other bytes), a session
    storing nothing keeps the old one, a committed object has none, and a
    note over 1 KiB is refused."""
    a, b = pair
    path = "/repo/_uploads/n/data"
    assert getattr(a, "writer_notes") is True
    writer: Any = await a.writer(path)
    assert writer.note is None
    await writer.write(b"small")
    writer.set_note(b"\x00note one")
    recorder = Recorder(a)
    await writer.close()
    assert [m for m, *_ in recorder.own()] == ["PUT"]  # bytes and note: one request
    writer = await b.writer(path, append=True)
    assert writer.note == b"\x00note one" and writer.size == 5
    data = pattern(7 * MiB, seed=9)
    await writer.write(data)
    writer.set_note(b"note two")
    await writer.close()  # an append state now (>= 5 MiB)
    writer = await a.writer(path, append=True)
    assert writer.note == b"note two" and writer.size == 5 + len(data)
    await writer.close()  # nothing written: the state and its note stay
    writer = await b.writer(path, append=True)
    assert writer.note == b"note two"
    with pytest.raises(DriverError, match="at most 1024"):
        writer.set_note(b"x" * 1025)
    await writer.write(b"more")
    await writer.close()  # bytes without a note of this session
    writer = await a.writer(path, append=True)
    assert writer.note is None and writer.size == 5 + len(data) + 4
    await writer.write(b"end")
    writer.set_note(b"three")
    await writer.commit()
    writer = await b.writer(path, append=True)
    assert writer.note is None
    await writer.close()
    assert await a.get_content(path) == b"small" + data + b"more" + b"end"
    await a.delete("/repo")


@pytest_twisted.ensureDeferred
async def test_scratch_puts_skip_the_directory_check(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """A scratch ``put_content`` is one PUT (its caller owns the layout); a
    durable one still checks (listings, and HEADs of a new subtree's
    ancestors) and refuses an object below an object."""
    a, _ = pair
    recorder = Recorder(a)
    await a.put_content("/r/_uploads/x/hashstates/sha256/0", b"s", durable=False)
    assert [(m, q) for m, _, q, _ in recorder.own()] == [("PUT", {})]
    recorder.calls.clear()
    await a.put_content("/r/link", b"l")
    assert len(recorder.calls) > 1 and any("list-type" in q for _, _, q, _ in recorder.calls)
    with pytest.raises(DriverError):
        await a.put_content("/r/link/below", b"x")
    # A new subtree next to a directory (a new blob's directory next to
    # others): the parent is no directory, so one level up: its HEAD and a
    # listing of the grandparent, which is one. 4 requests, then the PUT.
    await a.put_content("/r/blobs/aa/one/data", b"1")
    recorder.calls.clear()
    await a.put_content("/r/blobs/aa/two/data", b"2")
    assert sorted((m, "list-type" in q) for m, _, q, _ in recorder.own()) == [
        ("GET", True), ("GET", True), ("GET", True), ("HEAD", False), ("PUT", False)
    ]
    # An object anywhere above refuses, however deep the new subtree.
    for parent in ("/r/blobs/aa/one/data", "/r/link"):
        with pytest.raises(DriverError, match=f"{parent} is an object"):
            await a.put_content(parent + "/b/c/d/e/f", b"x")
        with pytest.raises(DriverError, match=f"{parent} is an object"):
            await a.move("/r/blobs/aa/two/data", parent + "/x/y")
    assert await a.get_content("/r/blobs/aa/two/data") == b"2"
    await a.delete("/r")


@pytest_twisted.ensureDeferred
async def test_appends_continue_one_multipart_upload(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """Appends are linear: every session (a PATCH) continues the same open
    multipart upload, on either instance, never copying or re-reading the
    bytes of earlier sessions (at most the < 5 MiB tail of the last one);
    commit is one CompleteMultipartUpload."""
    a, b = pair
    path = "/repo/_uploads/lin/data"
    key = inner(a)._k(path)
    await a.put_content(path, b"")  # as the upload store creates it
    expected = b""
    sizes = [6 * MiB, 8 * MiB, 3 * MiB + 1, 7 * MiB, 2 * MiB, 5 * MiB + 3]
    per_session: list[int] = []
    for i, size in enumerate(sizes):
        driver = (a, b)[i % 2]
        recorder = Recorder(driver)
        piece = pattern(size, seed=20 + i)
        writer = await driver.writer(path, append=True)
        assert writer.size == len(expected)
        for start in range(0, size, 256 * 1024):
            await writer.write(piece[start : start + 256 * 1024])
        await writer.close()
        expected += piece
        assert recorder.copies() == [], recorder.calls
        gets = [h for m, k, q, h in recorder.calls if m == "GET" and k == key and "uploadId" not in q]
        assert all(h.get("If-Match") for h in gets) and len(gets) <= 1, recorder.calls
        assert [m for m, k, q, _ in recorder.calls if m == "POST" and "uploads" in q] == ([] if i else ["POST"])
        per_session.append(len(recorder.calls))
        other = b if driver is a else a
        assert (await other.stat(path)).size == len(expected)
        assert await uploads_below(other, "/repo") == [key]
    # The requests of a session do not grow with the bytes before it.
    assert max(per_session[1:]) <= 2 + max(n for n in per_session[:2]), per_session
    recorder = Recorder(b)
    writer = await b.writer(path, append=True)
    await writer.commit()
    assert recorder.copies() == [] or all(h["x-amz-copy-source-range"].startswith("bytes=0-") for h in recorder.copies())
    assert await uploads_below(a, "/repo") == []
    assert (await a.stat(path)).size == len(expected)
    assert await a.get_content(path) == expected
    await a.delete("/repo")


@pytest_twisted.ensureDeferred
async def test_crash_after_a_close_keeps_the_append_state(pair: tuple[IStorageDriver, IStorageDriver], root: str) -> None:
    """A session that dies after sending parts but before its close leaves
    the append state of the previous close; its orphan parts are ignored
    (and overwritten) by the next session."""
    a, b = pair
    path = "/repo/_uploads/crash2/data"
    first = pattern(6 * MiB + 17, seed=30)
    await write_closed(a, path, first)  # an append state: one part and a tail
    crashed = s3_driver(rootdirectory=root, chunksize=5 * MiB)
    writer = await crashed.writer(path, append=True)
    for start in range(0, 12 * MiB, MiB):
        await writer.write(pattern(MiB, seed=start))
    await writer._inner._wait_inflight()  # type: ignore[attr-defined]  # parts 2 and 3 reached S3
    await close(crashed)
    assert (await b.stat(path)).size == len(first)
    writer = await b.writer(path, append=True)
    assert writer.size == len(first)
    await writer.write(b"after the crash")
    await writer.commit()
    assert await a.get_content(path) == first + b"after the crash"
    assert await uploads_below(a, "/repo") == []
    await a.delete("/repo")


@pytest_twisted.ensureDeferred
async def test_dead_commit_leaves_no_bytes_behind(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """A commit that died after sending its final part (numbered last)
    before CompleteMultipartUpload: the next commit leaves those bytes out."""
    a, b = pair
    path = "/k/data"
    data = pattern(5 * MiB, seed=60)
    await write_closed(a, path, data)  # one part (chunksize is 5 MiB), an empty tail
    s3 = inner(a)
    head = await s3._head(s3._k(path))
    assert head is not None and head.upload and head.stored == 0
    await s3._upload_part(s3._k(path), head.upload, LAST_PART, b"bytes of a commit that died")
    writer = await b.writer(path, append=True)
    await writer.commit()
    assert await a.get_content(path) == data
    assert await uploads_below(a, "/k") == []
    await a.delete("/k")


@pytest_twisted.ensureDeferred
async def test_read_of_an_append_state_completes_it(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """Reading bytes before commit (the upload store does it only to repair
    a crash) completes the multipart upload; appends then go on from the
    complete object."""
    a, b = pair
    path = "/r/data"
    first = pattern(7 * MiB + 3, seed=40)
    await write_closed(a, path, first)
    assert await uploads_below(a, "/r") == [inner(a)._k(path)]
    assert await read_all(b, path, 6 * MiB, 100) == first[6 * MiB :]
    assert await uploads_below(a, "/r") == []
    await write_all(b, path, b"more", append=True)
    assert await a.get_content(path) == first + b"more"
    await a.delete("/r")


@pytest_twisted.ensureDeferred
async def test_delete_and_cancel_abort_an_append_state(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    a, b = pair
    await write_closed(a, "/d/data", pattern(6 * MiB, seed=50))
    assert await uploads_below(b, "/d") == [inner(b)._k("/d/data")]
    await b.delete("/d/data")
    assert await uploads_below(a, "/d") == []
    await write_closed(a, "/d/data", pattern(6 * MiB, seed=51))
    writer = await b.writer("/d/data", append=True)
    await writer.write(b"x")
    await writer.cancel()
    assert await uploads_below(a, "/d") == []
    with pytest.raises(PathNotFoundError):
        await a.stat("/d/data")


@pytest_twisted.ensureDeferred
async def test_small_existing_bytes_are_read_back_once(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    a, b = pair
    await a.put_content("/u/data", b"head-")
    recorder = Recorder(b)
    writer = await b.writer("/u/data", append=True)
    await writer.write(pattern(6 * MiB, seed=5))  # crosses a part: base + new bytes in part 1
    await writer.write(b"-tail")
    await writer.commit()
    assert recorder.gets(inner(b)._k("/u/data")) == 1
    assert recorder.copies() == []
    assert await a.get_content("/u/data") == b"head-" + pattern(6 * MiB, seed=5) + b"-tail"
    await a.delete("/u")


@pytest_twisted.ensureDeferred
async def test_crash_mid_session_keeps_the_last_close(pair: tuple[IStorageDriver, IStorageDriver], gateway: RGW, root: str) -> None:
    a, b = pair
    path = "/repo/_uploads/crash/data"
    await write_all(a, path, pattern(1000, seed=6))
    crashed = s3_driver(rootdirectory=root, chunksize=5 * MiB)
    writer = await crashed.writer(path, append=True)
    for start in range(0, 12 * MiB, MiB):  # two parts reach S3, then the process "dies"
        await writer.write(pattern(MiB, seed=start))
    await writer._inner._wait_inflight()  # type: ignore[attr-defined]  # the last part reached S3
    await close(crashed)
    assert await uploads_below(b, "/repo/_uploads/crash") == [inner(b)._k(path)]
    # Another instance sees the bytes of the last close and continues there.
    assert (await b.stat(path)).size == 1000
    writer = await b.writer(path, append=True)
    assert writer.size == 1000
    await writer.write(b"after the crash")
    await writer.commit()
    assert await a.get_content(path) == pattern(1000, seed=6) + b"after the crash"
    # Deleting the upload's directory also aborts the abandoned multipart upload.
    await a.delete("/repo/_uploads/crash")
    assert await uploads_below(b, "/repo") == []
    assert await a.walk("/") == []


@pytest_twisted.ensureDeferred
async def test_cancel_aborts_the_multipart_upload(pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    a, b = pair
    await a.put_content("/c/data", pattern(6 * MiB, seed=7))
    writer = await b.writer("/c/data", append=True)
    await writer.write(pattern(6 * MiB, seed=8))
    await writer.cancel()
    assert await uploads_below(a, "/c") == []
    with pytest.raises(PathNotFoundError):
        await a.stat("/c/data")


# -- server-side copies ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_move_above_threshold_is_a_multipart_copy(gateway: RGW, root: str) -> None:
    driver = s3_driver(
        rootdirectory=root, multipartcopythresholdsize=5 * MiB, multipartcopychunksize=5 * MiB, multipartcopymaxconcurrency=3
    )
    try:
        data = pattern(17 * MiB + 3, seed=9)
        await driver.put_content("/up/data", data)
        recorder = Recorder(driver)
        await driver.move("/up/data", "/blobs/sha256/ab/abcd/data")
        copies = recorder.copies()
        # 17 MiB in 5 MiB ranges, the short remainder folded into the last.
        assert {h["x-amz-copy-source-range"] for h in copies} == {
            f"bytes=0-{5 * MiB - 1}", f"bytes={5 * MiB}-{10 * MiB - 1}", f"bytes={10 * MiB}-{17 * MiB + 2}"
        }
        assert recorder.gets(inner(driver)._k("/up/data")) == 0
        assert await driver.get_content("/blobs/sha256/ab/abcd/data") == data
        assert await driver.list("/") == ["/blobs"]
        await driver.delete("/")
    finally:
        await close(driver)


# -- listing ---------------------------------------------------------------------------------


async def put_raw(driver: IStorageDriver, paths: list[str], concurrency: int = 32) -> None:
    """Store small objects with plain PUTs, many at once (test set-up)."""
    s3 = inner(driver)
    semaphore = DeferredSemaphore(concurrency)
    await gatherResults(
        [semaphore.run(lambda p=p: ensureDeferred(s3._put(s3._k(p), p.encode()))) for p in paths], consumeErrors=True
    )


@pytest_twisted.ensureDeferred
async def test_list_walk_delete_paginate(gateway: RGW, root: str) -> None:
    driver = s3_driver(rootdirectory=root)
    try:
        names = [f"/tags/t{i:05d}" for i in range(2345)]  # three pages of 1000
        await put_raw(driver, names + ["/tags-other"])
        assert await driver.list("/tags") == sorted(names)
        walked = await driver.walk("/")
        assert [i.path for i in walked] == ["/tags", *sorted(names), "/tags-other"]
        await driver.delete("/tags")
        assert await driver.list("/") == ["/tags-other"]
        await driver.delete("/")
        assert await driver.walk("/") == []
    finally:
        await close(driver)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_ten_thousand_tags(gateway: RGW, root: str) -> None:
    driver = s3_driver(rootdirectory=root)
    try:
        tags = [f"v{i}" for i in range(10_000)]
        base = "/docker/registry/v2/repositories/big/_manifests/tags"
        await put_raw(driver, [f"{base}/{t}/current/link" for t in tags], concurrency=64)
        assert await driver.list(base) == sorted(f"{base}/{t}" for t in tags)
        assert len([i for i in await driver.walk(base) if not i.is_dir]) == 10_000
        await driver.delete("/docker")
        assert await driver.walk("/") == []
    finally:
        await close(driver)


# -- presigned redirects -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_redirect_url_is_a_working_presigned_get(gateway: RGW, root: str) -> None:
    driver = s3_driver(rootdirectory=root)
    try:
        data = pattern(70_000, seed=10)
        await driver.put_content("/blobs/x/data", data)
        url = await driver.redirect_url("/blobs/x/data")
        assert url is not None and url.startswith(gateway.endpoint + "/")
        assert "X-Amz-Expires=1200" in url and "X-Amz-Signature=" in url
        response = await treq.get(url)  # no credentials: the URL carries them
        assert response.code == 200
        assert await response.content() == data
        tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=0")
        response = await treq.get(tampered)
        assert response.code == 403
        await response.content()
        assert await driver.redirect_url("/blobs/x/data", "PUT") is None
        await driver.delete("/blobs")
    finally:
        await close(driver)


# -- configuration ------------------------------------------------------------------------------


def test_distribution_config_and_env_overrides(gateway: RGW) -> None:
    yaml_text = f"""
version: 0.1
storage:
  s3:
    accesskey: {gateway.access_key}
    secretkey: wrong
    region: {gateway.region}
    regionendpoint: {gateway.endpoint}
    forcepathstyle: true
    bucket: other
    rootdirectory: /a/b
    secure: false
    v4auth: true
    chunksize: 5242880
    multipartcopychunksize: 33554432
    multipartcopymaxconcurrency: 100
    multipartcopythresholdsize: 33554432
    storageclass: STANDARD
    encrypt: false
  redirect:
    disable: false
http:
  addr: 127.0.0.1:5000
"""
    env = {"REGISTRY_STORAGE_S3_BUCKET": gateway.bucket, "REGISTRY_STORAGE_S3_SECRETKEY": gateway.secret_key,
           "REGISTRY_STORAGE_S3_CHUNKSIZE": "6291456"}
    config = load_config(yaml_text, env)
    assert config.storage.driver == "s3"
    s3 = inner(create_driver("s3", dict(config.storage.params)))
    assert (s3.config.bucket, s3.config.secretkey, s3.config.chunksize) == (gateway.bucket, gateway.secret_key, 6 * MiB)
    assert (s3.config.rootdirectory, s3.config.copyconcurrency, s3.config.forcepathstyle) == ("a/b", 100, True)


@pytest.mark.parametrize(
    "params, key",
    [
        ({"region": "us-east-1"}, "storage.s3.bucket"),
        ({"bucket": "b"}, "storage.s3.region"),
        ({"bucket": "b", "region": "r", "chunksize": 1024}, "storage.s3.chunksize"),
        ({"bucket": "b", "region": "r", "chunksize": "lots"}, "storage.s3.chunksize"),
        ({"bucket": "b", "region": "r", "secure": "maybe"}, "storage.s3.secure"),
        ({"bucket": "b", "region": "r", "accesskey": "AK"}, "storage.s3.secretkey"),
        ({"bucket": "b", "region": "r", "regionendpoint": "ftp://x"}, "storage.s3.regionendpoint"),
        ({"bucket": "b", "region": "r", "storageclass": "COLD"}, "storage.s3.storageclass"),
        ({"bucket": "b", "region": "r", "rootdirectory": "/a/../b"}, "storage.s3.rootdirectory"),
        ({"bucket": "b", "region": "r", "multipartcopymaxconcurrency": 0}, "storage.s3.multipartcopymaxconcurrency"),
    ],
)
def test_bad_parameters_name_their_key(params: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_params(params)
    assert str(info.value).startswith(key + ":")


@pytest_twisted.ensureDeferred
async def test_credentials_from_the_environment(gateway: RGW, root: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in list(__import__("os").environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", gateway.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", gateway.secret_key)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    params = gateway.params(rootdirectory=root)
    del params["accesskey"], params["secretkey"]
    driver = create_driver("s3", params)
    try:
        await driver.put_content("/env", b"from the environment")
        assert await driver.get_content("/env") == b"from the environment"
        await driver.delete("/env")
    finally:
        await close(driver)


# -- errors instead of hangs ------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_bad_credentials_are_a_clear_error(gateway: RGW, root: str) -> None:
    driver = create_driver("s3", gateway.params(rootdirectory=root, secretkey="not-the-secret"))
    try:
        with pytest.raises(DriverError, match="refused the credentials.*storage.s3.secretkey"):
            await inner(driver).check()
        with pytest.raises(DriverError, match="refused the credentials"):
            await driver.put_content("/x", b"x")
        with pytest.raises(DriverError, match="refused the credentials"):
            await driver.stat("/x")
    finally:
        await close(driver)


@pytest_twisted.ensureDeferred
async def test_missing_bucket_is_a_clear_error(gateway: RGW) -> None:
    driver = create_driver("s3", gateway.params(bucket="no-such-bucket"))
    try:
        with pytest.raises(DriverError, match="bucket 'no-such-bucket' does not exist"):
            await inner(driver).check()
        # Not "path not found": the registry must answer 503, not 404.
        for call in (lambda: driver.stat("/x"), lambda: driver.get_content("/x"), lambda: driver.reader("/x"), lambda: driver.list("/")):
            with pytest.raises(DriverError, match="does not exist"):
                await call()
    finally:
        await close(driver)


@pytest_twisted.ensureDeferred
async def test_unreachable_endpoint_fails_fast(gateway: RGW) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    driver = create_driver("s3", gateway.params(regionendpoint=f"http://127.0.0.1:{port}", requesttimeout=5))
    try:
        began = time.monotonic()
        with pytest.raises(DriverError, match=f"cannot reach http://127.0.0.1:{port}"):
            await driver.stat("/x")
        assert time.monotonic() - began < 5
    finally:
        await close(driver)


class _Silent(Protocol):
    """Accepts a connection and never answers (a hung endpoint)."""


class _StallsMidBody(Protocol):
    """Answers a GET with headers and part of the body, then goes silent."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data and self.transport is not None:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: \"x\"\r\n\r\n" + b"a" * 10)


@pytest.mark.parametrize("server", [_Silent, _StallsMidBody])
@pytest_twisted.ensureDeferred
async def test_silent_endpoint_times_out(gateway: RGW, server: type[Protocol]) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(server), interface="127.0.0.1")
    driver = create_driver("s3", gateway.params(regionendpoint=f"http://127.0.0.1:{port.getHost().port}", requesttimeout=1))
    try:
        began = time.monotonic()
        with pytest.raises(DriverError, match="no answer|no bytes|stalled"):
            if server is _Silent:
                await driver.get_content("/x")
            else:
                reader = await driver.reader("/x")
                assert await reader.read(100) == b"a" * 10
                await reader.read(100)
        assert time.monotonic() - began < 5
    finally:
        await close(driver)
        await port.stopListening()


# -- a dropped connection while reading ----------------------------------------------------------


class _Cutter:
    """A TCP proxy to the gateway that, while armed, cuts the first
    connection that has carried more than ``after`` response bytes
    (``cut_now`` cuts every open connection)."""

    def __init__(self, gateway: RGW, after: int) -> None:
        from urllib.parse import urlsplit

        from twisted.protocols import portforward

        cutter = self
        self.after = after
        self.armed = False
        self.cuts = 0
        self.open: set[Any] = set()

        class Client(portforward.ProxyClient):
            received = 0

            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.received += len(data)
                if cutter.armed and self.received > cutter.after:
                    cutter.armed = False
                    cutter.cuts += 1
                    self.transport.abortConnection()
                    if self.peer is not None:
                        self.peer.transport.abortConnection()

        class ClientFactory(portforward.ProxyClientFactory):
            protocol = Client

        class Server(portforward.ProxyServer):
            clientProtocolFactory = ClientFactory

            def connectionMade(self) -> None:
                cutter.open.add(self)
                super().connectionMade()

            def connectionLost(self, reason: Any) -> None:
                cutter.open.discard(self)
                super().connectionLost(reason)

        target = urlsplit(gateway.endpoint)
        factory = portforward.ProxyFactory(target.hostname, target.port)
        factory.protocol = Server
        self.port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.endpoint = f"http://127.0.0.1:{self.port.getHost().port}"

    def cut_now(self) -> None:
        for server in list(self.open):
            self.cuts += 1
            server.transport.abortConnection()


@pytest_twisted.ensureDeferred
async def test_reader_resumes_after_a_dropped_connection(gateway: RGW, root: str) -> None:
    cutter = _Cutter(gateway, after=3 * MiB)
    direct = s3_driver(rootdirectory=root)
    proxied = s3_driver(rootdirectory=root, regionendpoint=cutter.endpoint)
    try:
        data = pattern(8 * MiB + 1, seed=30)
        await direct.put_content("/blob", data)
        reader = await proxied.reader("/blob", 1000)
        cutter.armed = True
        parts = []
        while chunk := await reader.read(256 * 1024):
            parts.append(chunk)
        await reader.close()
        assert cutter.cuts == 1
        assert b"".join(parts) == data[1000:]
        # A replaced object is not stitched together from two versions (big
        # enough that the rest cannot sit in socket buffers when cut).
        big = pattern(48 * MiB, seed=32)
        await direct.put_content("/blob", big)
        reader = await proxied.reader("/blob")
        first = await reader.read(1000)
        await direct.put_content("/blob", pattern(8 * MiB + 1, seed=31))
        cutter.cut_now()
        with pytest.raises(DriverError, match="replaced while it was being read"):
            while await reader.read(256 * 1024):
                pass
        await reader.close()
        assert first == big[:1000]
        await direct.delete("/blob")
    finally:
        await close(direct, proxied)
        await cutter.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_startup_check_logs_what_to_fix(gateway: RGW) -> None:
    from twisted.internet.task import deferLater
    from twisted.logger import formatEvent, globalLogPublisher

    events: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "registry.storage.s3":
            events.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    try:
        bad = create_driver("s3", gateway.params(bucket="missing-at-start"))
        good = create_driver("s3", gateway.params())
        for _ in range(100):
            if len(events) >= 2:
                break
            await deferLater(reactor, 0.05, lambda: None)
        assert any("start-up check failed" in e and "bucket 'missing-at-start' does not exist" in e for e in events), events
        assert any(f"bucket {gateway.bucket!r} at {gateway.endpoint} is reachable" in e for e in events), events
        await close(bad, good)
    finally:
        globalLogPublisher.removeObserver(observer)


@pytest_twisted.ensureDeferred
async def test_full_bucket_is_a_clear_error(gateway: RGW) -> None:
    """A user whose quota (1 MiB) is reached: writes fail saying so."""
    suffix = uuid.uuid4().hex[:8]
    access, secret = f"FULL{suffix.upper()}", f"full-secret-{suffix}"
    gateway.admin("user", "create", "--uid", f"full-{suffix}", "--display-name", "full", "--access-key", access, "--secret", secret)
    gateway.admin("quota", "set", "--quota-scope=user", f"--uid=full-{suffix}", "--max-size=1048576")
    gateway.admin("quota", "enable", "--quota-scope=user", f"--uid=full-{suffix}")
    bucket = f"full-{suffix}"
    gateway.create_bucket(bucket, keys=(access, secret))
    driver = create_driver("s3", gateway.params(bucket=bucket, accesskey=access, secretkey=secret))
    try:
        await driver.put_content("/small", b"fits")
        with pytest.raises(DriverError, match="full"):
            await driver.put_content("/big", pattern(2 * MiB, seed=40))
        writer = await driver.writer("/big")
        with pytest.raises(DriverError, match="full"):
            await writer.write(pattern(6 * MiB, seed=41))  # a whole 5 MiB part
            await writer.commit()
        await driver.delete("/")
        assert await driver.walk("/") == []
    finally:
        await close(driver)


# -- TLS: a private CA (cabundle) or no check (skipverify) --------------------------------------


def _tls_front(gateway: RGW, directory: Any) -> tuple[Any, Any]:
    """A TLS-terminating TCP forwarder on 127.0.0.1 in front of the gateway,
    with a certificate from a private CA (root -> intermediate -> server);
    returns (listening port, the PKI's files)."""
    from urllib.parse import urlsplit

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from OpenSSL import crypto
    from twisted.internet import ssl
    from twisted.protocols.portforward import ProxyFactory

    from tests.tlsutil import make_pki

    pki = make_pki(directory)
    chain = x509.load_pem_x509_certificates(pki.chain.read_bytes())
    options = ssl.CertificateOptions(
        privateKey=ssl.KeyPair.load(pki.key.read_bytes(), crypto.FILETYPE_PEM).original,
        certificate=ssl.Certificate.loadPEM(chain[0].public_bytes(Encoding.PEM)).original,
        extraCertChain=[ssl.Certificate.loadPEM(c.public_bytes(Encoding.PEM)).original for c in chain[1:]],
    )
    target = urlsplit(gateway.endpoint)
    port = reactor.listenSSL(0, ProxyFactory(target.hostname, target.port), options, interface="127.0.0.1")
    return port, pki


@pytest_twisted.ensureDeferred
async def test_https_endpoint_with_a_private_ca_or_skipverify(gateway: RGW, root: str, tmp_path: Any) -> None:
    port, pki = _tls_front(gateway, tmp_path / "pki")
    endpoint = f"https://127.0.0.1:{port.getHost().port}"
    drivers: list[IStorageDriver] = []
    try:
        # The system's CAs do not know the private CA: a clear error, no data sent.
        untrusting = create_driver("s3", gateway.params(rootdirectory=root, regionendpoint=endpoint, requesttimeout=5))
        drivers.append(untrusting)
        with pytest.raises(DriverError, match=f"cannot reach {endpoint}"):
            await inner(untrusting).check()
        data = pattern(6 * MiB + 5, seed=3)  # a multipart upload and a small object, over TLS
        for extra in ({"cabundle": str(pki.root)}, {"skipverify": True}):
            driver = create_driver("s3", gateway.params(rootdirectory=root, regionendpoint=endpoint, **extra))
            drivers.append(driver)
            assert not inner(driver).config.signpayload  # https: bodies go unsigned ("auto")
            await inner(driver).check()
            await write_all(driver, "/tls/data", data)
            assert await read_all(driver, "/tls/data") == data
            await driver.put_content("/tls/small", b"small")
            assert await driver.get_content("/tls/small") == b"small"
            await driver.delete("/tls")
        # A bundle holding only another CA is not trusted either.
        wrong = create_driver("s3", gateway.params(rootdirectory=root, regionendpoint=endpoint, requesttimeout=5,
                                                   cabundle=str(pki.client_ca)))
        drivers.append(wrong)
        with pytest.raises(DriverError, match=f"cannot reach {endpoint}"):
            await inner(wrong).check()
    finally:
        await close(*drivers)
        await port.stopListening()


@pytest.mark.parametrize("value, message", [("/nonexistent/ca.pem", "cannot read"), ("EMPTY", "holds no PEM certificate")])
def test_cabundle_must_hold_certificates(value: str, message: str, tmp_path: Any) -> None:
    if value == "EMPTY":
        value = str(tmp_path / "empty.pem")
        (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(ValueError, match=f"^storage.s3.cabundle: .*{message}"):
        parse_params({"bucket": "b", "region": "r", "cabundle": value})


@pytest.mark.parametrize(
    "endpoint, value, signed",
    [("http://127.0.0.1:1", None, True), ("https://s3.example", None, False), ("http://127.0.0.1:1", "auto", True),
     ("http://127.0.0.1:1", False, False), ("https://s3.example", "true", True)],
)
def test_signpayload_follows_the_scheme_unless_set(endpoint: str, value: Any, signed: bool) -> None:
    params: dict[str, Any] = {"bucket": "b", "region": "r", "regionendpoint": endpoint}
    if value is not None:
        params["signpayload"] = value
    assert parse_params(params).signpayload is signed
    with pytest.raises(ValueError, match="^storage.s3.signpayload: must be auto, true or false"):
        parse_params({**params, "signpayload": "sometimes"})


# -- parts streamed while a session's announced bytes arrive (expect, signpayload off) ----------


@pytest_twisted.async_yield_fixture
async def unsigned_pair(gateway: RGW, root: str) -> AsyncIterator[tuple[IStorageDriver, IStorageDriver]]:
    """Two instances on one root with 5 MiB parts and unsigned payloads (streaming allowed)."""
    a = s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=False)
    b = s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=False)
    try:
        yield a, b
        assert await a.walk("/") == [], "test left objects behind"
    finally:
        await close(a, b)


def part_puts(recorder: Recorder) -> list[int]:
    return [int(q["partNumber"]) for m, _, q, h in recorder.calls
            if m == "PUT" and "partNumber" in q and "x-amz-copy-source" not in h]


@pytest_twisted.ensureDeferred
async def test_announced_sessions_stream_their_parts(unsigned_pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    a, b = unsigned_pair
    path = "/repo/_uploads/s/data"
    # Sessions as PATCHes of several sizes, alternating instances: under 5 MiB
    # (gathered as the tail), just over a part, several parts with a short
    # remainder folded into the last, and one carrying an earlier tail.
    sizes = [3 * MiB + 1, 5 * MiB + 7, 13 * MiB + 3, 2 * MiB, 10 * MiB]
    expected = b""
    for i, size in enumerate(sizes):
        driver = (a, b)[i % 2]
        piece = pattern(size, seed=20 + i)
        recorder = Recorder(driver)
        writer = await driver.writer(path, append=bool(expected))
        writer.expect(size)  # type: ignore[attr-defined]
        first_part_seen_at = None
        for start in range(0, size, 256 * 1024):
            await writer.write(piece[start : start + 256 * 1024])
            if first_part_seen_at is None and part_puts(recorder):
                first_part_seen_at = start + 256 * 1024
        await writer.close()
        expected += piece
        if size >= 5 * MiB:
            # The part left for S3 before the session's last byte arrived.
            assert first_part_seen_at is not None and first_part_seen_at < size, recorder.calls
        assert (await (b if driver is a else a).stat(path)).size == len(expected)
    writer = await b.writer(path, append=True)
    await writer.commit()
    assert await a.get_content(path) == expected
    await a.delete("/repo")


@pytest_twisted.ensureDeferred
async def test_a_session_ending_short_keeps_every_byte(unsigned_pair: tuple[IStorageDriver, IStorageDriver]) -> None:
    """A client announcing 12 MiB that goes away after 7 MiB: the part being
    streamed is cancelled, and the 7 MiB are stored all the same."""
    a, b = unsigned_pair
    path = "/repo/_uploads/short/data"
    first = pattern(7 * MiB + 11, seed=30)
    recorder = Recorder(a)
    writer = await a.writer(path)
    writer.expect(12 * MiB)  # type: ignore[attr-defined]
    for start in range(0, len(first), 256 * 1024):
        await writer.write(first[start : start + 256 * 1024])
    await writer.close()
    # Part 1 (5 MiB) was stored; part 2 (the announced last 7 MiB) started
    # and was cancelled: its 2 MiB + 11 bytes became the tail.
    assert part_puts(recorder) == [1, 2], recorder.calls
    head = await inner(a)._head(inner(a)._k(path))
    assert head is not None and (head.parts, head.stored, head.size) == (1, 2 * MiB + 11, len(first))
    assert (await b.stat(path)).size == len(first)
    # More than announced: streaming stops, the rest is gathered.
    second = pattern(6 * MiB, seed=31)
    writer = await b.writer(path, append=True)
    writer.expect(1 * MiB)  # type: ignore[attr-defined]
    for start in range(0, len(second), 512 * 1024):
        await writer.write(second[start : start + 512 * 1024])
    await writer.commit()
    assert await a.get_content(path) == first + second
    assert await uploads_below(a, "/repo") == []
    await a.delete("/repo")


@pytest.mark.parametrize("signpayload", [True, False], ids=["gathered", "streamed"])
@pytest_twisted.ensureDeferred
async def test_a_failed_part_records_no_state(gateway: RGW, root: str, signpayload: bool) -> None:
    """A part upload failing while later ones succeed: the session must not
    record a state counting the missing part; the last close stays good."""
    a = s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=signpayload)
    b = s3_driver(rootdirectory=root, chunksize=5 * MiB, signpayload=signpayload)
    try:
        path = "/repo/_uploads/f/data"
        first = pattern(6 * MiB, seed=40)
        await write_closed(a, path, first)
        s3b = inner(b)
        original = s3b._upload_part
        failed: list[int] = []

        async def flaky(key: str, upload_id: str, number: int, data: Any) -> str:
            if not failed:
                failed.append(number)
                raise DriverError("s3", "injected: the gateway refused this part")
            return await original(key, upload_id, number, data)

        s3b._upload_part = flaky  # type: ignore[method-assign]
        writer = await b.writer(path, append=True)
        writer.expect(31 * MiB)  # type: ignore[attr-defined]
        with pytest.raises(DriverError):  # the 4th part waits for the 1st: the write fails
            for start in range(0, 31 * MiB, 256 * 1024):
                await writer.write(pattern(256 * 1024, seed=start))
            await writer.close()
        with pytest.raises(DriverError, match="a part upload failed"):
            await writer.close()  # what the registry does after a failed write: nothing is recorded
        assert failed
        assert (await a.stat(path)).size == len(first)
        second = pattern(5 * MiB + 3, seed=41)
        writer = await a.writer(path, append=True)
        await writer.write(second)
        await writer.commit()
        assert await a.get_content(path) == first + second
        await a.delete("/repo")
    finally:
        await close(a, b)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_connections_to_the_store_send_a_mib_at_a_time(scheme: str) -> None:
    """Parts go to the store in sends of ``SEND_LIMIT`` (Twisted's default is
    128 KiB, a reactor turn each): under TLS, on the TCP connection below."""
    from hyperlink import URL
    from twisted.internet.abstract import FileDescriptor
    from twisted.web.client import URI, BrowserLikePolicyForHTTPS

    from registry.storage.drivers.s3 import _Endpoints
    from registry.transport import SEND_LIMIT

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        url = URL(scheme=scheme, host="127.0.0.1", port=port.getHost().port, path=("bucket",))
        endpoint = _Endpoints(reactor, BrowserLikePolicyForHTTPS(), 5).endpointForURI(URI.fromBytes(url.to_text().encode()))
        protocol = await endpoint.connect(Factory.forProtocol(Protocol))
        tcp = protocol.transport if scheme == "http" else protocol.transport.transport
        assert isinstance(tcp, FileDescriptor) and tcp.SEND_LIMIT == SEND_LIMIT == 1 << 20
        assert FileDescriptor.SEND_LIMIT < SEND_LIMIT  # only these connections
        protocol.transport.abortConnection()
    finally:
        await port.stopListening()
