"""Is a range of an open file in the page cache?

The filesystem driver sends blob bytes with ``os.sendfile``. From the page
cache that is a memory copy inside the kernel and may run on the reactor
thread; from a cold disk it would wait for the disk there, so the driver asks
``resident`` first and sends from its thread pool when the answer is not a
sure yes.

``resident`` asks the kernel, without any file I/O: ``cachestat(2)`` (Linux
6.5+: one system call, a few microseconds for megabytes), else ``mincore(2)``
on a ``PROT_READ`` mapping of the range that is never touched (three system
calls; slower, per page). Python exposes neither, hence ``ctypes``; where
neither is available (not Linux, not 64-bit) ``resident`` always answers
False and every send goes through the pool.

The answer may be stale a moment later (memory pressure can evict a page
between the check and the send); then one ``sendfile`` on the reactor thread
waits for one read from the disk: the rare case, not the rule.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import sys
from typing import Any

PAGE = mmap.PAGESIZE

_mmap: Any = None
_mincore: Any = None
_munmap: Any = None
_syscall: Any = None
_sync_file_range: Any = None
_MAP_FAILED = ctypes.c_void_p(-1).value
#: ``cachestat``'s number in Linux's common system call table (x86-64, arm64, ...).
_NR_CACHESTAT = 451


class _Range(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _CacheStat(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")
    ]


def _cachestat(fd: int, offset: int, length: int) -> int | None:
    """Pages of the range in the page cache, or None if ``cachestat`` failed."""
    rng = _Range(offset, length)
    stat = _CacheStat()
    if _syscall(_NR_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(stat), 0) != 0:
        return None
    return int(stat.nr_cache)


def _load() -> None:
    global _mmap, _mincore, _munmap, _syscall, _sync_file_range
    if not sys.platform.startswith("linux") or ctypes.sizeof(ctypes.c_void_p) != 8:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        mmap_fn, mincore_fn, munmap_fn, syscall_fn = libc.mmap, libc.mincore, libc.munmap, libc.syscall
    except (OSError, AttributeError):
        return
    sync_fn = getattr(libc, "sync_file_range", None)
    if sync_fn is not None:
        # int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags)
        sync_fn.restype = ctypes.c_int
        sync_fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
        _sync_file_range = sync_fn
    syscall_fn.restype = ctypes.c_long
    _syscall = syscall_fn
    try:
        # Probe on standard input's descriptor number: any answer but ENOSYS
        # (EBADF, ESPIPE, ...) means the kernel has the call.
        _cachestat(0, 0, 1)
        has_cachestat = ctypes.get_errno() != errno.ENOSYS
    except OSError:
        has_cachestat = False
    if not has_cachestat:
        _syscall = None
    # void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset)
    mmap_fn.restype = ctypes.c_void_p
    mmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int64]
    # int mincore(void *addr, size_t length, unsigned char *vec)
    mincore_fn.restype = ctypes.c_int
    mincore_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    # int munmap(void *addr, size_t length)
    munmap_fn.restype = ctypes.c_int
    munmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    _mmap, _mincore, _munmap = mmap_fn, mincore_fn, munmap_fn


_load()

#: False where ``resident`` cannot tell (and always answers False).
AVAILABLE = _mincore is not None


def resident(fd: int, offset: int, length: int) -> bool:
    """True if every page of bytes ``offset .. offset+length`` of the open
    regular file ``fd`` is in the page cache now; False if some page is not,
    the range reaches pages past the end of the file, or this platform
    cannot tell."""
    if _mincore is None or length <= 0 or offset < 0:
        return False
    start = offset - offset % PAGE
    size = offset + length - start
    pages = (size + PAGE - 1) // PAGE
    if _syscall is not None:
        cached = _cachestat(fd, start, size)
        if cached is not None:
            return cached >= pages
    addr = _mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
    if addr is None or addr == _MAP_FAILED:
        return False
    try:
        vec = ctypes.create_string_buffer(pages)
        if _mincore(addr, size, vec) != 0:
            return False
        # Linux writes 1 for a cached page, 0 for one that is not.
        return b"\x00" not in vec.raw
    finally:
        _munmap(addr, size)


#: ``SYNC_FILE_RANGE_WRITE``: start writing the range's dirty pages, wait for nothing.
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> bool:
    """Ask the kernel to start writing the dirty pages of ``offset ..
    offset+length`` (``length`` 0: to the end of the file) of the open file
    ``fd`` to the disk now, without waiting for them (``sync_file_range``
    with ``SYNC_FILE_RANGE_WRITE``). A later ``fsync`` then finds most of the
    file already written. Durability still comes from that ``fsync`` alone:
    this only moves the disk work earlier. May block briefly when the disk's
    queue is full, so it belongs in a pool thread. False where the platform
    has no such call or it failed (nothing to do about it: the ``fsync``
    does the whole job then)."""
    if _sync_file_range is None:
        return False
    return bool(_sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0)
