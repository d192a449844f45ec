"""Write/read MB/s of one large object through a driver in-process and over AMP.

Usage: .venv/bin/python scripts/bench_outofprocess.py [--mib 256] [--chunk-kib 1024]
       [--drivers filesystem,inmemory]

For each driver it measures, in one run: writing ``--mib`` MiB through
``writer().write()`` in ``--chunk-kib`` pieces then ``commit``, and reading it
back with ``reader().read(chunk)``; first in-process (``create_driver(name)``)
then through ``registry-storage-<name>`` (``OutOfProcessDriver``). Not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from twisted.internet import defer, task

from registry.storage.base import StorageDriverWrapper
from registry.storage.drivers.outofprocess import OutOfProcessDriver, find_executable
from registry.storage.factory import create_driver


@defer.inlineCallbacks
def run_one(driver: Any, total: int, chunk: int) -> Any:
    data = os.urandom(chunk)
    t0 = time.perf_counter()
    w = yield driver.writer("/bench/object")
    written = 0
    while written < total:
        yield w.write(data)
        written += chunk
    yield w.commit()
    t1 = time.perf_counter()
    r = yield driver.reader("/bench/object")
    got = 0
    while True:
        piece = yield r.read(chunk)
        if not piece:
            break
        got += len(piece)
    yield r.close()
    t2 = time.perf_counter()
    assert got == written, (got, written)
    yield driver.delete("/bench")
    mib = written / (1 << 20)
    return mib / (t1 - t0), mib / (t2 - t1)


@defer.inlineCallbacks
def main(reactor: Any, args: argparse.Namespace) -> Any:
    total = args.mib << 20
    chunk = args.chunk_kib << 10
    for name in args.drivers.split(","):
        with tempfile.TemporaryDirectory(dir=args.dir) as root:
            params = {"rootdirectory": root} if name == "filesystem" else {}
            inproc = create_driver(name, params)
            w, r = yield run_one(inproc, total, chunk)
            yield inproc.close()
            print(f"{name:11s} in-process     write {w:7.1f} MB/s  read {r:7.1f} MB/s")
            exe = find_executable(name)
            assert exe, f"registry-storage-{name} not installed"
            oop = StorageDriverWrapper(OutOfProcessDriver(exe, params, name=name))
            w, r = yield run_one(oop, total, chunk)
            yield oop.close()
            print(f"{name:11s} out-of-process write {w:7.1f} MB/s  read {r:7.1f} MB/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--chunk-kib", type=int, default=1024)
    parser.add_argument("--drivers", default="filesystem,inmemory")
    parser.add_argument("--dir", default=None, help="parent of the scratch directory")
    ns = parser.parse_args()
    task.react(main, (ns,))
