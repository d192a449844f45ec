"""The data model's injection points: every store implements its interface,
``DataModel.over`` wires one set of parts through all stores, the
process-local upload lock excludes and forgets, and a wrapper handed to the
facade is what a resource really uses (a blob HEAD through real HTTP)."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.components import proxyForInterface
from zope.interface.verify import verifyObject

from registry.digest import Digest, sha256_digest
from registry.http import RegistrySite
from registry.resources.context import Context
from registry.resources.router import RegistryRoot, build_routes
from registry.storage.blobs import BlobDescriptors, BlobStore
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver
from registry.storage.errors import BlobUnknown, ManifestUnknown, ModelError
from registry.storage.factory import create_driver
from registry.storage.interfaces import (
    IBlobDescriptors,
    IBlobStore,
    ICatalog,
    IManifestStore,
    ITagStore,
    IUploadAppender,
    IUploadLock,
    IUploadStore,
)
from registry.storage.locks import ProcessLocks
from registry.storage.manifests import ManifestStore
from registry.storage.model import DataModel
from registry.storage.tags import TagStore
from registry.storage.uploads import UploadStore


class CountingDescriptors(proxyForInterface(IBlobDescriptors, "inner")):  # type: ignore[misc]
    """A wrapper around blob descriptors that counts what it is asked, the
    shape a cache takes (it delegates everything it does not answer)."""

    def __init__(self, inner: IBlobDescriptors) -> None:
        self.inner = inner
        self.calls: Counter[tuple[str, str]] = Counter()

    async def size(self, d: Digest) -> int | None:
        self.calls["size", str(d)] += 1
        return await self.inner.size(d)

    async def is_linked(self, name: str, d: Digest) -> bool:
        self.calls["is_linked", str(d)] += 1
        return await self.inner.is_linked(name, d)

    async def link(self, name: str, d: Digest) -> None:
        self.calls["link", str(d)] += 1
        await self.inner.link(name, d)

    async def unlink(self, name: str, d: Digest) -> None:
        self.calls["unlink", str(d)] += 1
        await self.inner.unlink(name, d)


class CountingTags(proxyForInterface(ITagStore, "inner")):  # type: ignore[misc]
    def __init__(self, inner: ITagStore) -> None:
        self.inner = inner
        self.resolved: list[str] = []

    async def resolve(self, name: str, tag: str) -> Digest:
        self.resolved.append(tag)
        return await self.inner.resolve(name, tag)


class CountingLock(proxyForInterface(IUploadLock, "inner")):  # type: ignore[misc]
    def __init__(self, inner: IUploadLock) -> None:
        self.inner = inner
        self.acquired: list[tuple[str, str]] = []

    async def acquire(self, name: str, upload_id: str) -> Any:
        self.acquired.append((name, upload_id))
        return await self.inner.acquire(name, upload_id)


# -- every implementation provides its interface ------------------------------


@pytest_twisted.ensureDeferred
async def test_implementations_provide_their_interfaces() -> None:
    driver = create_driver("inmemory", {})
    descriptors = BlobDescriptors(driver)
    blobs = BlobStore(driver, descriptors)
    tags = TagStore(driver)
    uploads = UploadStore(driver, blobs)
    assert verifyObject(IBlobDescriptors, descriptors)
    assert verifyObject(IBlobStore, blobs)
    assert verifyObject(ITagStore, tags)
    assert verifyObject(IManifestStore, ManifestStore(driver, blobs, tags))
    assert verifyObject(ICatalog, Catalog(driver))
    assert verifyObject(IUploadStore, uploads)
    assert verifyObject(IUploadLock, ProcessLocks())
    appender = await uploads.open_appender("v", await uploads.create("v"))
    try:
        assert verifyObject(IUploadAppender, appender)
    finally:
        await appender.fail()


def test_data_model_over_a_driver_shares_its_parts() -> None:
    driver = create_driver("inmemory", {})
    descriptors = BlobDescriptors(driver)
    tags = TagStore(driver)
    lock = ProcessLocks()
    model = DataModel.over(driver, descriptors=descriptors, tags=tags, lock=lock)
    assert model.blobs.descriptors is descriptors
    assert model.tags is tags
    assert isinstance(model.manifests, ManifestStore) and model.manifests.tags is tags
    assert model.manifests.blobs is model.blobs
    assert isinstance(model.uploads, UploadStore)
    assert model.uploads.blobs is model.blobs and model.uploads.lock is lock
    defaults = DataModel.over(driver)
    assert verifyObject(IBlobDescriptors, defaults.blobs.descriptors)
    assert isinstance(defaults.uploads, UploadStore) and verifyObject(IUploadLock, defaults.uploads.lock)


def test_model_errors_share_one_base_apart_from_storage_errors() -> None:
    from registry.storage.driver import StorageError

    assert issubclass(BlobUnknown, ModelError) and issubclass(ManifestUnknown, ModelError)
    assert not issubclass(ModelError, StorageError) and not issubclass(StorageError, ModelError)


# -- the process-local upload lock ------------------------------------------


@pytest_twisted.ensureDeferred
async def test_process_locks_exclude_in_order_and_forget_idle_uploads() -> None:
    locks = ProcessLocks()
    release_a = await locks.acquire("r", "u1")
    other = await locks.acquire("r", "u2")  # another upload is not blocked
    order: list[str] = []

    async def waiter(label: str) -> None:
        release = await locks.acquire("r", "u1")
        order.append(label)
        await release()

    w1 = Deferred.fromCoroutine(waiter("first"))
    w2 = Deferred.fromCoroutine(waiter("second"))
    assert order == [] and locks.held() == 2
    await release_a()
    await w1
    await w2
    assert order == ["first", "second"]
    assert locks.held() == 1  # u1 is forgotten once nobody holds or waits
    await other()
    assert locks.held() == 0


@pytest_twisted.ensureDeferred
async def test_upload_requests_go_through_the_injected_lock() -> None:
    driver = create_driver("inmemory", {})
    lock = CountingLock(ProcessLocks())
    model = DataModel.over(driver, lock=lock)
    upload_id = await model.uploads.create("r")
    appender = await model.uploads.open_appender("r", upload_id)
    await appender.write(b"hello")
    assert await appender.finish() == 5
    assert await model.uploads.status("r", upload_id) == 5
    await model.uploads.commit("r", upload_id, sha256_digest(b"hello"))
    # create, open_appender, status, commit: each under the injected lock.
    assert lock.acquired == [("r", upload_id)] * 4
    assert lock.inner.held() == 0


# -- a wrapper injected through the facade is what resources use -------------


async def _serve(model: DataModel) -> AsyncIterator[str]:
    ctx = Context(model, delete_enabled=True)
    root = RegistryRoot(build_routes(ctx), ctx.extra_headers)
    port = reactor.listenTCP(0, RegistrySite(root), interface="127.0.0.1")
    try:
        yield f"http://127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()


@pytest.fixture
def driver() -> IStorageDriver:
    return create_driver("inmemory", {})


@pytest_twisted.async_yield_fixture
async def counted(driver: IStorageDriver) -> AsyncIterator[tuple[str, CountingDescriptors, CountingTags]]:
    descriptors = CountingDescriptors(BlobDescriptors(driver))
    tags = CountingTags(TagStore(driver))
    async for url in _serve(DataModel.over(driver, descriptors=descriptors, tags=tags)):
        yield url, descriptors, tags


@pytest_twisted.ensureDeferred
async def test_blob_head_over_http_asks_the_injected_descriptors(
    counted: tuple[str, CountingDescriptors, CountingTags],
) -> None:
    url, descriptors, _ = counted
    data = b"layer bytes"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = await treq.post(f"{url}/v2/counted/blobs/uploads/?digest={digest}", data=data)
    assert r.code == 201, await r.text()
    assert descriptors.calls["link", digest] == 1  # the upload's commit linked through the wrapper
    before = descriptors.calls.copy()
    r = await treq.head(f"{url}/v2/counted/blobs/{digest}")
    assert r.code == 200 and r.headers.getRawHeaders("content-length") == [str(len(data))]
    asked = descriptors.calls - before
    assert asked == Counter({("is_linked", digest): 1, ("size", digest): 1})
    # A blob the wrapper says nothing of is asked about too, and is unknown.
    other = "sha256:" + "0" * 64
    r = await treq.head(f"{url}/v2/counted/blobs/{other}")
    assert r.code == 404 and descriptors.calls["is_linked", other] == 1
    r = await treq.delete(f"{url}/v2/counted/blobs/{digest}")
    assert r.code == 202 and descriptors.calls["unlink", digest] == 1
    assert (await treq.head(f"{url}/v2/counted/blobs/{digest}")).code == 404


@pytest_twisted.ensureDeferred
async def test_manifest_push_and_pull_by_tag_use_the_injected_stores(
    counted: tuple[str, CountingDescriptors, CountingTags],
) -> None:
    import json

    url, descriptors, tags = counted
    config = b"{}"
    config_digest = str(sha256_digest(config))
    r = await treq.post(f"{url}/v2/m/blobs/uploads/?digest={config_digest}", data=config)
    assert r.code == 201, await r.text()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": 2},
            "layers": [],
        }
    ).encode()
    before = descriptors.calls.copy()
    r = await treq.put(
        f"{url}/v2/m/manifests/latest",
        data=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.code == 201, await r.text()
    # The reference check asked the wrapper about the config blob.
    assert (descriptors.calls - before)["is_linked", config_digest] == 1
    r = await treq.get(f"{url}/v2/m/manifests/latest", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert r.code == 200 and await r.content() == manifest
    assert tags.resolved == ["latest"]


@pytest_twisted.ensureDeferred
async def test_process_locks_cancelled_wait_leaves_the_queue() -> None:
    locks = ProcessLocks()
    release = await locks.acquire("r", "u")
    waiting = Deferred.fromCoroutine(locks.acquire("r", "u"))
    waiting.cancel()
    with pytest.raises(CancelledError):
        await waiting
    await release()
    assert locks.held() == 0
    again = await locks.acquire("r", "u")  # nobody stale holds it
    await again()


async def _append(uploads: UploadStore, name: str, upload_id: str, data: bytes) -> int:
    appender = await uploads.open_appender(name, upload_id)
    await appender.write(data)
    return await appender.finish()


@pytest.mark.parametrize("kind", ["inmemory", "filesystem"])
@pytest_twisted.ensureDeferred
async def test_an_upload_continued_by_another_instance_is_not_resumed_from_a_stale_memory(kind: str, tmp_path: Any) -> None:
    """Each store remembers where its last request left an upload; a store
    that served the upload earlier must notice that another instance
    appended since (and the hash it remembers is stale), whichever request
    comes next: an append or the commit."""
    driver = create_driver(kind, {"rootdirectory": str(tmp_path)} if kind == "filesystem" else {})
    a, b = DataModel.over(driver), DataModel.over(driver)
    for finish_on_a in (False, True):
        upload_id = await a.uploads.create("r")
        assert await _append(a.uploads, "r", upload_id, b"first ") == 6
        assert await _append(b.uploads, "r", upload_id, b"second ") == 13  # another instance
        data = b"first second "
        if finish_on_a:
            assert await _append(a.uploads, "r", upload_id, b"third") == 18
            data += b"third"
        # ``a`` remembers offset 6 (or 18, now current): the commit must hash what is really there.
        d = sha256_digest(data)
        assert await a.uploads.commit("r", upload_id, d) == len(data)
        assert await a.blobs.get_content(d) == data


@pytest_twisted.ensureDeferred
async def test_an_empty_upload_created_here_commits_without_any_append() -> None:
    model = DataModel.over(create_driver("inmemory", {}))
    upload_id = await model.uploads.create("r")
    d = sha256_digest(b"")
    assert await model.uploads.commit("r", upload_id, d) == 0
    assert await model.blobs.get_content(d) == b""
