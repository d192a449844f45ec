"""The host-wide deletion generation (``registry.storage.generation``) and
the in-process content cache that watches it (``ContentCache``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted

from registry.digest import sha256_digest
from registry.storage.cache import ContentCache
from registry.storage.drivers.filesystem import FilesystemDriver
from registry.storage.generation import Generation, storage_identity
from registry.storage.model import DataModel
from registry.storage.wrapper import StorageDriverWrapper


def test_processes_on_one_identity_share_the_counter(tmp_path: Path) -> None:
    a = Generation.shared("filesystem:/x", str(tmp_path))
    b = Generation.shared("filesystem:/x", str(tmp_path))
    other = Generation.shared("filesystem:/y", str(tmp_path))
    start = a.current()
    assert b.current() == start
    assert b.bump() == start + 1
    assert a.current() == start + 1
    assert other.current() == 0
    for g in (a, b, other):
        g.close()


def test_bumps_from_concurrent_processes_are_never_lost(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from registry.storage.generation import Generation\n"
        "g = Generation.shared('s', sys.argv[1])\n"
        "for _ in range(300): g.bump()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)]) for _ in range(3)]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    g = Generation.shared("s", str(tmp_path))
    assert g.current() == 900
    g.close()


def test_identity_is_the_storage_location_not_its_credentials(tmp_path: Path) -> None:
    real = tmp_path / "root"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert storage_identity("filesystem", {"rootdirectory": str(link)}) == storage_identity(
        "filesystem", {"rootdirectory": str(real), "maxthreads": 4}
    )
    s3 = {"bucket": "b", "regionendpoint": "http://127.0.0.1:9000", "rootdirectory": "/r"}
    assert storage_identity("s3", s3) == storage_identity("s3", {**s3, "accesskey": "k", "secretkey": "s"})
    assert storage_identity("s3", s3) != storage_identity("s3", {**s3, "bucket": "c"})
    assert storage_identity("s3", s3) != storage_identity("filesystem", s3)


def test_without_a_shared_file_nothing_can_be_cached(tmp_path: Path) -> None:
    g = Generation.shared("x", str(tmp_path / "missing-dir"))
    assert not g.available
    assert g.current() != g.current()
    cache = ContentCache(g)
    cache.put(("size", "d"), 1, cache.token())
    assert cache.get(("size", "d")) is None


def test_cache_drops_everything_when_the_generation_moves(tmp_path: Path) -> None:
    g = Generation.shared("c", str(tmp_path))
    cache = ContentCache(g)
    cache.put(("manifest", "d"), b"body", cache.token())
    cache.put(("size", "d"), 4, cache.token())
    assert cache.get(("manifest", "d")) == b"body"
    Generation.shared("c", str(tmp_path)).bump()  # another process deleted something
    assert cache.get(("size", "d")) is None
    assert cache.get(("manifest", "d")) is None
    assert cache.drops == 1


def test_a_fill_that_raced_a_deletion_is_refused(tmp_path: Path) -> None:
    g = Generation.shared("r", str(tmp_path))
    cache = ContentCache(g)
    token = cache.token()  # before the storage read
    g.bump()  # the deletion lands between the read and the fill
    cache.put(("size", "d"), 7, token)
    assert cache.get(("size", "d")) is None
    cache.put(("size", "d"), 7, cache.token())
    assert cache.get(("size", "d")) == 7


def test_cache_is_bounded_by_bytes_and_skips_huge_manifests() -> None:
    cache = ContentCache(Generation.local(), max_bytes=1000, max_manifest=600)
    for i in range(5):
        cache.put(("manifest", i), bytes(300), cache.token())
    assert [i for i in range(5) if cache.get(("manifest", i)) is not None] == [2, 3, 4]
    cache.put(("manifest", "big"), bytes(700), cache.token())
    assert cache.get(("manifest", "big")) is None
    assert cache.status()["bytes"] <= 1000


def _model(root: Path) -> tuple[StorageDriverWrapper, DataModel]:
    driver = StorageDriverWrapper(FilesystemDriver(str(root)))
    return driver, DataModel.over(driver)


@pytest_twisted.ensureDeferred
async def test_a_deletion_through_another_driver_on_the_same_root_is_seen_at_once(tmp_path: Path) -> None:
    """Two data models over one root, as two processes would have: what one
    deletes, the other stops serving from its cache at once (they share the
    generation file because they share the root)."""
    a_driver, a = _model(tmp_path)
    b_driver, b = _model(tmp_path / "." )
    try:
        assert a_driver.generation.path == b_driver.generation.path
        body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}'
        d = sha256_digest(body)
        layer = sha256_digest(b"layer")
        await a.blobs.put_content(layer, b"layer")
        await a.blobs.descriptors.link("repo", layer)
        await a.blobs.put_content(d, body)
        await a_driver.put_content(f"/docker/registry/v2/repositories/repo/_manifests/revisions/sha256/{d.hex}/link", str(d).encode())
        # b reads (and caches) the manifest, its size, the layer link.
        assert await b.manifests.get("repo", d) == body
        assert await b.blobs.repo_size("repo", layer) == 5
        assert b.manifests.cache is not None and b.manifests.cache.get(("manifest", d)) == body
        await a.manifests.delete("repo", d)
        await a.blobs.descriptors.unlink("repo", layer)
        from registry.storage.errors import BlobUnknown, ManifestUnknown

        with pytest.raises(ManifestUnknown):
            await b.manifests.get("repo", d)
        with pytest.raises(BlobUnknown):
            await b.blobs.repo_size("repo", layer)
    finally:
        await a_driver.close()
        await b_driver.close()


def test_generation_files_are_private(tmp_path: Path) -> None:
    g = Generation.shared("p", str(tmp_path))
    assert g.path is not None
    assert os.stat(g.path).st_mode & 0o077 == 0
    g.close()


def test_entries_are_trusted_for_a_bounded_time() -> None:
    clock = [100.0]
    cache = ContentCache(Generation.local(), max_age_s=60, now=lambda: clock[0])
    cache.put(("size", "d"), 3, cache.token())
    clock[0] += 59
    assert cache.get(("size", "d")) == 3
    clock[0] += 2
    assert cache.get(("size", "d")) is None
    assert cache.status()["entries"] == 0 and cache.status()["bytes"] == 0


def test_old_entries_leave_as_new_ones_arrive() -> None:
    """Without being asked for again, entries past their age are evicted by
    later fills (two per fill), so memory follows the recent working set."""
    clock = [100.0]
    cache = ContentCache(Generation.local(), max_age_s=60, now=lambda: clock[0])
    for i in range(10):
        cache.put(("size", f"old{i}"), i, cache.token())
    clock[0] += 61
    for i in range(5):
        cache.put(("size", f"new{i}"), i, cache.token())
    assert cache.status()["entries"] == 5  # 10 old ones gone, two per fill
    assert cache.get(("size", "new4")) == 4


@pytest.mark.parametrize("bounds", [{"max_age_s": 0}, {"max_entries": 0}])
def test_a_cache_that_keeps_nothing_still_answers(bounds: dict[str, float]) -> None:
    cache = ContentCache(Generation.local(), **bounds)  # type: ignore[arg-type]
    cache.put(("size", "d"), 3, cache.token())
    assert cache.get(("size", "d")) is None
    assert cache.status()["entries"] == 0 and cache.status()["bytes"] == 0
