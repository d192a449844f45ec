"""``registry check``'s engine (``registry.storage.check``) over the
filesystem driver: it finds a corrupted blob (bytes flipped on disk), a
dangling link and a manifest missing a blob, and ``repair`` changes only
those, quarantining (not deleting) the corrupt blob."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest_twisted

from registry.digest import Digest, sha256_digest
from registry.storage import paths
from registry.storage.check import Checker, quarantine_path
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.test_gc import files, manifest_body, push_blob, put_manifest


async def healthy_store(tmp_path: Path) -> tuple[IStorageDriver, DataModel, dict[str, dict[str, object]]]:
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    model = DataModel.over(driver)
    blobs = {
        "a-config": await push_blob(model, "a", b'{"a": 1}'),
        "a-layer": await push_blob(model, "a", b"layer of a " * 300),
        "b-config": await push_blob(model, "b", b'{"b": 1}'),
        "b-layer": await push_blob(model, "b", b"layer of b " * 300),
    }
    await put_manifest(model, "a", manifest_body(blobs["a-config"], [blobs["a-layer"]]), tag="v1")
    await put_manifest(model, "b", manifest_body(blobs["b-config"], [blobs["b-layer"]]), tag="v1")
    return driver, model, blobs


def disk(tmp_path: Path, storage_path: str) -> Path:
    return Path(str(tmp_path / "store") + storage_path)


@pytest_twisted.ensureDeferred
async def test_a_healthy_store_has_no_problems_and_repair_changes_nothing(tmp_path: Path) -> None:
    driver, _, _ = await healthy_store(tmp_path)
    before = await files(driver)
    report = await Checker(driver, repair=True).run()
    assert report.problems == []
    assert report.blobs_checked == 6  # two configs, two layers, two manifests
    assert report.manifests == 2 and report.repositories == 2
    assert await files(driver) == before


@pytest_twisted.ensureDeferred
async def test_check_finds_corrupt_blob_dangling_link_and_manifest_missing_a_blob(tmp_path: Path) -> None:
    driver, model, blobs = await healthy_store(tmp_path)
    corrupt = Digest.parse(str(blobs["a-layer"]["digest"]))
    on_disk = disk(tmp_path, paths.blob_data(corrupt))
    data = bytearray(on_disk.read_bytes())
    data[10] ^= 0xFF
    on_disk.write_bytes(bytes(data))
    never_stored = sha256_digest(b"never stored")
    await driver.put_content(paths.layer_link("a", never_stored), str(never_stored).encode())
    lost = Digest.parse(str(blobs["b-layer"]["digest"]))
    await driver.delete(paths.blob_dir(lost))
    before = await files(driver)

    report = await Checker(driver).run()

    found = sorted((p.kind, p.where) for p in report.problems)
    assert found == sorted([
        ("corrupt-blob", paths.blob_data(corrupt)),
        ("dangling-link", paths.layer_link("a", never_stored)),
        ("dangling-link", paths.layer_link("b", lost)),
        ("manifest-blob-missing", paths.manifest_revision_link("b", sha256_digest(
            manifest_body(blobs["b-config"], [blobs["b-layer"]])))),
    ])
    assert all(not p.repaired for p in report.problems)
    assert await files(driver) == before  # without --repair nothing changes

    repaired = await Checker(driver, repair=True).run()

    after = await files(driver)
    # The corrupt blob is quarantined with its bytes, not deleted.
    assert after[quarantine_path(corrupt)] == bytes(data)
    assert paths.blob_data(corrupt) not in after
    # The dangling links are gone, and the link to the quarantined blob too.
    for name, d in (("a", never_stored), ("b", lost), ("a", corrupt)):
        assert paths.layer_link(name, d) not in after
    # Nothing else changed.
    changed = {paths.blob_data(corrupt), quarantine_path(corrupt)} | {
        paths.layer_link(n, d) for n, d in (("a", never_stored), ("b", lost), ("a", corrupt))
    }
    assert {p: v for p, v in before.items() if p not in changed} == {p: v for p, v in after.items() if p not in changed}
    kinds = {(p.kind, bool(p.repaired)) for p in repaired.problems}
    assert ("corrupt-blob", True) in kinds and ("dangling-link", True) in kinds
    # What cannot be repaired is still reported: both manifests miss a layer now.
    again = await Checker(driver, repair=True).run()
    assert sorted(p.kind for p in again.problems) == ["manifest-blob-missing", "manifest-blob-missing"]
    assert all(not p.repaired for p in again.problems)
    # A client pushing the layer again heals the repository.
    await push_blob(model, "a", b"layer of a " * 300)
    final = await Checker(driver).run()
    assert [p.kind for p in final.problems] == ["manifest-blob-missing"]  # b's layer is gone for good


@pytest_twisted.ensureDeferred
async def test_repair_relinks_a_stored_blob_a_manifest_needs(tmp_path: Path) -> None:
    driver, model, blobs = await healthy_store(tmp_path)
    d = Digest.parse(str(blobs["a-config"]["digest"]))
    await driver.delete(paths.layer_link("a", d).rsplit("/", 1)[0])
    report = await Checker(driver, repair=True).run()
    assert [(p.kind, p.repaired) for p in report.problems] == [("manifest-blob-missing", "layer link written again")]
    assert await model.blobs.repo_size("a", d) == blobs["a-config"]["size"]


@pytest_twisted.ensureDeferred
async def test_unreadable_tags_dangling_revisions_and_stale_uploads(tmp_path: Path) -> None:
    driver, model, _ = await healthy_store(tmp_path)
    await driver.put_content(paths.tag_current_link("a", "broken"), b"not a digest")
    await driver.put_content(paths.tag_current_link("a", "nowhere"), str(sha256_digest(b"x")).encode())
    ghost = sha256_digest(b"ghost manifest")
    await driver.put_content(paths.manifest_revision_link("a", ghost), str(ghost).encode())
    old = await model.uploads.create("a")
    await driver.put_content(
        paths.upload_startedat("a", old),
        (datetime.now(timezone.utc) - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode(),
    )
    await model.uploads.create("a")  # fresh: not stale
    report = await Checker(driver, repair=True).run()
    kinds = sorted((p.kind, bool(p.repaired)) for p in report.problems)
    assert kinds == [
        ("dangling-revision", True),
        ("dangling-tag", False),
        ("stale-upload", False),
        ("unreadable-tag", False),
    ]
    assert not await model.manifests.exists("a", ghost)
    doc = report.to_json()
    assert json.loads(json.dumps(doc))["problems"][0]["kind"]
    assert len(report.unrepaired) == 3


@pytest_twisted.ensureDeferred
async def test_repair_quarantines_over_a_stat_coarser_than_the_listing(tmp_path: Path) -> None:
    """S3's HEAD reports whole seconds, its listing milliseconds: a corrupt
    blob is still quarantined (its bytes are hashed again to tell it from a
    rewrite in the same second), and one rewritten with the right bytes is not."""
    from tests.test_gc import CoarseStatDriver

    driver, _, blobs = await healthy_store(tmp_path)
    coarse = CoarseStatDriver(driver)
    corrupt = Digest.parse(str(blobs["a-layer"]["digest"]))
    on_disk = disk(tmp_path, paths.blob_data(corrupt))
    data = bytearray(on_disk.read_bytes())
    data[10] ^= 0xFF
    on_disk.write_bytes(bytes(data))
    report = await Checker(coarse, repair=True).run()  # type: ignore[arg-type]
    assert ("corrupt-blob", f"moved to {quarantine_path(corrupt)}") in [(p.kind, p.repaired) for p in report.problems]
    assert (await files(driver))[quarantine_path(corrupt)] == bytes(data)

    # Corrupt on disk when hashed, rewritten whole (same size) before the repair looks again.
    other = Digest.parse(str(blobs["b-layer"]["digest"]))
    good = disk(tmp_path, paths.blob_data(other)).read_bytes()
    bad = bytearray(good)
    bad[0] ^= 0xFF
    disk(tmp_path, paths.blob_data(other)).write_bytes(bytes(bad))

    class Rewrites(CoarseStatDriver):
        async def stat(self, path: str) -> object:
            if path == paths.blob_data(other):
                disk(tmp_path, path).write_bytes(good)
            return await super().stat(path)

    report = await Checker(Rewrites(driver), repair=True).run()  # type: ignore[arg-type]
    assert [(p.kind, p.repaired) for p in report.problems if p.where == paths.blob_data(other)] == [("corrupt-blob", "")]
    assert disk(tmp_path, paths.blob_data(other)).read_bytes() == good  # healthy again, left in place
