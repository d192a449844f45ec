"""Filesystem-driver quirks the conformance suite cannot express: parameter
validation, containment (symlinks), on-disk layout, hidden temp files and the
bounded thread pool."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater

from registry.storage.driver import InvalidPathError, IStorageDriver
from registry.storage.factory import create_driver


@pytest_twisted.async_yield_fixture
async def fs(tmp_path: Path) -> AsyncIterator[tuple[IStorageDriver, Path]]:
    root = tmp_path / "root"
    driver = create_driver("filesystem", {"rootdirectory": str(root), "maxthreads": 2})
    yield driver, root
    await driver.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "params, message",
    [
        ({}, "storage.filesystem.rootdirectory: required"),
        ({"rootdirectory": "x"}, "storage.filesystem.rootdirectory: must be an absolute path, got 'x'"),
        ({"rootdirectory": 5}, "storage.filesystem.rootdirectory: must be an absolute path, got 5"),
        ({"rootdirectory": "/tmp", "maxthreads": 0}, "storage.filesystem.maxthreads: must be an integer >= 1, got 0"),
        ({"rootdirectory": "/tmp", "maxthreads": "many"}, "storage.filesystem.maxthreads: must be an integer >= 1"),
        ({"rootdirectory": "/tmp", "maxthreads": True}, "storage.filesystem.maxthreads: must be an integer >= 1"),
    ],
)
def test_parameters_validated(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        create_driver("filesystem", params)
    assert str(info.value).startswith(message)


def test_rootdirectory_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(ValueError, match="storage.filesystem.rootdirectory: cannot use"):
        create_driver("filesystem", {"rootdirectory": str(tmp_path / "f" / "sub")})


@pytest_twisted.ensureDeferred
async def test_layout_on_disk_and_pruning(fs: tuple[IStorageDriver, Path]) -> None:
    driver, root = fs
    await driver.put_content("/docker/registry/v2/blobs/sha256/ab/abc/data", b"blob")
    assert (root / "docker/registry/v2/blobs/sha256/ab/abc/data").read_bytes() == b"blob"
    await driver.delete("/docker/registry/v2/blobs/sha256/ab/abc/data")
    assert os.listdir(root) == []  # emptied parents removed, the root kept


@pytest_twisted.ensureDeferred
async def test_symlinks_cannot_escape_the_root(fs: tuple[IStorageDriver, Path], tmp_path: Path) -> None:
    driver, root = fs
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    await driver.put_content("/inside/obj", b"ok")
    os.symlink(outside, root / "evil")
    os.symlink(outside / "secret", root / "inside" / "evil-file")
    os.symlink(root / "inside", root / "alias")  # stays inside: allowed
    for call in (
        lambda: driver.get_content("/evil/secret"),
        lambda: driver.put_content("/evil/new", b"x"),
        lambda: driver.writer("/evil/new"),
        lambda: driver.reader("/inside/evil-file"),
        lambda: driver.get_content("/inside/evil-file"),
        lambda: driver.stat("/evil"),
        lambda: driver.list("/evil"),
        lambda: driver.walk("/evil"),
    ):
        with pytest.raises(InvalidPathError, match="outside the root"):
            await call()
    assert not (outside / "new").exists()
    assert await driver.get_content("/alias/obj") == b"ok"
    assert await driver.list("/") == ["/alias", "/inside"]  # /evil is hidden
    assert [i.path for i in await driver.walk("/inside")] == ["/inside/obj"]
    await driver.delete("/evil")  # removes the link, not the target
    await driver.delete("/alias")
    assert (outside / "secret").read_bytes() == b"secret"
    await driver.delete("/")
    assert os.listdir(root) == []


@pytest_twisted.ensureDeferred
async def test_temp_files_are_invisible(fs: tuple[IStorageDriver, Path]) -> None:
    driver, root = fs
    await driver.put_content("/d/obj", b"x")
    (root / "d" / "obj~put~deadbeef").write_bytes(b"left by a crash")
    assert await driver.list("/d") == ["/d/obj"]
    assert [i.path for i in await driver.walk("/")] == ["/d", "/d/obj"]
    await driver.delete("/d")
    assert os.listdir(root) == []


@pytest_twisted.ensureDeferred
async def test_blocking_work_uses_the_bounded_pool(fs: tuple[IStorageDriver, Path]) -> None:
    driver, root = fs
    await gatherResults([driver.put_content(f"/p/{i}", b"x" * 100_000) for i in range(20)])
    names = {t.name for t in threading.enumerate() if "storage-filesystem" in t.name}
    assert 1 <= len(names) <= 2  # maxthreads=2
    assert threading.current_thread() is threading.main_thread()
    await driver.delete("/p")


@pytest_twisted.ensureDeferred
async def test_reader_sees_appends_without_gaps(fs: tuple[IStorageDriver, Path]) -> None:
    """A reader at EOF of a growing upload reads the new bytes in order."""
    driver, root = fs
    first = os.urandom(3 * (1 << 20))
    writer = await driver.writer("/up")
    await writer.write(first)
    await writer.close()
    reader = await driver.reader("/up")
    got = b""
    while chunk := await reader.read(1 << 20):
        got += chunk
    assert got == first
    more = os.urandom(5000)
    writer = await driver.writer("/up", append=True)
    await writer.write(more)
    await writer.close()
    while chunk := await reader.read(1 << 20):
        got += chunk
    await reader.close()
    assert got == first + more
    await driver.delete("/up")


@pytest.mark.parametrize("operation", ["put_content", "writer", "move"])
@pytest_twisted.ensureDeferred
async def test_parent_pruned_while_creating_below_it(
    fs: tuple[IStorageDriver, Path], monkeypatch: pytest.MonkeyPatch, operation: str
) -> None:
    """A concurrent delete (garbage collection) prunes an empty directory
    after we opened it and before we create a directory inside it: ``mkdir``
    then fails with ENOENT. The write still lands (the walk starts again)."""
    driver, root = fs
    (root / "repo").mkdir(parents=True)
    await driver.put_content("/src", b"moved")
    real_mkdir = os.mkdir
    pruned: list[str] = []

    def mkdir_after_prune(name: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        if name == "_layers" and not pruned:
            pruned.append(name)
            os.rmdir(root / "repo")  # the other process's prune wins the race
        real_mkdir(name, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "mkdir", mkdir_after_prune)
    path = "/repo/_layers/link"
    if operation == "put_content":
        await driver.put_content(path, b"data")
        expected = b"data"
    elif operation == "writer":
        writer = await driver.writer(path)
        await writer.write(b"streamed")
        await writer.close()
        expected = b"streamed"
    else:
        await driver.move("/src", path)
        expected = b"moved"
    assert pruned == ["_layers"]
    assert await driver.get_content(path) == expected


def _dirty_bytes(path: Path) -> int | None:
    """Bytes of ``path`` the page cache holds dirty (not yet written), if the kernel can say."""
    import ctypes

    from registry.storage.drivers import pagecache

    if pagecache._syscall is None:
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        rng = pagecache._Range(0, 0)
        stat = pagecache._CacheStat()
        if pagecache._syscall(pagecache._NR_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(stat), 0) != 0:
            return None
        return int(stat.nr_dirty) * pagecache.PAGE
    finally:
        os.close(fd)


@pytest_twisted.ensureDeferred
async def test_a_writer_starts_writeback_as_bytes_arrive(fs: tuple[IStorageDriver, Path]) -> None:
    """An upload's bytes go to the disk while it is sent, so its commit's
    fsync has only the tail left (not tens of megabytes at once)."""
    from registry.storage.drivers import filesystem, pagecache

    driver, root = fs
    if pagecache._sync_file_range is None:
        pytest.skip("no sync_file_range here")
    writer = await driver.writer("/w/data")
    piece = os.urandom(filesystem.CHUNK)
    total = 32 << 20
    for _ in range(total // len(piece)):
        await writer.write(piece)
        # As a slowly sending client: below the rate of WRITEBACK_BELOW.
        await deferLater(reactor, 1.5 * len(piece) / filesystem.WRITEBACK_BELOW, lambda: None)
    await writer.close()  # not committed: no fsync of ours
    path = root / "w" / "data"
    assert path.stat().st_size == total
    dirty = _dirty_bytes(path)
    if dirty is None:
        pytest.skip("this kernel has no cachestat(2) to count dirty pages")
    deadline = time.monotonic() + 10
    while dirty > 8 << 20 and time.monotonic() < deadline:
        await deferLater(reactor, 0.05, lambda: None)
        dirty = _dirty_bytes(path) or 0
    # Left to the kernel alone, every byte would stay dirty for ~30 s
    # (vm.dirty_expire_centisecs) on a machine below its dirty thresholds.
    assert dirty <= 8 << 20, f"{dirty} of {total} bytes still dirty"


@pytest_twisted.ensureDeferred
async def test_a_fast_writer_is_left_to_its_commit(fs: tuple[IStorageDriver, Path]) -> None:
    """Bytes that come faster than the disk writes them are not written back
    under the writer (that made fast uploads disk-bound): the commit's fsync
    does it."""
    from registry.storage.drivers import filesystem, pagecache

    driver, root = fs
    if pagecache._sync_file_range is None:
        pytest.skip("no sync_file_range here")
    started = filesystem._WRITEBACK.started
    writer = await driver.writer("/w/fast")
    piece = os.urandom(filesystem.CHUNK)
    for _ in range(32):
        await writer.write(piece)
    await writer.commit()
    await deferLater(reactor, 0.2, lambda: None)
    assert filesystem._WRITEBACK.started == started
