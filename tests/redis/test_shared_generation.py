"""The deletion generation shared through Redis
(``registry.storage.generation.SharedGeneration``) against a real
``redis-server``: two "hosts" (generations over different host directories,
so the host counter cannot carry the news), each with its own client and
content cache."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.app import make_application
from registry.config import load_config
from registry.redis import RedisClient, RedisSettings
from registry.storage.cache import ContentCache
from registry.storage.generation import LEASE_S, REDIS_KEY, Generation, SharedGeneration
from tests.redis.server import RedisServer
from tests.redis.test_app import config_for, model_of

IDENTITY = "filesystem:{\"rootdirectory\": \"/one/storage\"}"


class CountingClient(RedisClient):
    """A real client that counts the commands it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    async def execute(self, *args: Any) -> Any:
        self.sent.append(str(args[0]))
        return await super().execute(*args)


class Host:
    def __init__(self, tmp_path: Path, name: str, server: RedisServer) -> None:
        self.client = CountingClient(
            reactor, RedisSettings("127.0.0.1", server.port, dial_timeout=1, read_timeout=1, write_timeout=1)
        )
        (tmp_path / name).mkdir()
        self.generation = Generation.shared(IDENTITY, str(tmp_path / name))
        assert self.generation.available
        self.remote = SharedGeneration(self.client, reactor)
        self.generation.attach(self.remote)
        self.cache = ContentCache(self.generation)

    def close(self) -> None:
        self.remote.close()
        self.generation.close()
        self.client.close()


def sleep(s: float) -> Any:
    return deferLater(reactor, s, lambda: None)


async def warm(host: Host, key: tuple[Any, ...], value: Any) -> None:
    """Fill ``key`` as a reader does, once the host holds a lease."""
    for _ in range(100):
        token = host.cache.token()
        host.cache.put(key, value, token)
        if host.cache.get(key) == value:
            return
        await sleep(0.005)
    raise AssertionError("the cache never held a lease")


