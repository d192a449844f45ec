"""How fast the web page answers over a big registry: a filesystem storage
holding one repository with ``--tags`` tags (each its own image: own config,
own layers, so no summary is shared) and ``--repos`` more repositories, served
by ``twistd registry`` (one process) on 127.0.0.1; each page is fetched over
a fresh connection, first once (cold: the process has read nothing yet), then
``--rounds`` times (warm), and the API's answer for the same data alongside.

    .venv/bin/python -m tests.ui.measure [--tags 1000] [--repos 10000] [--rounds 7]

Prints one line per URL: wall time (client side) cold and warm (median,
max), and the registry process's CPU time for the request (user + system,
its thread pools included; less sensitive to a busy machine than wall time).
``tests/ui/test_speed.py`` serves the same pages (1,000 tags) as a test, without timing bounds.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from twisted.internet import task
from twisted.internet.defer import DeferredSemaphore, gatherResults

from registry.bench.servers import process_cpu_seconds
from registry.digest import Digest
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.clients.harness import Registry, start_our_registry
from tests.ui.content import image, sha, store

BIG = "big/app"


def repository_names(count: int) -> list[str]:
    """``count`` names, 100 to an organisation (``org07/repo00712``)."""
    return [f"org{i % 100:02d}/repo{i:05d}" for i in range(count)]


def populate(root: Path, tags: int, repos: int) -> None:
    """Write the registry into filesystem storage at ``root`` through the
    data model (as pushes would), 32 writes at a time. Runs the reactor:
    not in a process that already runs one (``--populate-only``)."""

    async def fill(reactor: Any) -> None:
        driver = create_driver("filesystem", {"rootdirectory": str(root)}, reactor=reactor)
        model = DataModel.over(driver)
        limit = DeferredSemaphore(32)
        work = [limit.run(_ensure, store(model, BIG, image(f"t{i:04d}", layers=2), f"t{i:04d}")) for i in range(tags)]
        await gatherResults(work, consumeErrors=True)
        shared = image("shared", layers=1)
        layer = Digest.parse(sha(shared.blobs[1]))
        await model.blobs.put_content(layer, shared.blobs[1])
        work = [limit.run(model.blobs.descriptors.link, name, layer) for name in repository_names(repos)]
        await gatherResults(work, consumeErrors=True)

    try:
        task.react(lambda reactor: _ensure(fill(reactor)), [])
    except SystemExit as e:  # react always exits; only a failure matters
        if e.code:
            raise


def _ensure(coro: Any) -> Any:
    from twisted.internet.defer import ensureDeferred

    return ensureDeferred(coro)


def fetch(registry: Registry, path: str) -> tuple[float, float, int, int]:
    """(wall seconds, server CPU seconds, status, body bytes) of one GET on a
    fresh connection."""
    pid = registry.process.pid
    conn = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=120)
    try:
        cpu = process_cpu_seconds(pid) or 0.0
        started = time.perf_counter()
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        wall = time.perf_counter() - started
        return wall, (process_cpu_seconds(pid) or 0.0) - cpu, response.status, len(body)
    finally:
        conn.close()


@dataclass
class Timing:
    path: str
    cold_ms: float
    cold_cpu_ms: float
    size: int
    warm_ms: list[float] = field(default_factory=list)
    warm_cpu_ms: list[float] = field(default_factory=list)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.warm_ms)

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.warm_cpu_ms)

    def line(self) -> str:
        return (
            f"{self.path:<40} cold {self.cold_ms:6.0f} ms (cpu {self.cold_cpu_ms:4.0f})"
            f"  warm median {self.median_ms:6.1f} ms (cpu {self.median_cpu_ms:4.0f}) max {max(self.warm_ms):6.0f} ms"
            f"  {self.size:>7} B"
        )


def measure(registry: Registry, paths: Sequence[str], rounds: int) -> list[Timing]:
    """Each path once cold, then ``rounds`` times interleaved (warm)."""
    results: dict[str, Timing] = {}
    for path in paths:
        wall, cpu, status, size = fetch(registry, path)
        assert status == 200, (path, status)
        results[path] = Timing(path, wall * 1000, cpu * 1000, size)
    for _ in range(rounds):
        for path in paths:
            wall, cpu, status, _ = fetch(registry, path)
            assert status == 200, (path, status)
            results[path].warm_ms.append(wall * 1000)
            results[path].warm_cpu_ms.append(cpu * 1000)
    return [results[p] for p in paths]


def paths_for(repos: int) -> list[str]:
    names = repository_names(repos)
    middle = sorted(names)[len(names) // 2] if names else ""
    return [
        f"/ui/r/{BIG}",
        f"/ui/r/{BIG}?n=1000",
        f"/v2/{BIG}/tags/list",
        "/ui/",
        f"/ui/?last={middle}",
        "/ui/?q=org42/",
        f"/ui/r/{BIG}/-/manifest/t0500",
    ]


def start(workdir: Path, storage: Path) -> Registry:
    return start_our_registry(workdir, storage=storage, extra_config={"http": {"workers": 1}}, timeout=60)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.ui.measure", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=1000)
    parser.add_argument("--repos", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="reuse (or keep) the storage here")
    parser.add_argument("--populate-only", action="store_true", help="fill --dir and stop")
    args = parser.parse_args(argv)
    if args.populate_only:
        if args.dir is None:
            parser.error("--populate-only needs --dir")
        populate(args.dir, args.tags, args.repos)
        return 0
    with tempfile.TemporaryDirectory(prefix="ui-measure-") as tmp:
        workdir = Path(tmp)
        storage = args.dir or workdir / "storage"
        if not (storage / "docker").exists():
            started = time.perf_counter()
            populate(storage, args.tags, args.repos)
            print(f"populated {args.tags} tags + {args.repos} repositories in {time.perf_counter() - started:.1f} s", flush=True)
        registry = start(workdir / "registry", storage)
        try:
            for timing in measure(registry, paths_for(args.repos), args.rounds):
                print(timing.line(), flush=True)
        finally:
            registry.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
