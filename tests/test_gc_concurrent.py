"""Garbage collection running in a loop while 20 clients push, re-tag and
untag images over real HTTP: afterwards every tag pulls completely and
verifies, nothing unreferenced is left once a last collection ran, and the
bytes stored dropped by what the collections freed.

Over the filesystem and the out-of-process drivers the collector is another
process (``registry garbage-collect --grace 0s CONFIG`` in a loop, the server
in this one), and the disk usage of the store drops by at least what the
last collection freed; over the in-memory driver, which cannot be shared
between processes, it is a coroutine loop on the same reactor as the server.
With the default grace period (1h) the same loop refuses no push at all and
still removes the garbage older than the grace period."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from registry.app import make_root
from registry.digest import Digest
from registry.http import RegistrySite
from registry.manifest_types import parse_manifest
from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.factory import create_driver
from registry.storage.gc import GarbageCollector

pytestmark = pytest.mark.slow

CLIENTS = 20
ROUNDS = 6
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
SHARED = [f"shared layer {i} ".encode() * (200 + 50 * i) for i in range(6)]


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Client:
    def __init__(self, url: str, index: int, rounds: int = ROUNDS) -> None:
        self.url = url
        self.rounds = rounds
        self.index = index
        self.rng = random.Random(index)
        self.name = f"team{index % 4}/app{index % 5}"
        self.refused = 0
        self.refused_uploads = 0

    async def push_blob(self, data: bytes) -> dict[str, Any]:
        d = sha(data)
        for _ in range(10):
            r = await treq.post(f"{self.url}/v2/{self.name}/blobs/uploads/?digest={d}", data=data)
            text = await r.text()
            if r.code == 201:
                return {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(data)}
            # With --grace 0s a collection may sweep the blob the moment it
            # is stored, before its link is written: refused, never lost.
            assert r.code == 404 and "BLOB_UNKNOWN" in text, (r.code, text)
            self.refused_uploads += 1
        raise AssertionError("upload refused ten times")

    async def push_image(self, tag: str) -> str:
        layers = [
            self.rng.randbytes(self.rng.randint(2000, 8000)),
            SHARED[self.rng.randrange(len(SHARED))],
        ]
        config = json.dumps({"client": self.index, "nonce": self.rng.random()}).encode()
        for _ in range(10):
            descs = [await self.push_blob(data) for data in layers]
            cfg = {**await self.push_blob(config), "mediaType": "application/vnd.oci.image.config.v1+json"}
            body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": descs}).encode()
            r = await treq.put(
                f"{self.url}/v2/{self.name}/manifests/{tag}", data=body, headers={"Content-Type": OCI_MANIFEST}
            )
            text = await r.text()
            if r.code == 201:
                return sha(body)
            # A collection swept a blob between upload and manifest: push again.
            assert r.code == 400 and "MANIFEST_BLOB_UNKNOWN" in text, (r.code, text)
            self.refused += 1
        raise AssertionError("manifest refused ten times")

    async def run(self) -> None:
        for round_ in range(self.rounds):
            await self.push_image(f"c{self.index}-{round_ % 3}")  # re-tags after three rounds
            if self.rng.random() < 0.3:
                await self.push_image("latest")  # shared tag, re-pointed by many clients
            if self.rng.random() < 0.25:
                tag = f"c{self.index}-{self.rng.randrange(3)}"
                r = await treq.delete(f"{self.url}/v2/{self.name}/manifests/{tag}")
                assert r.code in (202, 404), r.code
                await r.text()


async def verify_every_tag_pulls(url: str) -> int:
    """GET every tag's manifest and every blob it references; check digests."""
    r = await treq.get(f"{url}/v2/_catalog?n=1000")
    repos = (await r.json())["repositories"]
    pulled = 0
    for name in repos:
        r = await treq.get(f"{url}/v2/{name}/tags/list")
        tags = (await r.json()).get("tags") or [] if r.code == 200 else []
        for tag in tags:
            r = await treq.get(f"{url}/v2/{name}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
            body = await r.content()
            assert r.code == 200, (name, tag, r.code, body)
            assert sha(body) == r.headers.getRawHeaders("docker-content-digest")[0]
            manifest = parse_manifest(body, None)
            for desc in manifest.blobs:
                r = await treq.get(f"{url}/v2/{name}/blobs/{desc.digest}")
                data = await r.content()
                assert r.code == 200, (name, tag, str(desc.digest), r.code)
                assert sha(data) == str(desc.digest) and len(data) == desc.size
            pulled += 1
    return pulled


async def stored_blobs(driver: IStorageDriver) -> dict[str, int]:
    try:
        infos = await driver.walk(paths.BLOBS)
    except PathNotFoundError:
        return {}
    return {"sha256:" + i.path.split("/")[-2]: i.size for i in infos if i.path.endswith("/data")}


async def referenced(driver: IStorageDriver) -> tuple[set[str], set[tuple[str, str]], set[tuple[str, str]]]:
    """(blobs any manifest references or is, (repo, blob) references, (repo, blob) layer links)."""
    from registry.storage.catalog import Catalog

    blobs: set[str] = set()
    refs: set[tuple[str, str]] = set()
    links: set[tuple[str, str]] = set()
    for name in await Catalog(driver).repositories():
        for directory, kind in ((paths.manifest_revisions_dir(name), "rev"), (paths.layers_dir(name), "link")):
            try:
                infos = await driver.walk(directory)
            except PathNotFoundError:
                continue
            for info in infos:
                if not info.path.endswith("/link"):
                    continue
                d = "sha256:" + info.path.split("/")[-2]
                if kind == "link":
                    links.add((name, d))
                    continue
                blobs.add(d)
                manifest = parse_manifest(await driver.get_content(paths.blob_data(Digest.parse(d))), None)
                for desc in manifest.blobs:
                    blobs.add(str(desc.digest))
                    refs.add((name, str(desc.digest)))
    return blobs, refs, links


class YieldingDriver:
    """Delegates to a driver, giving the reactor a turn before every call: the
    in-memory driver answers synchronously, so without this a collection
    coroutine would run start to end between two requests."""

    def __init__(self, inner: IStorageDriver) -> None:
        self._inner = inner

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self._inner, attr)
        if not callable(method):
            return method

        async def call(*args: Any, **kwargs: Any) -> Any:
            await deferLater(reactor, 0, lambda: None)
            return await method(*args, **kwargs)

        return call


