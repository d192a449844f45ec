"""``registry.storage.drivers.pagecache.resident`` against the kernel: a
freshly written file is cached, an evicted one is not, a range past the end
is never "cached"; both ways of asking (cachestat, mincore) agree."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from registry.storage.drivers import pagecache

pytestmark = pytest.mark.skipif(not pagecache.AVAILABLE, reason="no way to ask the page cache here")

MIB = 1 << 20


@pytest.fixture(params=["cachestat", "mincore"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "cachestat" and pagecache._syscall is None:
        pytest.skip("this kernel has no cachestat(2)")
    if request.param == "mincore":
        monkeypatch.setattr(pagecache, "_syscall", None)
    return str(request.param)


@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(os.urandom(4 * MIB + 100))
        f.flush()
        os.fsync(f.fileno())  # clean pages: DONTNEED can drop them
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


def test_cached_evicted_and_past_the_end(way: str, fd: int) -> None:
    size = 4 * MIB + 100
    os.pread(fd, size, 0)
    assert pagecache.resident(fd, 0, size)
    assert pagecache.resident(fd, 12345, 1000)
    assert pagecache.resident(fd, size - 1, 1)
    assert not pagecache.resident(fd, size - 10, 2 * pagecache.PAGE)  # pages past the end
    assert not pagecache.resident(fd, 0, 0)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    assert not pagecache.resident(fd, 0, size)
    assert not pagecache.resident(fd, MIB, 10)
    os.pread(fd, 10, MIB + 5)  # one page (and perhaps its read-ahead) comes back
    assert pagecache.resident(fd, MIB + 5, 10)
    assert not pagecache.resident(fd, 0, size)
