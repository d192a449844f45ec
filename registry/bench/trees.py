"""Paired upload figures of several versions of the registry, interleaved.

``python -m registry.bench.trees [--rounds N] [--mib N] REV[@WORKERS] ...``

A machine that is shared (or a virtual one with steal time) moves a
throughput figure by 20-40 % between minutes, so a version measured now
cannot be compared with a figure written down an hour ago. This runs every
given git revision (or a directory holding a checkout) side by side: each
revision is checked out into a temporary worktree, run from there with this
checkout's interpreter and built C core (``PYTHONPATH``), and uploaded to in
turn, A B C / C B A / ..., so each sees the same machine state.

Per run: one registry (``http.workers`` = ``@WORKERS``, or the revision's
default), then a blob of ``--mib`` MiB pushed twice in 8 MiB PATCH chunks
over raw sockets (``push_chunked``, as the ``registry`` section does).
Printed per run: MB/s and the CPU seconds (user + system) of the server's
processes during the uploads; at the end the median and range per revision.
"""

from __future__ import annotations

import argparse
import mmap
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.bench.servers import our_argv_with, push_chunked, start, write_blob

MIB = 1 << 20
CHUNK = 8 * MIB
UPLOADS_PER_RUN = 2


@dataclass
class Tree:
    """One version under test: its label, source directory and worker count."""

    label: str
    path: Path
    workers: int | None
    runs: list[tuple[float, float]] = field(default_factory=list)  # (MB/s, CPU s)


def _checkout(spec: str, into: Path) -> Tree:
    rev, _, workers = spec.partition("@")
    count = int(workers) if workers else None
    if Path(rev).is_dir():
        return Tree(spec, Path(rev).resolve(), count)
    known = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], capture_output=True)
    if known.returncode != 0:
        raise SystemExit(f"{rev!r} is neither a directory nor a git revision of this repository")
    target = into / f"tree-{len(list(into.iterdir()))}"
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(target), rev], check=True)
    built = Path(__file__).resolve().parent.parent
    for so in built.glob("_hashing*.so"):
        shutil.copy(so, target / "registry" / so.name)
    return Tree(spec, target, count)


def _run_once(tree: Tree, work: Path, src: Path, digest: str, size_mib: int) -> tuple[float, float]:
    extra: dict[str, Any] | None = {"http": {"workers": tree.workers}} if tree.workers else None
    env_before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree.path)
    try:
        server = start(tree.label, our_argv_with(extra), work)
    finally:
        if env_before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = env_before
    try:
        with open(src, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            cpu_before = server.cpu_seconds()
            t = time.perf_counter()
            for k in range(UPLOADS_PER_RUN):
                push_chunked(server.port, f"bench/t{k}", view, digest, CHUNK)
            elapsed = time.perf_counter() - t
            cpu = server.cpu_seconds() - cpu_before
            view.release()
    finally:
        server.stop()
    return UPLOADS_PER_RUN * size_mib / elapsed, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m registry.bench.trees", description=__doc__.split("\n\n")[0])
    parser.add_argument("trees", nargs="+", metavar="REV[@WORKERS]", help="git revision or checkout directory")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mib", type=int, default=256, help="blob size in MiB (default 256)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-trees-") as tmp:
        root = Path(tmp)
        (root / "trees").mkdir()
        trees: list[Tree] = []
        try:
            for spec in args.trees:
                trees.append(_checkout(spec, root / "trees"))
            src = root / "blob"
            digest = write_blob(src, args.mib * MIB)
            n = 0
            for r in range(args.rounds):
                for tree in trees if r % 2 == 0 else trees[::-1]:
                    n += 1
                    mbps, cpu = _run_once(tree, root / f"server-{n}", src, digest, args.mib)
                    tree.runs.append((mbps, cpu))
                    print(f"{tree.label:24s} {mbps:7.0f} MB/s  server CPU {cpu:5.2f} s", flush=True)
            print(f"8 MiB PATCH uploads of {args.mib} MiB, x{UPLOADS_PER_RUN} per run, {args.rounds} interleaved rounds:")
            for tree in trees:
                rates = [m for m, _ in tree.runs]
                cpus = [c for _, c in tree.runs]
                print(f"{tree.label:24s} median {statistics.median(rates):7.0f} MB/s  range {min(rates):.0f}-{max(rates):.0f}"
                      f"  server CPU median {statistics.median(cpus):.2f} s")
        finally:
            for tree in trees:
                if tree.path.is_relative_to(root):
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree.path)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