async def serve(driver: IStorageDriver) -> tuple[Any, str]:
    port = reactor.listenTCP(0, RegistrySite(make_root(driver, delete_enabled=True)), interface="127.0.0.1")
    return port, f"http://127.0.0.1:{port.getHost().port}"


async def run_clients(url: str, rounds: int = ROUNDS) -> list[Client]:
    clients = [Client(url, i, rounds) for i in range(CLIENTS)]
    await defer.gatherResults([defer.ensureDeferred(c.run()) for c in clients], consumeErrors=True)
    return clients


async def final_checks(driver: IStorageDriver, url: str, freed_during: int, final_freed: int, before: int) -> None:
    pulled = await verify_every_tag_pulls(url)
    assert pulled >= CLIENTS  # most clients keep at least one tag
    blobs, refs, links = await referenced(driver)
    stored = await stored_blobs(driver)
    assert set(stored) == blobs, "after a last collection exactly the referenced blobs are stored"
    assert links == refs, "and exactly the referenced layer links"
    assert freed_during > 0, "the collections running during the pushes freed something"
    assert before - sum(stored.values()) == final_freed


async def close_driver(driver: Any) -> None:
    for candidate in (driver, getattr(driver, "wrapped", None)):
        closer = getattr(candidate, "close", None)
        if closer is not None:
            await closer()
            return


def registry_command() -> list[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "registry")
    return [beside] if os.access(beside, os.X_OK) else [sys.executable, "-c", "import sys; from registry.cli import main; sys.exit(main())"]


