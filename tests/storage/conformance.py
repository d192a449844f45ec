"""The storage driver conformance suite: every driver runs it unchanged.

``StorageDriverConformance`` holds the tests; ``test_conformance.py`` collects
it, and the ``driver`` fixture (``conftest.py``) runs each test once per
driver in ``conftest.DRIVERS`` on a fresh, empty store and checks that the
test left it empty. Tests talk to the driver only through ``IStorageDriver``
(as returned by ``create_driver``, i.e. wrapped), on the real reactor.
"""

from __future__ import annotations

import hashlib
import os
import time
from typing import Any

import psutil
import pytest
import pytest_twisted
from twisted.internet.defer import ensureDeferred, gatherResults
from zope.interface.verify import verifyObject

from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    InvalidOffsetError,
    InvalidPathError,
    IStorageDriver,
    PathNotFoundError,
)

MiB = 1 << 20


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes of ``size``."""
    block = hashlib.sha256(seed.to_bytes(8, "big")).digest() * 2048  # 64 KiB
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


async def read_all(driver: IStorageDriver, path: str, offset: int = 0, max_bytes: int = 64 * 1024) -> bytes:
    """Read ``path`` from ``offset`` to the end through a reader."""
    reader = await driver.reader(path, offset)
    parts = []
    try:
        while True:
            chunk = await reader.read(max_bytes)
            assert len(chunk) <= max_bytes
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)
    finally:
        await reader.close()


async def write_all(driver: IStorageDriver, path: str, data: bytes, chunk: int = 64 * 1024, append: bool = False) -> None:
    """Write ``data`` through a writer in ``chunk``-sized writes and commit."""
    writer = await driver.writer(path, append=append)
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        await writer.write(bytes(view[start : start + chunk]))
    await writer.commit()


INVALID_PATHS: list[Any] = [
    "",
    "a",
    "a/b",
    "/a/",
    "//a",
    "/a//b",
    "/..",
    "/a/..",
    "/a/../b",
    "/.",
    "/a/./b",
    "/a\x00b",
    "/a b",
    "/a\\b",
    "/a?b",
    "/a~b",
    "/a\nb",
    "/café",
    "/日本/語",
    "/\u202e",
    "/a/\U0001f600",
    b"/bytes",
    None,
    42,
]


class StorageDriverConformance:
    """Tests every ``IStorageDriver`` must pass; needs a ``driver`` fixture."""

    # -- basics ------------------------------------------------------------

    def test_provides_interface(self, driver: IStorageDriver) -> None:
        verifyObject(IStorageDriver, driver)
        assert isinstance(driver.name, str) and driver.name

    @pytest.mark.parametrize("size", [0, 1, 4097, MiB + 3, 64 * MiB])
    @pytest_twisted.ensureDeferred
    async def test_content_round_trip(self, driver: IStorageDriver, size: int) -> None:
        data = pattern(size, seed=size)
        await driver.put_content("/docker/registry/v2/blobs/x", data)
        assert await driver.get_content("/docker/registry/v2/blobs/x") == data
        info = await driver.stat("/docker/registry/v2/blobs/x")
        assert (info.size, info.is_dir) == (size, False)
        await driver.delete("/docker")

    @pytest_twisted.ensureDeferred
    async def test_put_content_replaces(self, driver: IStorageDriver) -> None:
        await driver.put_content("/a/link", b"sha256:" + b"1" * 64)
        await driver.put_content("/a/link", b"short")
        assert await driver.get_content("/a/link") == b"short"
        await driver.put_content("/a/link", b"")
        assert await driver.get_content("/a/link") == b""
        await driver.delete("/a/link")

    @pytest_twisted.ensureDeferred
    async def test_scratch_put_content(self, driver: IStorageDriver) -> None:
        """``durable=False`` changes durability only: creates parents,
        replaces, reads back, lists and deletes like any put."""
        await driver.put_content("/u/_uploads/1/hashstates/sha256/0", b"state-0", durable=False)
        await driver.put_content("/u/_uploads/1/hashstates/sha256/0", b"s", durable=False)
        await driver.put_content("/u/_uploads/1/startedat", b"", durable=False)
        assert await driver.get_content("/u/_uploads/1/hashstates/sha256/0") == b"s"
        assert await driver.get_content("/u/_uploads/1/startedat") == b""
        assert await driver.list("/u/_uploads/1") == ["/u/_uploads/1/hashstates", "/u/_uploads/1/startedat"]
        await driver.put_content("/u/_uploads/1/startedat", b"durable")
        assert await driver.get_content("/u/_uploads/1/startedat") == b"durable"
        await driver.delete("/u")
        with pytest.raises(PathNotFoundError):
            await driver.stat("/u")

    @pytest_twisted.ensureDeferred
    async def test_valid_path_characters(self, driver: IStorageDriver) -> None:
        path = "/AZaz09._:-/sha256:abc/.hidden/x-y_z.1"
        await driver.put_content(path, b"v")
        assert await driver.get_content(path) == b"v"
        assert await driver.list("/AZaz09._:-") == ["/AZaz09._:-/sha256:abc"]
        await driver.delete("/AZaz09._:-")

    @pytest.mark.parametrize("bad", INVALID_PATHS, ids=repr)
    @pytest_twisted.ensureDeferred
    async def test_invalid_paths_rejected(self, driver: IStorageDriver, bad: Any) -> None:
        await driver.put_content("/ok", b"x")
        calls = [
            lambda: driver.get_content(bad),
            lambda: driver.put_content(bad, b"x"),
            lambda: driver.reader(bad),
            lambda: driver.writer(bad),
            lambda: driver.writer(bad, append=True),
            lambda: driver.stat(bad),
            lambda: driver.list(bad),
            lambda: driver.move("/ok", bad),
            lambda: driver.move(bad, "/ok2"),
            lambda: driver.delete(bad),
            lambda: driver.walk(bad),
            lambda: driver.redirect_url(bad),
        ]
        for call in calls:
            with pytest.raises(InvalidPathError) as info:
                await call()
            assert info.value.driver == driver.name
        assert [i.path for i in await driver.walk("/")] == ["/ok"]
        await driver.delete("/ok")

    @pytest_twisted.ensureDeferred
    async def test_root_only_for_list_walk_delete(self, driver: IStorageDriver) -> None:
        for call in (
            lambda: driver.get_content("/"),
            lambda: driver.put_content("/", b""),
            lambda: driver.reader("/"),
            lambda: driver.writer("/"),
            lambda: driver.stat("/"),
            lambda: driver.move("/", "/a"),
            lambda: driver.redirect_url("/"),
        ):
            with pytest.raises(InvalidPathError):
                await call()
        assert await driver.list("/") == []
        assert await driver.walk("/") == []

    @pytest_twisted.ensureDeferred
    async def test_not_found(self, driver: IStorageDriver) -> None:
        await driver.put_content("/present/file", b"x")
        for path in ("/missing", "/present/missing", "/present/file/below"):
            for call in (driver.get_content, driver.reader, driver.stat, driver.delete):
                with pytest.raises(PathNotFoundError) as info:
                    await call(path)
                assert info.value.driver == driver.name
            with pytest.raises(PathNotFoundError):
                await driver.writer(path, append=True)
            with pytest.raises(PathNotFoundError):
                await driver.move(path, "/elsewhere")
        for path in ("/missing", "/present/file"):
            with pytest.raises(PathNotFoundError):
                await driver.list(path)
            with pytest.raises(PathNotFoundError):
                await driver.walk(path)
        with pytest.raises(PathNotFoundError):
            await driver.get_content("/present")
        with pytest.raises(PathNotFoundError):
            await driver.reader("/present")
        await driver.delete("/present")

    @pytest_twisted.ensureDeferred
    async def test_object_and_directory_cannot_share_a_path(self, driver: IStorageDriver) -> None:
        await driver.put_content("/d/obj", b"x")
        with pytest.raises(DriverError):
            await driver.put_content("/d", b"y")
        with pytest.raises(DriverError):
            await driver.put_content("/d/obj/below", b"y")
        assert await driver.get_content("/d/obj") == b"x"
        await driver.delete("/d")

    # -- readers -------------------------------------------------------------

    @pytest.mark.parametrize("max_bytes", [1, 1000, 64 * 1024, 4 * MiB])
    @pytest_twisted.ensureDeferred
    async def test_reader_offsets(self, driver: IStorageDriver, max_bytes: int) -> None:
        size = 3 * MiB + 17 if max_bytes > 1 else 5000
        data = pattern(size, seed=7)
        await driver.put_content("/r/obj", data)
        for offset in (0, 1, size // 2, MiB, size - 1, size):
            if max_bytes == 1 and offset > 5000:
                continue
            assert await read_all(driver, "/r/obj", offset, max_bytes) == data[offset:]
        for bad in (size + 1, size + MiB, -1):
            with pytest.raises(InvalidOffsetError) as info:
                await driver.reader("/r/obj", bad)
            assert info.value.offset == bad
        await driver.delete("/r")

    @pytest_twisted.ensureDeferred
    async def test_reader_of_empty_object(self, driver: IStorageDriver) -> None:
        await driver.put_content("/empty", b"")
        reader = await driver.reader("/empty", 0)
        verifyObject(IFileReader, reader)
        assert await reader.read(10) == b""
        assert await reader.read(10) == b""
        await reader.close()
        await reader.close()  # idempotent
        with pytest.raises(DriverError):
            await reader.read(10)
        with pytest.raises(InvalidOffsetError):
            await driver.reader("/empty", 1)
        await driver.delete("/empty")

    @pytest_twisted.ensureDeferred
    async def test_reader_misuse(self, driver: IStorageDriver) -> None:
        await driver.put_content("/m", b"abc")
        reader = await driver.reader("/m")
        for bad in (0, -5):
            with pytest.raises(DriverError):
                await reader.read(bad)
        assert await reader.read(2) == b"ab"
        await reader.close()
        await driver.delete("/m")

    # -- writers -------------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_writer_commit(self, driver: IStorageDriver) -> None:
        data = pattern(2 * MiB + 5, seed=3)
        writer = await driver.writer("/w/a/b")
        verifyObject(IFileWriter, writer)
        assert writer.size == 0
        for start in range(0, len(data), 100_000):
            await writer.write(data[start : start + 100_000])
            assert writer.size == min(start + 100_000, len(data))
        await writer.write(b"")
        await writer.commit()
        assert await driver.get_content("/w/a/b") == data
        assert (await driver.stat("/w/a/b")).size == len(data)
        for call in (lambda: writer.write(b"x"), writer.commit, writer.cancel):
            with pytest.raises(DriverError):
                await call()
        await writer.close()  # no-op on a finished writer
        await driver.delete("/w")

    @pytest_twisted.ensureDeferred
    async def test_writer_without_append_replaces(self, driver: IStorageDriver) -> None:
        await driver.put_content("/w", b"old content")
        await write_all(driver, "/w", b"new")
        assert await driver.get_content("/w") == b"new"
        writer = await driver.writer("/w")
        assert writer.size == 0
        await writer.commit()
        assert await driver.get_content("/w") == b""
        await driver.delete("/w")

    @pytest_twisted.ensureDeferred
    async def test_append_resumes_after_close(self, driver: IStorageDriver) -> None:
        parts = [pattern(n, seed=n) for n in (1, 64 * 1024, MiB + 1, 3 * MiB, 10)]
        path = "/repo/_uploads/0a1b/data"
        writer = await driver.writer(path)
        await writer.write(parts[0])
        await writer.close()
        expected = parts[0]
        for part in parts[1:]:
            writer = await driver.writer(path, append=True)
            assert writer.size == len(expected)
            for start in range(0, len(part), 64 * 1024):
                await writer.write(part[start : start + 64 * 1024])
            expected += part
            assert writer.size == len(expected)
            await writer.close()
            with pytest.raises(DriverError):
                await writer.write(b"late")
            assert await driver.get_content(path) == expected
        writer = await driver.writer(path, append=True)
        await writer.write(b"end")
        await writer.commit()
        assert await driver.get_content(path) == expected + b"end"
        assert await read_all(driver, path, len(expected)) == b"end"
        await driver.delete("/repo")

    @pytest_twisted.ensureDeferred
    async def test_cancel_leaves_nothing(self, driver: IStorageDriver) -> None:
        writer = await driver.writer("/c/deep/dir/obj")
        await writer.write(pattern(3 * MiB, seed=1))
        await writer.cancel()
        with pytest.raises(PathNotFoundError):
            await driver.stat("/c/deep/dir/obj")
        with pytest.raises(PathNotFoundError):
            await driver.stat("/c")
        assert await driver.walk("/") == []
        # Cancelling a resumed writer removes the whole object.
        writer = await driver.writer("/c/up")
        await writer.write(b"first")
        await writer.close()
        writer = await driver.writer("/c/up", append=True)
        await writer.write(b"second")
        await writer.cancel()
        with pytest.raises(PathNotFoundError):
            await driver.get_content("/c/up")
        assert await driver.list("/") == []
        # A cancelled writer next to other objects leaves them alone.
        await driver.put_content("/c/keep", b"k")
        writer = await driver.writer("/c/drop")
        await writer.cancel()
        assert await driver.list("/c") == ["/c/keep"]
        await driver.delete("/c")

    # -- concurrency -----------------------------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_concurrent_writers_and_readers(self, driver: IStorageDriver) -> None:
        blobs = {f"/conc/{i}/data": pattern(2 * MiB + i, seed=100 + i) for i in range(6)}
        await gatherResults([ensureDeferred(write_all(driver, p, d, chunk=48 * 1024)) for p, d in blobs.items()])
        reads = [ensureDeferred(read_all(driver, p, 0, 64 * 1024)) for p in blobs for _ in range(3)]
        results = await gatherResults(reads)
        assert results == [d for d in blobs.values() for _ in range(3)]
        await driver.delete("/conc")

    @pytest_twisted.ensureDeferred
    async def test_concurrent_puts_are_atomic(self, driver: IStorageDriver) -> None:
        versions = [pattern(MiB + 7 * i, seed=i) for i in range(8)]
        await driver.put_content("/atomic", versions[0])
        reader = await driver.reader("/atomic")
        puts = [driver.put_content("/atomic", v) for v in versions[1:]]
        gets = [driver.get_content("/atomic") for _ in range(8)]
        seen = await gatherResults(puts + gets)
        for content in seen[len(puts) :]:
            assert content in versions
        assert await driver.get_content("/atomic") in versions[1:]
        # A reader opened before the puts reads the old content, whole.
        parts = []
        while chunk := await reader.read(MiB):
            parts.append(chunk)
        await reader.close()
        assert b"".join(parts) == versions[0]
        await driver.delete("/atomic")

    # -- stat / list / move / delete / walk --------------------------------------

    @pytest_twisted.ensureDeferred
    async def test_stat(self, driver: IStorageDriver) -> None:
        before = time.time()
        await driver.put_content("/s/dir/obj", b"12345")
        info = await driver.stat("/s/dir/obj")
        assert isinstance(info, FileInfo)
        assert (info.path, info.size, info.is_dir) == ("/s/dir/obj", 5, False)
        assert before - 2 <= info.mod_time <= time.time() + 2
        info = await driver.stat("/s/dir")
        assert (info.path, info.size, info.is_dir) == ("/s/dir", 0, True)
        assert before - 2 <= info.mod_time <= time.time() + 2
        await driver.delete("/s")

    @pytest_twisted.ensureDeferred
    async def test_list(self, driver: IStorageDriver) -> None:
        for path in ("/l/b/x", "/l/a", "/l/c/d/e", "/l/B", "/other"):
            await driver.put_content(path, b"x")
        assert await driver.list("/") == ["/l", "/other"]
        assert await driver.list("/l") == ["/l/B", "/l/a", "/l/b", "/l/c"]
        assert await driver.list("/l/c") == ["/l/c/d"]
        assert await driver.list("/l/c/d") == ["/l/c/d/e"]
        with pytest.raises(PathNotFoundError):
            await driver.list("/l/a")
        with pytest.raises(PathNotFoundError):
            await driver.list("/l/zz")
        await driver.delete("/l")
        await driver.delete("/other")

    @pytest_twisted.ensureDeferred
    async def test_move(self, driver: IStorageDriver) -> None:
        data = pattern(MiB + 1, seed=9)
        await driver.put_content("/repo/_uploads/u1/data", data)
        await driver.put_content("/repo/_uploads/u1/startedat", b"t")
        await driver.move("/repo/_uploads/u1/data", "/blobs/sha256/ab/abcd/data")
        assert await driver.get_content("/blobs/sha256/ab/abcd/data") == data
        with pytest.raises(PathNotFoundError):
            await driver.stat("/repo/_uploads/u1/data")
        assert await driver.list("/repo/_uploads/u1") == ["/repo/_uploads/u1/startedat"]
        # Moving the last object out of a directory prunes emptied parents.
        await driver.move("/repo/_uploads/u1/startedat", "/t")
        assert await driver.list("/") == ["/blobs", "/t"]
        # The destination is replaced.
        await driver.move("/t", "/blobs/sha256/ab/abcd/data")
        assert await driver.get_content("/blobs/sha256/ab/abcd/data") == b"t"
        assert await driver.list("/") == ["/blobs"]
        # Moving onto itself changes nothing.
        await driver.move("/blobs/sha256/ab/abcd/data", "/blobs/sha256/ab/abcd/data")
        assert await driver.get_content("/blobs/sha256/ab/abcd/data") == b"t"
        with pytest.raises(PathNotFoundError):
            await driver.move("/nothing", "/blobs/x")
        assert await driver.get_content("/blobs/sha256/ab/abcd/data") == b"t"
        await driver.delete("/blobs")

    @pytest_twisted.ensureDeferred
    async def test_delete(self, driver: IStorageDriver) -> None:
        for path in ("/del/a/1", "/del/a/2", "/del/b/c/3", "/keep/x"):
            await driver.put_content(path, path.encode())
        await driver.delete("/del/a/1")
        assert await driver.list("/del/a") == ["/del/a/2"]
        await driver.delete("/del/a/2")  # prunes /del/a
        assert await driver.list("/del") == ["/del/b"]
        await driver.delete("/del/b/c/3")  # prunes /del/b/c, /del/b and /del
        assert await driver.list("/") == ["/keep"]
        for path in ("/del/a/1", "/del/b/c/3"):
            await driver.put_content(path, b"x")
        await driver.delete("/del")  # recursive
        assert await driver.list("/") == ["/keep"]
        with pytest.raises(PathNotFoundError):
            await driver.delete("/del")
        await driver.delete("/")
        assert await driver.walk("/") == []
        await driver.delete("/")  # the root always exists

    @pytest_twisted.ensureDeferred
    async def test_walk(self, driver: IStorageDriver) -> None:
        files = {"/w/b/z": 3, "/w/a": 1, "/w/b/y/q": 4, "/w/b-c": 2, "/x": 0}
        for path, size in files.items():
            await driver.put_content(path, b"x" * size)
        infos = await driver.walk("/")
        assert [(i.path, i.is_dir, i.size) for i in infos] == [
            ("/w", True, 0),
            ("/w/a", False, 1),
            ("/w/b", True, 0),
            ("/w/b/y", True, 0),
            ("/w/b/y/q", False, 4),
            ("/w/b/z", False, 3),
            ("/w/b-c", False, 2),
            ("/x", False, 0),
        ]
        assert [i.path for i in await driver.walk("/w/b")] == ["/w/b/y", "/w/b/y/q", "/w/b/z"]
        with pytest.raises(PathNotFoundError):
            await driver.walk("/w/a")
        with pytest.raises(PathNotFoundError):
            await driver.walk("/nope")
        await driver.delete("/")

    @pytest_twisted.ensureDeferred
    async def test_redirect_url(self, driver: IStorageDriver) -> None:
        await driver.put_content("/r", b"x")
        url = await driver.redirect_url("/r")
        assert url is None or url.startswith(("http://", "https://"))
        await driver.delete("/r")

    # -- large streams, bounded memory ---------------------------------------------

    @pytest.mark.slow
    @pytest_twisted.ensureDeferred
    async def test_large_stream_bounded_memory(self, driver: IStorageDriver, driver_name: str) -> None:
        from tests.storage.conftest import IN_PROCESS_MEMORY

        size = 256 * MiB
        chunk = 64 * 1024
        block = pattern(MiB, seed=42)
        process = psutil.Process(os.getpid())
        base = process.memory_info().rss
        peak = base
        expected = hashlib.sha256()

        writer = await driver.writer("/big/data")
        for i in range(size // chunk):
            start = (i * chunk) % MiB
            piece = block[start : start + chunk]
            expected.update(piece)
            await writer.write(piece)
            if i % 64 == 0:
                peak = max(peak, process.memory_info().rss)
        await writer.commit()
        assert (await driver.stat("/big/data")).size == size

        got = hashlib.sha256()
        reader = await driver.reader("/big/data")
        n = 0
        while data := await reader.read(chunk):
            got.update(data)
            n += 1
            if n % 64 == 0:
                peak = max(peak, process.memory_info().rss)
        await reader.close()
        assert got.hexdigest() == expected.hexdigest()

        allowed = 64 * MiB + (size * 5 // 4 if driver_name in IN_PROCESS_MEMORY else 0)
        growth = peak - base
        assert growth <= allowed, f"RSS grew by {growth / MiB:.0f} MiB (allowed {allowed / MiB:.0f})"
        await driver.delete("/big")
