"""Write/read MB/s of one large object through a driver in-process and over AMP.

Usage: .venv/bin/python scripts/bench_outofprocess.py [--mib 256] [--chunk-kib 1024]
       [--drivers filesystem,inmemory]

For each driver it measures, in one run: writing ``--mib`` MiB through
``writer().write()`` in ``--chunk-kib`` pieces then ``commit``, and reading it
back with ``reader().read(chunk)``; first in-process (``create_driver(name)``)
then through ``registry-storage-<name>`` (``OutOfProcessDriver``), printing
MB/s and the CPU seconds this process and the child spent. Not a test.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from registry.storage.wrapper import StorageDriverWrapper
from registry.storage.drivers.outofprocess import OutOfProcessDriver, find_executable
from registry.storage.factory import create_driver


def cpu_seconds(pid: int | None) -> tuple[float, float]:
    """(this process, child ``pid``) user+system CPU seconds so far (Linux)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    child = 0.0
    if pid is not None:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        child = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return me.ru_utime + me.ru_stime, child


@defer.inlineCallbacks
def run_one(driver: Any, total: int, chunk: int, pid_of: Any = lambda: None) -> Any:
    """Fire with ((write MB/s, parent CPU s, child CPU s), (read ...))."""
    data = os.urandom(chunk)
    yield driver.list("/").addErrback(lambda _: None)  # start a child before timing
    pid = pid_of()
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    w = yield driver.writer("/bench/object")
    written = 0
    while written < total:
        yield w.write(data)
        written += chunk
    yield w.commit()
    t1 = time.perf_counter()
    c1 = cpu_seconds(pid)
    r = yield driver.reader("/bench/object")
    got = 0
    while True:
        piece = yield r.read(chunk)
        if not piece:
            break
        got += len(piece)
    yield r.close()
    t2 = time.perf_counter()
    c2 = cpu_seconds(pid)
    assert got == written, (got, written)
    yield driver.delete("/bench")
    mib = written / (1 << 20)
    return (
        (mib / (t1 - t0), c1[0] - c0[0], c1[1] - c0[1]),
        (mib / (t2 - t1), c2[0] - c1[0], c2[1] - c1[1]),
    )


def show(label: str, result: Any) -> None:
    (w, wp, wc), (r, rp, rc) = result
    print(
        f"{label:27s} write {w:7.1f} MB/s (cpu parent {wp:5.2f}s child {wc:5.2f}s)"
        f"  read {r:7.1f} MB/s (cpu parent {rp:5.2f}s child {rc:5.2f}s)"
    )


@defer.inlineCallbacks
def main(reactor: Any, args: argparse.Namespace) -> Any:
    total = args.mib << 20
    chunk = args.chunk_kib << 10
    for name in args.drivers.split(","):
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            params = {"rootdirectory": root} if name == "filesystem" else {}
            inproc = create_driver(name, params)
            show(f"{name} in-process", (yield run_one(inproc, total, chunk)))
            yield inproc.close()
            exe = find_executable(name)
            assert exe, f"registry-storage-{name} not installed"
            child = OutOfProcessDriver(exe, params, name=name)
            oop = StorageDriverWrapper(child)
            show(f"{name} out-of-process", (yield run_one(oop, total, chunk, lambda: child.child_pid)))
            yield oop.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--drivers", default="filesystem,inmemory")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    ns = parser.parse_args()
    task.react(main, (ns,))
