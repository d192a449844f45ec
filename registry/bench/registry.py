"""Registry benchmark: a live ``twistd registry`` on loopback (filesystem
storage), a 256 MiB blob uploaded monolithically and in 8 MiB chunks and
downloaded, next to a plain file copy of the same bytes in the same run.

Client side: curl streams the monolithic upload (``-T``) and the download
(``-o /dev/null``); chunks go over raw sockets from a memory map. MB = 2**20.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from registry.bench.servers import curl, our_argv, push_chunked, write_blob
from registry.bench.servers import start as start_registry

MIB = 1 << 20


def run(args: argparse.Namespace) -> dict[str, Any]:
    size_mib = getattr(args, "mib", None) or 256
    size = size_mib * MIB
    chunk = 8 * MIB
    figures: dict[str, Any] = {"size_mib": size_mib}
    if shutil.which("curl") is None:
        print("registry: curl is not installed; skipped")
        return {"skipped": "curl not installed"}
    with tempfile.TemporaryDirectory(prefix="registry-bench-") as tmp:
        work = Path(tmp)
        src = work / "blob"
        digest = write_blob(src, size // (16 * MIB) * (16 * MIB))

        t = time.perf_counter()
        shutil.copyfile(src, work / "copy")
        with open(work / "copy", "rb+") as copy_file:
            os.fsync(copy_file.fileno())
        copy_s = time.perf_counter() - t
        os.unlink(work / "copy")
        figures["file_copy_mbps"] = size_mib / copy_s
        print(f"registry: plain file copy (with fsync)        {figures['file_copy_mbps']:8.0f} MB/s  (reference)")

        server = start_registry("registry", our_argv, work / "server")
        try:
            t = time.perf_counter()
            curl("-X", "POST", "-T", str(src), "-H", "Content-Type: application/octet-stream",
                  f"{server.url}/v2/bench/mono/blobs/uploads?digest={digest}")
            mono_s = time.perf_counter() - t
            figures["upload_monolithic_mbps"] = size_mib / mono_s

            with open(src, "rb") as src_file, mmap.mmap(src_file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                t = time.perf_counter()
                push_chunked(server.port, "bench/chunked", view, digest, chunk)
                chunked_s = time.perf_counter() - t
                view.release()  # before the mmap closes
            figures["upload_chunked_8mib_mbps"] = size_mib / chunked_s

            t = time.perf_counter()
            curl(f"{server.url}/v2/bench/mono/blobs/{digest}")
            get_s = time.perf_counter() - t
            figures["download_mbps"] = size_mib / get_s
        finally:
            server.stop()

    ref = figures["file_copy_mbps"]
    for key, label in (("upload_monolithic_mbps", "upload, monolithic POST"), ("upload_chunked_8mib_mbps", "upload, 8 MiB PATCH chunks"),
                       ("download_mbps", "download (GET)")):
        figures[key.replace("_mbps", "_ratio")] = figures[key] / ref
        print(f"registry: {label:36s} {figures[key]:8.0f} MB/s  {figures[key] / ref:5.2f}x file copy")
    return figures
