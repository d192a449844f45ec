"""The tag cache (``registry.storage.tags.CachedTagStore``) over its own
generation (``Generation.companion("tags")``): a tag read costs no storage
read while nothing was retagged, and no process ever answers a tag as it was
before a retag or untag that has answered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred

from registry.digest import Digest, sha256_digest
from registry.storage.drivers.filesystem import FilesystemDriver
from registry.storage.errors import ManifestUnknown
from registry.storage.generation import Generation
from registry.storage.model import DataModel
from registry.storage.tags import CachedTagStore, TagStore
from registry.storage.wrapper import StorageDriverWrapper

ONE = sha256_digest(b"one")
TWO = sha256_digest(b"two")


class CountingTags:
    """A real ``TagStore`` whose resolves are counted, and can be held
    half-way (the storage read done, its answer not yet returned)."""

    def __init__(self, inner: TagStore) -> None:
        self.inner = inner
        self.resolves = 0
        self.hold: Deferred[None] | None = None

    async def resolve(self, name: str, tag: str) -> Digest:
        self.resolves += 1
        d = await self.inner.resolve(name, tag)
        if self.hold is not None:
            await self.hold
        return d

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.inner, attr)


def _driver(root: Path) -> StorageDriverWrapper:
    return StorageDriverWrapper(FilesystemDriver(str(root)))


@pytest_twisted.ensureDeferred
async def test_a_tag_is_read_from_storage_once_until_it_changes(tmp_path: Path) -> None:
    driver = _driver(tmp_path / "root")
    counting = CountingTags(TagStore(driver))
    tags = CachedTagStore(counting, Generation.local())  # type: ignore[arg-type]
    await tags.tag("repo", "v1", ONE)
    assert [await tags.resolve("repo", "v1") for _ in range(5)] == [ONE] * 5
    assert counting.resolves == 1 and tags.hits == 4
    await tags.tag("repo", "v1", TWO)  # a retag empties the cache
    assert await tags.resolve("repo", "v1") == TWO
    assert counting.resolves == 2
    await tags.untag("repo", "v1")
    with pytest.raises(ManifestUnknown):
        await tags.resolve("repo", "v1")
    with pytest.raises(ManifestUnknown):  # an unknown tag is not cached
        await tags.resolve("repo", "v1")
    assert counting.resolves == 4


@pytest_twisted.ensureDeferred
async def test_a_read_overtaken_by_a_retag_is_not_kept(tmp_path: Path) -> None:
    driver = _driver(tmp_path / "root")
    generation = Generation.local()
    counting = CountingTags(TagStore(driver))
    reader = CachedTagStore(counting, generation)  # type: ignore[arg-type]
    writer = CachedTagStore(TagStore(driver), generation)
    await writer.tag("repo", "v1", ONE)
    counting.hold = Deferred()
    pending = Deferred.fromCoroutine(reader.resolve("repo", "v1"))  # has read ONE, not answered yet
    await writer.tag("repo", "v1", TWO)
    hold, counting.hold = counting.hold, None
    hold.callback(None)
    assert await pending == ONE  # the answer of a read that began before the retag
    assert await reader.resolve("repo", "v1") == TWO  # but it was not kept
    assert counting.resolves == 2


@pytest_twisted.ensureDeferred
async def test_processes_on_one_host_see_each_others_tag_writes(tmp_path: Path) -> None:
    # Two "processes": two wrappers over one root, each with the host-wide
    # generation the factory gives a filesystem root, and the models built
    # as the registry builds them.
    a = DataModel.over(_driver(tmp_path / "root"))
    b = DataModel.over(_driver(tmp_path / "root"))
    assert isinstance(a.tags, CachedTagStore) and isinstance(b.tags, CachedTagStore)
    assert a.tags.generation.path is not None and a.tags.generation.path == b.tags.generation.path
    await a.tags.tag("repo", "v1", ONE)
    for _ in range(3):
        assert await b.tags.resolve("repo", "v1") == ONE
    await a.tags.tag("repo", "v1", TWO)
    assert await b.tags.resolve("repo", "v1") == TWO
    await a.tags.untag("repo", "v1")
    with pytest.raises(ManifestUnknown):
        await b.tags.resolve("repo", "v1")
    # Tag writes leave the content cache alone, and deletions the tag cache.
    assert a.tags.generation is not getattr(a.manifests, "cache").generation


def test_entries_are_bounded_and_age_out() -> None:
    clock = [0.0]
    generation = Generation.local()

    class Fixed:
        async def resolve(self, name: str, tag: str) -> Digest:
            return ONE

    tags = CachedTagStore(Fixed(), generation, max_entries=3, max_age_s=60, now=lambda: clock[0])  # type: ignore[arg-type]

    def resolve(tag: str) -> Digest:
        result: list[Digest] = []
        Deferred.fromCoroutine(tags.resolve("repo", tag)).addCallback(result.append)
        return result[0]

    for tag in ("a", "b", "c", "d"):
        resolve(tag)
    assert tags.status()["entries"] == 3
    resolve("d")
    assert tags.hits == 1
    clock[0] = 61
    resolve("d")
    assert tags.hits == 1 and tags.misses == 5


def test_companions_share_scope_not_counter(tmp_path: Path) -> None:
    g = Generation.shared("filesystem:/x", str(tmp_path))
    tags = g.companion("tags")
    assert tags is g.companion("tags") and tags.path == f"{g.path}-tags"
    before = g.current()
    tags.bump()
    assert g.current() == before
    assert not Generation.shared("x", str(tmp_path / "missing")).companion("tags").available
    local = Generation.local().companion("tags")
    assert local.path is None and local.current() == local.current()
    g.close()