def disk_usage(root: Path) -> int:
    """Bytes the store occupies on disk (allocated blocks of every file and
    directory below ``root``)."""
    total = 0
    for directory, dirs, names in os.walk(root):
        for name in [*dirs, *names]:
            try:
                total += os.lstat(os.path.join(directory, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def run_gc(config: Path, *options: str) -> dict[str, Any]:
    """``registry garbage-collect [options] --json CONFIG`` as a process."""
    done = subprocess.run(
        [*registry_command(), "garbage-collect", *options, "--json", str(config)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def gc_in_another_process_while_clients_push(
    driver: IStorageDriver, config: Path, rounds: int, *, settle_s: float = 0.05, disk_root: Path | None = None
) -> None:
    """The server here over ``driver``; ``registry garbage-collect --grace 0s``
    in a loop in another process over the same storage (``config``), every
    other run with ``--delete-untagged``; then the checks of ``final_checks``
    after one last collection, and, with ``disk_root``, that the disk usage
    dropped by at least what that collection freed."""
    port, url = await serve(driver)
    stop = threading.Event()
    outputs: list[dict[str, Any]] = []

    def gc_loop() -> None:
        k = 0
        while not stop.is_set():
            outputs.append(run_gc(config, "--grace", "0s", *(["--delete-untagged"] if k % 2 else [])))
            k += 1

    try:
        loop = deferToThread(gc_loop)
        started = time.monotonic()
        clients = await run_clients(url, rounds)
        stop.set()
        await loop
        assert len(outputs) >= 2, "the collector ran during the pushes"
        freed_during = sum(o["bytes_freed"] for o in outputs)
        await deferLater(reactor, settle_s, lambda: None)
        before = sum((await stored_blobs(driver)).values())
        used_before = disk_usage(disk_root) if disk_root is not None else 0
        final = await deferToThread(run_gc, config, "--grace", "0s")
        await final_checks(driver, url, freed_during, final["bytes_freed"], before)
        if disk_root is not None:
            used_after = disk_usage(disk_root)
            assert used_before - used_after >= final["bytes_freed"], (used_before, used_after, final["bytes_freed"])
        assert not [p for p in (await driver.walk("/")) if "/_gc/" in p.path]
        print(f"{len(outputs)} collections in {time.monotonic() - started:.1f}s, "
              f"{sum(c.refused for c in clients)} manifests and {sum(c.refused_uploads for c in clients)} uploads "
              "refused and pushed again")
    finally:
        stop.set()
        await port.stopListening()


@pytest.mark.parametrize("kind", ["filesystem", "outofprocess"])
@pytest_twisted.ensureDeferred
async def test_gc_in_another_process_while_20_clients_push(tmp_path: Path, kind: str) -> None:
    """``outofprocess``: the registry's and the collector's storage are each
    a ``registry-storage-filesystem`` child over the same directory."""
    root = tmp_path / "store"
    config = tmp_path / "config.yml"
    if kind == "filesystem":
        params: dict[str, Any] = {"rootdirectory": str(root)}
        config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    else:
        params = {"executable": "filesystem", "params": {"rootdirectory": str(root)}}
        config.write_text(
            "version: 0.1\nstorage:\n  outofprocess:\n    executable: filesystem\n"
            f"    params:\n      rootdirectory: {root}\n"
        )
    driver = create_driver(kind, params)
    try:
        # Every storage call of an out-of-process driver is a round trip: fewer rounds.
        await gc_in_another_process_while_clients_push(
            driver, config, ROUNDS if kind == "filesystem" else 3, disk_root=root
        )
    finally:
        await close_driver(driver)


@pytest_twisted.ensureDeferred
async def test_pushes_within_the_grace_period_are_never_refused(tmp_path: Path) -> None:
    """With the default grace (1h), collections running in another process
    while 20 clients push refuse nothing (no upload, no manifest PUT), and
    still remove the garbage older than the grace period."""
    root = tmp_path / "store"
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n")
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    port, url = await serve(driver)
    try:
        # Old garbage: an image pushed and deleted, and a layer nothing uses, aged 2 h.
        seed = Client(url, 99, 1)
        old = await seed.push_image("old")
        old_manifest = parse_manifest(await driver.get_content(paths.blob_data(Digest.parse(old))), None)
        r = await treq.delete(f"{url}/v2/{seed.name}/manifests/{old}")
        assert r.code == 202
        await r.text()
        orphan = await seed.push_blob(b"nothing references this " * 500)
        shared = {sha(s) for s in SHARED}
        # A shared layer is garbage too until a client links it again: it may go or stay.
        garbage = ({old, orphan["digest"]} | {str(b.digest) for b in old_manifest.blobs}) - shared
        maybe = {str(b.digest) for b in old_manifest.blobs} & shared
        two_hours_ago = time.time() - 7200
        for directory, _, names in os.walk(root):
            for name in names:
                os.utime(os.path.join(directory, name), (two_hours_ago, two_hours_ago))
        sizes = await stored_blobs(driver)
        garbage_bytes = sum(sizes[d] for d in garbage)
        stop = threading.Event()
        outputs: list[dict[str, Any]] = []

        def gc_loop() -> None:
            k = 0
            while not stop.is_set():
                outputs.append(run_gc(config, *(["--delete-untagged"] if k % 2 else [])))  # default grace
                k += 1

        loop = deferToThread(gc_loop)
        clients = await run_clients(url, 3)
        stop.set()
        await loop
        assert len(outputs) >= 2, "the collector ran during the pushes"
        assert sum(c.refused for c in clients) == 0 and sum(c.refused_uploads for c in clients) == 0
        freed = {b["digest"] for o in outputs for b in o["blobs"]}
        assert garbage <= freed <= garbage | maybe, (freed, garbage)
        assert sum(o["bytes_freed"] for o in outputs) == garbage_bytes + sum(sizes[d] for d in freed & maybe)
        assert not garbage & set(await stored_blobs(driver))
        assert await verify_every_tag_pulls(url) >= CLIENTS
        blobs, _, _ = await referenced(driver)
        assert blobs <= set(await stored_blobs(driver))
        # What the clients pushed is young: the next collection frees nothing.
        assert run_gc(config)["blobs_deleted"] == 0
    finally:
        await port.stopListening()
        await close_driver(driver)


@pytest_twisted.ensureDeferred
async def test_gc_coroutine_loop_while_20_clients_push_inmemory() -> None:
    driver = create_driver("inmemory", {})
    port, url = await serve(driver)
    stop = False
    freed = []

    async def gc_loop() -> None:
        k = 0
        while not stop:
            report = await GarbageCollector(
                YieldingDriver(driver), grace_s=0, delete_untagged=bool(k % 2), batch_size=8  # type: ignore[arg-type]
            ).run()
            freed.append(report.bytes_freed)
            k += 1
            await deferLater(reactor, 0.01, lambda: None)

    try:
        loop = defer.ensureDeferred(gc_loop())
        await run_clients(url)
        stop = True
        await loop
        assert len(freed) >= 2
        await deferLater(reactor, 0.01, lambda: None)
        before = sum((await stored_blobs(driver)).values())
        final = await GarbageCollector(driver, grace_s=0).run()
        await final_checks(driver, url, sum(freed), final.bytes_freed, before)
    finally:
        stop = True
        await port.stopListening()