@pytest_twisted.async_yield_fixture
async def hosts(tmp_path: Path, redis_server: RedisServer) -> AsyncIterator[tuple[Host, Host]]:
    a, b = Host(tmp_path, "a", redis_server), Host(tmp_path, "b", redis_server)
    yield a, b
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_reads_cost_no_round_trip_while_the_lease_holds(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    key = ("manifest", "sha256:" + "1" * 64)
    await warm(a, key, b"body")
    before = len(a.client.sent)
    started = time.monotonic()
    hits = 0
    while time.monotonic() - started < LEASE_S * 4:
        for _ in range(1000):
            hits += a.cache.get(key) == b"body"
        await sleep(0)  # let a background renewal answer
    sent = a.client.sent[before:]
    # Thousands of reads over four leases: a GET every half lease or so,
    # never one per read, and the cache answered (nearly) all of them.
    assert set(sent) <= {"GET"}
    assert 1 <= len(sent) <= 16, len(sent)
    assert hits > 0.99 * (hits + a.cache.misses - 1), (hits, a.cache.misses)


@pytest_twisted.ensureDeferred
async def test_a_deletion_elsewhere_empties_the_cache_before_it_answers(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    key = ("manifest", "sha256:" + "2" * 64)
    await warm(a, key, b"body")
    started = time.monotonic()
    b.generation.bump()
    waiting = b.generation.settled()
    assert waiting is not None
    # The INCRBY has landed but a's lease still holds: without the wait, a
    # would still answer from its cache (what the wait is for).
    while b.remote._bumps:
        await sleep(0.001)
    held = a.remote.status()["lease"]
    early = a.cache.get(key)
    await waiting
    waited = time.monotonic() - started
    # Once the deleter may answer, a serves nothing cached, with no await.
    assert a.cache.get(key) is None
    assert waited >= LEASE_S
    if held:  # (unless a slow machine let the lease run out already)
        assert early == b"body"
    # b's own process and host never needed Redis for that: its counter moved.
    assert b.cache.get(key) is None


@pytest_twisted.ensureDeferred
async def test_a_fill_read_before_the_deletion_is_gone_when_it_answers(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    key = ("size", "sha256:" + "3" * 64)
    await warm(a, ("size", "other"), 1)
    token = a.cache.token()  # a reader notes the generation, reads storage ...
    b.generation.bump()  # ... b deletes meanwhile ...
    waiting = b.generation.settled()
    assert waiting is not None
    a.cache.put(key, 123, token)  # ... and a fills with what it read before
    await waiting
    assert a.cache.get(key) is None
    assert a.cache.get(("size", "other")) is None


@pytest_twisted.ensureDeferred
async def test_a_lapsed_lease_caches_nothing_and_renews_into_a_new_epoch(hosts: tuple[Host, Host]) -> None:
    a, _ = hosts
    key = ("manifest", "sha256:" + "4" * 64)
    await warm(a, key, b"body")
    await sleep(LEASE_S * 1.2)  # idle: no renewal
    # Lapsed: a miss, a new value on every call (no fill can be kept), and a
    # GET went out.
    assert a.cache.get(key) is None
    assert a.generation.current() != a.generation.current()
    epochs = a.remote.epochs
    await sleep(0.05)
    # Renewed with the same Redis value, but in a new epoch: the cache starts
    # empty (a deletion whose INCRBY was lost must not leave entries behind).
    assert a.remote.status()["lease"] is True
    assert a.remote.epochs == epochs + 1
    assert a.cache.get(key) is None
    await warm(a, key, b"again")


@pytest_twisted.ensureDeferred
async def test_redis_down_serves_nothing_from_cache_and_deletions_still_answer(
    hosts: tuple[Host, Host], redis_server: RedisServer
) -> None:
    a, b = hosts
    key = ("layer", "repo", "sha256:" + "5" * 64)
    await warm(a, key, True)
    redis_server.stop()
    await sleep(LEASE_S * 1.1)
    assert a.cache.get(key) is None
    token = a.cache.token()
    a.cache.put(key, True, token)
    assert a.cache.get(key) is None  # refused: no lease
    await sleep(0.05)  # the renewal the lapse started has failed
    assert a.client.status()["ok"] is False and a.remote.errors >= 1
    assert a.cache.get(key) is None
    # A deletion with Redis gone: answered after its wait, the INCRBY is
    # counted lost and retried.
    started = time.monotonic()
    b.generation.bump()
    waiting = b.generation.settled()
    assert waiting is not None
    await waiting
    assert LEASE_S <= time.monotonic() - started < 3
    assert b.remote.lost_bumps >= 1 and b.remote._retry is not None
    await sleep(1.1)
    assert b.remote.lost_bumps >= 2  # retried after RETRY_S


@pytest_twisted.ensureDeferred
async def test_the_shared_counter_moves_by_random_steps(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    values = []
    for _ in range(3):
        b.generation.bump()
        await b.generation.settle()
        values.append(int(await a.client.execute("GET", REDIS_KEY)))
    steps = [values[0], values[1] - values[0], values[2] - values[1]]
    assert all(step >= 1 for step in steps)
    assert len(set(steps)) > 1  # random, not 1 each time


@pytest_twisted.ensureDeferred
async def test_a_view_without_waiting_shares_everything_but_the_wait(hosts: tuple[Host, Host]) -> None:
    a, b = hosts
    key = ("manifest", "sha256:" + "6" * 64)
    await warm(a, key, b"body")
    view = b.generation.without_waiting()
    assert view.remote is b.remote and view.settled() is None
    before = b.generation.current()
    view.bump()
    assert b.generation.current() != before  # the same host counter
    await view.settle()  # the collector's one wait at the end of its run
    assert a.cache.get(key) is None
    view.close()  # a view's close leaves the counter open
    assert b.generation._map is not None and not b.generation._map.closed
    host_value = b.generation.bump() + 1
    assert b.generation.bump() == host_value


@pytest_twisted.ensureDeferred
async def test_application_keeps_the_content_cache_on_with_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    app = make_application(load_config(config_for(tmp_path, redis_server, "redis"), {}), reactor)
    try:
        model = model_of(app)
        cache = model.manifests.cache
        assert isinstance(cache, ContentCache)
        assert isinstance(cache.generation.remote, SharedGeneration)
        assert cache.generation.remote.client is app.redis
        # The Redis descriptor cache's misses go through the same content cache.
        assert model.blobs.descriptors.inner.cache is cache
        assert "redis" in cache.status()
    finally:
        await app.driver.close()  # type: ignore[union-attr]
        app.redis.close()


class CountingShared(SharedGeneration):
    """A real shared generation that counts its waits."""

    settles = 0

    def settle(self) -> Any:
        self.settles += 1
        return super().settle()


@pytest_twisted.ensureDeferred
async def test_scheduled_collection_waits_once_per_run_not_per_deletion(
    tmp_path: Path, hosts: tuple[Host, Host], redis_server: RedisServer
) -> None:
    import hashlib

    from registry.app import _collect_for
    from registry.digest import Digest
    from registry.storage import paths
    from registry.storage.factory import create_driver

    a, _ = hosts
    root = tmp_path / "storage"
    swept = []
    for i in range(3):  # three unreferenced blobs (no link, no manifest)
        data = b"orphan %d" % i
        d = Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())
        target = root / paths.blob_data(d).lstrip("/")
        target.parent.mkdir(parents=True)
        target.write_bytes(data)
        swept.append(str(d))
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    shared = CountingShared(a.client, reactor)
    driver.generation.attach(shared)  # type: ignore[attr-defined]
    key = ("size", swept[0])
    await warm(a, key, 9)
    try:
        report = await _collect_for(None)(driver, grace_s=0.0, delete_untagged=False, dry_run=False)
    finally:
        await driver.close()
    assert sorted(d for d, _ in report.blobs) == sorted(swept)
    # Every deletion advanced the shared counter, and the run waited once, at
    # its end (not once per deletion: a batch would outlive its fence) ...
    assert shared.settles == 1
    assert int(await a.client.execute("GET", REDIS_KEY)) > 0
    # ... after which the other host's cache is empty.
    assert a.cache.get(key) is None


def test_a_view_of_a_local_generation_shares_its_counter() -> None:
    local = Generation.local()
    view = local.without_waiting()
    before = local.current()
    view.bump()
    assert local.current() == before + 1
    local.bump()
    assert view.current() == before + 2


def _count_settles(remote: SharedGeneration) -> list[float]:
    """The times of ``remote``'s waits from now on (it still waits)."""
    settles: list[float] = []
    real_settle = remote.settle

    def counting_settle() -> Any:
        settles.append(time.monotonic())
        return real_settle()

    remote.settle = counting_settle  # type: ignore[method-assign]
    return settles


@pytest_twisted.ensureDeferred
async def test_a_manifest_delete_waits_once_however_many_tags_it_removes(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    # Removing the tags waits one lease of the tag generation (once, however
    # many tags: ``untag_each``); the revision link's deletion waits one
    # lease of the content generation, once per DELETE.
    from tests.test_gc import push_image

    app = make_application(load_config(config_for(tmp_path, redis_server, "redis"), {}), reactor)
    try:
        model = model_of(app)
        remote = model.manifests.cache.generation.remote
        assert isinstance(remote, SharedGeneration)
        digest = await push_image(model, "app", "tagged", tag="v1")
        for tag in ("v2", "v3", "latest"):
            await model.tags.tag("app", tag, digest)
        tag_remote = model.tags.generation.remote  # type: ignore[attr-defined]
        assert isinstance(tag_remote, SharedGeneration) and tag_remote is not remote
        settles, tag_settles = _count_settles(remote), _count_settles(tag_remote)
        started = time.monotonic()
        removed = await model.manifests.delete("app", digest)
        took = time.monotonic() - started
        assert sorted(removed) == ["latest", "v1", "v2", "v3"]
        assert len(settles) == 1 and len(tag_settles) == 1
        assert took < 2 * LEASE_S + 0.5, took
        assert not await model.manifests.exists("app", digest)
    finally:
        await app.driver.close()  # type: ignore[union-attr]
        app.redis.close()
