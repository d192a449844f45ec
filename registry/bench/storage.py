"""Storage benchmark: MB/s of writing and reading 256 MiB through each driver.

``run(args)`` measures, in one run and on the same filesystem:

* ``raw``: the ``dd``-like reference — the same bytes written to a plain file
  with 1 MiB ``os.write`` calls and one ``fsync`` at the end, then read back
  with 1 MiB ``os.read`` calls;
* each driver through the storage contract (``create_driver``, wrapped):
  a writer fed 64 KiB writes (the size of network chunks) then ``commit``,
  and a reader drained with ``read(64 KiB)``, waiting for every Deferred as
  the registry does. Drivers: ``inmemory``, ``filesystem`` and, when
  ``registry.storage.drivers.outofprocess`` exists, ``filesystem`` served out
  of process.

Reads come from the page cache for the raw figure and the drivers alike.
It prints one human-readable line per figure and returns the figures as a
dict (``{"size_bytes", "raw": {...}, "drivers": {name: {...}}, "ratios"}``).
``args`` is an ``argparse.Namespace``; ``args.json`` is accepted (the
dispatcher prints JSON itself), ``args.mib`` (optional, MiB) changes the
size.

The drivers need a running reactor: if none is running, this starts the
global reactor in a daemon thread and drives it with ``blockingCallFromThread``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import os
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Coroutine, cast

from twisted.internet.defer import Deferred, ensureDeferred

from registry.storage.wrapper import StorageDriverWrapper
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver

MiB = 1 << 20
DEFAULT_MIB = 256
NET_CHUNK = 64 * 1024


def _block() -> bytes:
    """1 MiB of incompressible-looking bytes, reused for every write."""
    seed = hashlib.sha256(b"registry-bench").digest()
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(MiB // 32))


def _mbps(size: int, seconds: float) -> float:
    return size / MiB / seconds if seconds > 0 else float("inf")


def evict(path: str) -> None:
    """Drop ``path``'s (clean, fsynced) pages from the page cache, so the next
    read comes from the disk; touches no other file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _raw_read(path: str) -> tuple[int, float]:
    start = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while data := os.read(fd, MiB):
            total += len(data)
    finally:
        os.close(fd)
    return total, time.perf_counter() - start


def raw_figures(directory: str, size: int, block: bytes) -> dict[str, float]:
    """Write then read ``size`` bytes of ``block`` to a plain file, dd-style:
    the read from the disk (``read_cold``) and from the page cache."""
    path = os.path.join(directory, "raw.bin")
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // len(block)):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    write_s = time.perf_counter() - start
    evict(path)
    total, cold_s = _raw_read(path)
    total2, read_s = _raw_read(path)
    os.unlink(path)
    assert total == total2 == size
    return {
        "write_mbps": _mbps(size, write_s),
        "read_cold_mbps": _mbps(size, cold_s),
        "read_mbps": _mbps(size, read_s),
    }


async def _read_through(driver: IStorageDriver, path: str, chunk: int) -> tuple[int, float]:
    start = time.perf_counter()
    reader = await driver.reader(path)
    total = 0
    while data := await reader.read(chunk):
        total += len(data)
    await reader.close()
    return total, time.perf_counter() - start


