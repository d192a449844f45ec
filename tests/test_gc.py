"""Garbage collection over the data model and a real driver: what is kept,
what goes, the grace period, ``--delete-untagged``, dry runs, and the sweep
fence a manifest PUT or a layer link waits on (``registry.storage.fence``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from registry.digest import Digest, sha256_digest
from registry.manifest_types import OCI_INDEX, OCI_MANIFEST, parse_manifest
from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown, ManifestBlobUnknown
from registry.storage.factory import create_driver
from registry.storage.fence import FENCE_DIR, Fence
from registry.storage.gc import GarbageCollector, GCError
from registry.storage.model import DataModel

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def make_driver(kind: str, tmp_path: Path) -> IStorageDriver:
    return create_driver(kind, {"rootdirectory": str(tmp_path / "store")} if kind == "filesystem" else {})


async def push_blob(model: DataModel, name: str, data: bytes) -> dict[str, Any]:
    d = sha256_digest(data)
    await model.blobs.put_content(d, data)
    await model.blobs.descriptors.link(name, d)
    return {"digest": str(d), "size": len(data)}


def manifest_body(config: dict[str, Any], layers: list[dict[str, Any]], **extra: Any) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, **config},
        "layers": [{"mediaType": OCI_LAYER, **layer} for layer in layers],
        **extra,
    }
    return json.dumps(doc).encode()


async def put_manifest(model: DataModel, name: str, body: bytes, tag: str | None = None) -> Digest:
    d = sha256_digest(body)
    await model.manifests.put(name, body, parse_manifest(body, None), d, tag)
    return d


async def push_image(model: DataModel, name: str, seed: str, tag: str | None = None, layers: int = 2) -> Digest:
    config = await push_blob(model, name, json.dumps({"seed": seed}).encode())
    blobs = [await push_blob(model, name, f"{seed} layer {i} ".encode() * 50) for i in range(layers)]
    return await put_manifest(model, name, manifest_body(config, blobs), tag)


async def blob_digests(driver: IStorageDriver) -> set[str]:
    try:
        infos = await driver.walk(paths.BLOBS)
    except PathNotFoundError:
        return set()
    return {"sha256:" + i.path.split("/")[-2] for i in infos if i.path.endswith("/data")}


async def pulls_completely(model: DataModel, name: str, tag: str) -> None:
    """The tag resolves and every manifest and blob it reaches is readable
    and matches its digest."""
    pending = [await model.tags.resolve(name, tag)]
    while pending:
        d = pending.pop()
        body = await model.manifests.get(name, d)
        assert sha256_digest(body) == d
        manifest = parse_manifest(body, None)
        pending.extend(c.digest for c in manifest.children)
        for desc in manifest.blobs:
            assert await model.blobs.repo_size(name, desc.digest) == desc.size
            assert sha256_digest(await model.blobs.get_content(desc.digest)) == desc.digest


async def settle() -> None:
    """Let the storage clock move past what was just written (file mtimes
    are coarse), so a zero grace period makes it a candidate."""
    await deferLater(reactor, 0.05, lambda: None)


async def files(driver: IStorageDriver) -> dict[str, bytes]:
    out = {}
    for info in await driver.walk("/"):
        if not info.is_dir:
            out[info.path] = await driver.get_content(info.path)
    return out


@pytest.fixture(params=["inmemory", "filesystem"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.ensureDeferred
async def test_collects_unreferenced_blobs_and_links_and_keeps_every_tagged_image(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    await push_image(model, "keep/app", "a", tag="v1")
    shared = await push_blob(model, "keep/app", b"shared layer " * 100)
    body = manifest_body(await push_blob(model, "keep/app", b'{"c": 2}'), [shared])
    await put_manifest(model, "keep/app", body, tag="v2")
    orphan = await push_blob(model, "keep/app", b"orphan " * 1000)
    gone = await push_image(model, "gone", "b")
    gone_body = await model.manifests.get("gone", gone)
    gone_manifest = parse_manifest(gone_body, None)
    await model.manifests.delete("gone", gone)
    before = await blob_digests(driver)
    await settle()

    report = await GarbageCollector(driver, grace_s=0).run()

    after = await blob_digests(driver)
    expected_gone = {orphan["digest"], str(gone)} | {str(b.digest) for b in gone_manifest.blobs}
    assert before - after == expected_gone
    assert {d for d, _ in report.blobs} == expected_gone
    assert report.bytes_freed == 7 * 1000 + sum(b.size for b in gone_manifest.blobs) + len(gone_body)
    assert not await model.blobs.descriptors.is_linked("keep/app", Digest.parse(orphan["digest"]))
    assert ("keep/app", orphan["digest"]) in report.links
    for tag in ("v1", "v2"):
        await pulls_completely(model, "keep/app", tag)
    assert not [p for p in (await files(driver)) if "/_gc/" in p]  # fences and clock probes are gone
    # A second run finds nothing left.
    again = await GarbageCollector(driver, grace_s=0).run()
    assert again.blobs == [] and again.links == []


@pytest_twisted.ensureDeferred
async def test_bytes_freed_is_the_size_of_the_removed_blobs() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    a = await push_blob(model, "r", b"a" * 1000)
    b = await push_blob(model, "r", b"b" * 234)
    await settle()
    report = await GarbageCollector(driver, grace_s=0).run()
    assert sorted(report.blobs) == sorted([(a["digest"], 1000), (b["digest"], 234)])
    assert report.bytes_freed == 1234
    assert report.to_json()["bytes_freed"] == 1234
    assert "2 blobs" in report.summary() and "1234 bytes" in report.summary()


@pytest_twisted.ensureDeferred
async def test_grace_period_keeps_young_objects(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    await push_blob(model, "r", b"young " * 100)
    before = await files(driver)
    report = await GarbageCollector(driver).run()  # default grace: 1 h
    assert report.blobs == [] and report.links == []
    assert await files(driver) == before


@pytest_twisted.ensureDeferred
async def test_grace_period_on_disk_ages(tmp_path: Path) -> None:
    """Objects older than the grace period go, younger ones stay."""
    import os

    driver = make_driver("filesystem", tmp_path)
    model = DataModel.over(driver)
    old = await push_blob(model, "r", b"old " * 100)
    young = await push_blob(model, "r", b"young " * 100)
    two_hours_ago = time.time() - 7200
    for rel in (
        paths.blob_data(Digest.parse(old["digest"])),
        paths.layer_link("r", Digest.parse(old["digest"])),
    ):
        os.utime(str(tmp_path / "store") + rel, (two_hours_ago, two_hours_ago))
    report = await GarbageCollector(driver, grace_s=3600).run()
    assert [d for d, _ in report.blobs] == [old["digest"]]
    assert await blob_digests(driver) == {young["digest"]}


@pytest_twisted.ensureDeferred
async def test_dry_run_changes_nothing_and_reports_what_a_real_run_removes(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    await push_image(model, "app", "a", tag="v1")
    untagged = await push_image(model, "app", "b")
    await push_blob(model, "app", b"orphan" * 10)
    await settle()
    before = await files(driver)
    dry = await GarbageCollector(driver, grace_s=0, delete_untagged=True, dry_run=True).run()
    assert await files(driver) == before
    assert dry.dry_run and ("app", str(untagged)) in dry.manifests
    real = await GarbageCollector(driver, grace_s=0, delete_untagged=True).run()
    assert sorted(dry.blobs) == sorted(real.blobs)
    assert sorted(dry.manifests) == sorted(real.manifests)
    assert sorted(dry.links) == sorted(real.links)
    assert len(real.blobs) == 5  # b's manifest, config and two layers, and the orphan
    await pulls_completely(model, "app", "v1")


@pytest_twisted.ensureDeferred
async def test_delete_untagged_keeps_index_children_and_referrers_of_survivors(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    child1 = await push_image(model, "multi", "c1")
    child2 = await push_image(model, "multi", "c2")
    children = []
    for d in (child1, child2):
        body = await model.manifests.get("multi", d)
        children.append({"mediaType": OCI_MANIFEST, "digest": str(d), "size": len(body),
                         "platform": {"architecture": str(d)[-4:], "os": "linux"}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
    index_d = await put_manifest(model, "multi", index, tag="latest")
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(sha256_digest(b"{}")), "size": 2}
    sig_body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.sig",
        "config": empty, "layers": [{**empty, "mediaType": "application/example.sig"}],
        "subject": {"mediaType": OCI_INDEX, "digest": str(index_d), "size": len(index)},
    }).encode()
    sig = await put_manifest(model, "multi", sig_body)
    untagged = await push_image(model, "multi", "lonely")
    lonely_body = await model.manifests.get("multi", untagged)
    orphan_sig_body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/example.sig",
        "config": empty, "layers": [{**empty, "mediaType": "application/example.sig"}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": str(untagged), "size": len(lonely_body)},
        "annotations": {"x": "orphan"},
    }).encode()
    orphan_sig = await put_manifest(model, "multi", orphan_sig_body)
    await settle()

    report = await GarbageCollector(driver, grace_s=0, delete_untagged=True).run()

    assert sorted(report.manifests) == sorted([("multi", str(untagged)), ("multi", str(orphan_sig))])
    for d in (child1, child2, index_d, sig):
        assert await model.manifests.exists("multi", d)
    assert not await model.manifests.exists("multi", untagged)
    assert [r["digest"] for r in await model.manifests.referrers("multi", index_d)] == [str(sig)]
    assert await model.manifests.referrers("multi", untagged) == []
    await pulls_completely(model, "multi", "latest")
    for c in (child1, child2):
        for desc in parse_manifest(await model.manifests.get("multi", c), None).blobs:
            assert await model.blobs.repo_size("multi", desc.digest) == desc.size


@pytest_twisted.ensureDeferred
async def test_gc_refuses_to_collect_with_an_unparseable_manifest() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    await push_blob(model, "r", b"orphan" * 10)
    bad = b"not a manifest"
    d = sha256_digest(bad)
    await driver.put_content(paths.blob_data(d), bad)
    await driver.put_content(paths.manifest_revision_link("r", d), str(d).encode())
    await settle()
    before = await files(driver)
    with pytest.raises(GCError, match=str(d)):
        await GarbageCollector(driver, grace_s=0).run()
    assert {p: v for p, v in (await files(driver)).items() if "/_gc/" not in p} == before


# --- the fence: writers racing a sweep -----------------------------------------


class HookedDriver:
    """Delegates to a driver; runs ``hook`` once, just before the first fence
    is written (the moment between a collector's mark and its sweep)."""

    def __init__(self, inner: IStorageDriver, hook: Any) -> None:
        self._inner = inner
        self._hook = hook

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    async def put_content(self, path: str, data: bytes, durable: bool = True) -> None:
        if path.startswith(FENCE_DIR) and self._hook is not None:
            hook, self._hook = self._hook, None
            await hook()
        await self._inner.put_content(path, data, durable)


@pytest_twisted.ensureDeferred
async def test_a_push_landing_between_mark_and_sweep_keeps_its_blobs(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    config = await push_blob(model, "r", b'{"late": 1}')
    layer = await push_blob(model, "r", b"late layer " * 100)
    other = await push_blob(model, "r2", b"other " * 10)
    await settle()
    pushed: list[Digest] = []

    async def push() -> None:
        pushed.append(await put_manifest(model, "r", manifest_body(config, [layer]), tag="late"))
        # and a mount of another old blob into a new repository
        await model.blobs.descriptors.link("brand-new", Digest.parse(other["digest"]))

    report = await GarbageCollector(HookedDriver(driver, push), grace_s=0).run()  # type: ignore[arg-type]
    assert pushed
    assert report.blobs == []
    await pulls_completely(model, "r", "late")
    assert await model.blobs.repo_size("brand-new", Digest.parse(other["digest"])) == other["size"]


@pytest_twisted.ensureDeferred
async def test_manifest_put_racing_a_blob_deletion_is_refused_and_undone() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    config = await push_blob(model, "r", b'{"c": 1}')
    layer = await push_blob(model, "r", b"doomed " * 100)
    layer_d = Digest.parse(layer["digest"])
    fence = Fence(driver, "test", [layer_d])
    await fence.raise_()
    body = manifest_body(config, [layer])
    put = defer.ensureDeferred(put_manifest(model, "r", body, tag="t"))
    await deferLater(reactor, 0.1, lambda: None)
    assert not put.called  # it waits for the sweep
    await driver.delete(paths.blob_dir(layer_d))  # what the sweep does under its fence
    await fence.lower()
    with pytest.raises(ManifestBlobUnknown) as info:
        await put
    assert info.value.missing == [layer_d]
    assert not await model.manifests.exists("r", sha256_digest(body))
    assert await model.tags.all("r") in (None, [])


@pytest_twisted.ensureDeferred
async def test_manifest_put_restores_a_link_swept_while_it_waited() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    config = await push_blob(model, "r", b'{"c": 1}')
    layer = await push_blob(model, "r", b"layer " * 100)
    layer_d = Digest.parse(layer["digest"])
    fence = Fence(driver, "test", [layer_d])
    await fence.raise_()
    put = defer.ensureDeferred(put_manifest(model, "r", manifest_body(config, [layer]), tag="t"))
    await deferLater(reactor, 0.1, lambda: None)
    assert not put.called
    await driver.delete(paths.layer_link("r", layer_d).rsplit("/", 1)[0])  # only the link went
    await fence.lower()
    await put
    await pulls_completely(model, "r", "t")


@pytest_twisted.ensureDeferred
async def test_an_expired_fence_blocks_nobody() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    layer = await push_blob(model, "r", b"layer")
    fence = Fence(driver, "crashed", [Digest.parse(layer["digest"])], now=lambda: time.time() - 3600)
    await fence.raise_()
    await model.blobs.descriptors.link("r2", Digest.parse(layer["digest"]))  # returns at once
    assert await model.blobs.descriptors.is_linked("r2", Digest.parse(layer["digest"]))


@pytest_twisted.ensureDeferred
async def test_link_to_a_blob_swept_meanwhile_fails_and_leaves_no_link() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    layer = await push_blob(model, "r", b"layer")
    d = Digest.parse(layer["digest"])
    fence = Fence(driver, "test", [d])
    await fence.raise_()
    link = defer.ensureDeferred(model.blobs.descriptors.link("r2", d))
    await deferLater(reactor, 0.05, lambda: None)
    assert not link.called
    await driver.delete(paths.blob_dir(d))
    await fence.lower()
    with pytest.raises(BlobUnknown):
        await link
    assert not await model.blobs.descriptors.is_linked("r2", d)


@pytest_twisted.ensureDeferred
async def test_manifest_put_rewrites_its_revision_removed_by_delete_untagged_meanwhile() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    config = await push_blob(model, "r", b'{"c": 1}')
    layer = await push_blob(model, "r", b"layer " * 100)
    body = manifest_body(config, [layer])
    d = await put_manifest(model, "r", body)  # untagged
    fence = Fence(driver, "test", [d])
    await fence.raise_()
    put = defer.ensureDeferred(put_manifest(model, "r", body, tag="now-tagged"))
    await deferLater(reactor, 0.1, lambda: None)
    assert not put.called
    await driver.delete(paths.manifest_revision_link("r", d).rsplit("/", 1)[0])  # delete-untagged's deletion
    await fence.lower()
    await put
    await pulls_completely(model, "r", "now-tagged")


@pytest_twisted.ensureDeferred
async def test_delete_untagged_keeps_a_manifest_tagged_between_mark_and_sweep() -> None:
    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    config = await push_blob(model, "r", b'{"c": 1}')
    layer = await push_blob(model, "r", b"layer " * 100)
    body = manifest_body(config, [layer])
    d = await put_manifest(model, "r", body)
    await settle()

    async def tag_it() -> None:
        await put_manifest(model, "r", body, tag="late")

    report = await GarbageCollector(HookedDriver(driver, tag_it), grace_s=0, delete_untagged=True).run()  # type: ignore[arg-type]
    assert report.manifests == [] and report.blobs == []
    assert await model.tags.resolve("r", "late") == d
    await pulls_completely(model, "r", "late")


@pytest_twisted.ensureDeferred
async def test_upload_commit_stores_its_own_bytes_when_the_stored_copy_is_swept(kind: str, tmp_path: Path) -> None:
    driver = make_driver(kind, tmp_path)
    model = DataModel.over(driver)
    data = b"same bytes " * 100
    stored = await push_blob(model, "old", data)
    d = Digest.parse(stored["digest"])
    upload = await model.uploads.create("new")
    appender = await model.uploads.open_appender("new", upload)
    await appender.write(data)
    await appender.finish()
    fence = Fence(driver, "test", [d])
    await fence.raise_()
    commit = defer.ensureDeferred(model.uploads.commit("new", upload, d))
    await deferLater(reactor, 0.1, lambda: None)
    assert not commit.called  # linking waits for the sweep
    await driver.delete(paths.blob_dir(d))  # the sweep removes the stored copy
    await fence.lower()
    assert await commit == len(data)
    assert await model.blobs.repo_size("new", d) == len(data)
    assert await model.blobs.get_content(d) == data


# --- drivers whose stat is coarser than their listing (S3) ---------------------


class CoarseStatDriver:
    """Delegates to a driver; ``stat`` reports whole seconds, as S3's HEAD
    does (``Last-Modified``) while its listing has milliseconds."""

    def __init__(self, inner: IStorageDriver) -> None:
        self._inner = inner

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)

    async def stat(self, path: str) -> Any:
        from dataclasses import replace
        import math

        info = await self._inner.stat(path)
        return replace(info, mod_time=float(math.floor(info.mod_time)))


@pytest_twisted.ensureDeferred
async def test_a_stat_coarser_than_the_listing_still_collects() -> None:
    """The re-check before deleting compares a listed time with a stat time:
    whole seconds against milliseconds must not read as "rewritten"."""
    import math

    driver = create_driver("inmemory", {})
    model = DataModel.over(driver)
    await push_image(model, "keep", "k", tag="v1")
    orphan = await push_blob(model, "r", b"orphan " * 100)
    written = (await driver.stat(paths.blob_data(Digest.parse(orphan["digest"])))).mod_time
    # Wait into the next second, so the orphan's second lies before the cutoff's.
    await deferLater(reactor, math.floor(written) + 1.05 - time.time(), lambda: None)
    report = await GarbageCollector(CoarseStatDriver(driver), grace_s=0).run()  # type: ignore[arg-type]
    assert [d for d, _ in report.blobs] == [orphan["digest"]]
    assert report.links == [("r", orphan["digest"])] and report.kept_in_flight == 0
    await pulls_completely(model, "keep", "v1")


@pytest_twisted.ensureDeferred
async def test_a_coarse_stat_in_the_cutoffs_second_keeps_the_object() -> None:
    """A whole-second stat time cannot tell the listed object from one
    written again after the run started in the same second: a candidate
    listed in the cutoff's own second is kept. (With a coarse storage clock
    the cutoff is a whole second and this cannot happen; a process clock
    behind the storage's can put the cutoff inside a second, as here.)"""
    import math

    driver = create_driver("inmemory", {})
    if time.time() % 1 > 0.8:  # leave room in this second for a cutoff after the blob
        await deferLater(reactor, 0.25, lambda: None)
    data = b"blob data, its link not written yet " * 10
    d = sha256_digest(data)
    await driver.put_content(paths.blob_data(d), data)
    written = (await driver.stat(paths.blob_data(d))).mod_time
    start = written + (math.floor(written) + 1 - written) / 2  # after it, in its second
    await deferLater(reactor, math.floor(written) + 1.05 - time.time(), lambda: None)  # the storage is a second on
    report = await GarbageCollector(CoarseStatDriver(driver), grace_s=0, now=lambda: start).run()  # type: ignore[arg-type]
    assert report.blobs == [] and report.kept_in_flight == 1
    assert await driver.get_content(paths.blob_data(d)) == data
    # On a driver whose stat is as fine as its listing the same run collects it.
    report = await GarbageCollector(driver, grace_s=0, now=lambda: start).run()
    assert report.blobs == [(str(d), len(data))]