async def driver_figures(
    driver: IStorageDriver, size: int, block: bytes, evict_object: Callable[[], None]
) -> dict[str, float]:
    """Write ``size`` bytes through a writer in 64 KiB writes and commit; read
    them back with ``read(64 KiB)`` from the disk (after ``evict_object()``),
    then from the page cache with ``read(64 KiB)`` and ``read(1 MiB)``."""
    path = "/bench/blob/data"
    pieces = [block[i : i + NET_CHUNK] for i in range(0, len(block), NET_CHUNK)]
    start = time.perf_counter()
    writer = await driver.writer(path)
    for _ in range(size // len(block)):
        for piece in pieces:
            await writer.write(piece)
    await writer.commit()
    write_s = time.perf_counter() - start
    evict_object()
    totals = []
    total, cold_s = await _read_through(driver, path, NET_CHUNK)
    totals.append(total)
    total, read_s = await _read_through(driver, path, NET_CHUNK)
    totals.append(total)
    total, read_big_s = await _read_through(driver, path, MiB)
    totals.append(total)
    await driver.delete("/bench")
    if totals != [size] * 3:
        raise RuntimeError(f"{driver.name}: read {totals} bytes back, wrote {size}")
    return {
        "write_mbps": _mbps(size, write_s),
        "read_cold_mbps": _mbps(size, cold_s),
        "read_mbps": _mbps(size, read_s),
        "read_1mib_mbps": _mbps(size, read_big_s),
    }


def _outofprocess_driver(root: str, reactor: Any) -> IStorageDriver | None:
    """The filesystem driver served by ``registry-storage-filesystem``, if the
    out-of-process module exists."""
    try:
        oop = importlib.import_module("registry.storage.drivers.outofprocess")
    except ImportError:
        return None
    params = {"executable": "filesystem", "params": {"rootdirectory": root}}
    try:
        return create_driver("outofprocess", params, reactor)
    except ValueError as exc:
        if "unknown driver" not in str(exc):
            raise
    driver = oop.create_explicit(params, reactor)
    return driver if isinstance(driver, StorageDriverWrapper) else StorageDriverWrapper(driver)


def _in_reactor(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the coroutine ``make()`` on the global reactor and return its result."""
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads
    from twisted.internet.threads import blockingCallFromThread

    if not reactor.running:
        started = threading.Event()
        reactor.callWhenRunning(started.set)
        thread = threading.Thread(
            target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
        )
        thread.start()
        started.wait()

    def call() -> Deferred[Any]:
        return ensureDeferred(make())

    # Twisted types the global reactor by the interfaces every reactor has;
    # the installed one also runs calls from threads.
    return blockingCallFromThread(cast(IReactorFromThreads, reactor), call)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the storage benchmark; print one line per figure and return them."""
    from twisted.internet import reactor

    size = int(getattr(args, "mib", None) or DEFAULT_MIB) * MiB
    block = _block()
    base = tempfile.mkdtemp(prefix="registry-bench-storage-")
    results: dict[str, Any] = {"size_bytes": size, "drivers": {}, "ratios": {}}
    try:
        results["raw"] = raw_figures(base, size, block)
        raw = results["raw"]
        print(f"storage {'raw (1 MiB os.write+fsync / os.read)':<32} write {raw['write_mbps']:7.0f}  "
              f"read disk {raw['read_cold_mbps']:7.0f}  cache {raw['read_mbps']:7.0f} MB/s")

        makers: dict[str, Callable[[str], IStorageDriver | None]] = {
            "inmemory": lambda root: create_driver("inmemory", {}, reactor),
            "filesystem": lambda root: create_driver("filesystem", {"rootdirectory": root}, reactor),
            "outofprocess-filesystem": lambda root: _outofprocess_driver(root, reactor),
        }
        for label, make in makers.items():
            root = os.path.join(base, label)
            os.mkdir(root)

            async def measure() -> dict[str, float] | None:
                driver = make(root)
                if driver is None:
                    return None
                try:
                    return await driver_figures(
                        driver, size, block, lambda: evict(os.path.join(root, "bench", "blob", "data"))
                    )
                finally:
                    await driver.close()

            figures = _in_reactor(measure)
            if figures is None:
                continue
            results["drivers"][label] = figures
            ratio = {
                "write": figures["write_mbps"] / raw["write_mbps"],
                "read_cold": figures["read_cold_mbps"] / raw["read_cold_mbps"],
                "read": figures["read_mbps"] / raw["read_mbps"],
                "read_1mib": figures["read_1mib_mbps"] / raw["read_mbps"],
            }
            results["ratios"][label] = ratio
            print(f"storage {label:<32} write {figures['write_mbps']:7.0f}  "
                  f"read disk {figures['read_cold_mbps']:7.0f}  cache {figures['read_mbps']:7.0f} "
                  f"(1 MiB reads {figures['read_1mib_mbps']:7.0f}) MB/s  x raw: write {ratio['write']:.2f} "
                  f"disk {ratio['read_cold']:.2f} cache {ratio['read']:.2f}/{ratio['read_1mib']:.2f}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return results


if __name__ == "__main__":
    run(argparse.Namespace(json=False))
