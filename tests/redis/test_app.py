"""The application built from a configuration with ``redis`` and
``storage.cache.blobdescriptor: redis``: it serves through the shared
lock and cache, reports Redis's health, and keeps serving pulls from
storage when Redis goes away (uploads fail with 503 rather than risk two
instances appending to one upload)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from registry.app import make_application
from registry.redis import RedisService
from registry.config import ConfigError, load_config
from registry.storage.cache import CachedBlobDescriptors, InMemoryDescriptorCache, RedisDescriptorCache
from registry.storage.hostlock import HostUploadLocks
from registry.storage.redislock import RedisUploadLocks
from tests.redis.server import RedisServer


def config_for(tmp_path: Path, redis: RedisServer | None, cache: str | None) -> str:
    text = f"version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {tmp_path}}}\n"
    if cache:
        text += f"  cache: {{blobdescriptor: {cache}}}\n"
    if redis is not None:
        text += f"redis: {{addr: '{redis.addr}', dialtimeout: 1s, readtimeout: 1s, writetimeout: 1s}}\n"
    return text


def model_of(app: object) -> Any:
    root = app.root  # type: ignore[attr-defined]
    return next(r.handler for r in root.routes if r.name == "catalog").ctx.model


@pytest_twisted.ensureDeferred
async def test_wiring(tmp_path: Path, redis_server: RedisServer) -> None:
    app = make_application(load_config(config_for(tmp_path, redis_server, "redis"), {}), reactor)
    model = model_of(app)
    assert isinstance(model.blobs.descriptors, CachedBlobDescriptors)
    assert isinstance(model.blobs.descriptors.cache, RedisDescriptorCache)
    assert isinstance(model.uploads.lock, RedisUploadLocks)
    assert app.redis is not None and app.redis.status()["ok"] is True
    assert any(isinstance(s, RedisService) for s in app.services)

    plain = make_application(load_config(config_for(tmp_path, None, None), {}), reactor)
    assert plain.redis is None
    # Without Redis, the processes of this host share upload locks.
    assert isinstance(model_of(plain).uploads.lock, HostUploadLocks)
    assert not isinstance(model_of(plain).blobs.descriptors, CachedBlobDescriptors)

    local = make_application(load_config(config_for(tmp_path, None, "inmemory"), {}), reactor)
    assert isinstance(model_of(local).blobs.descriptors.cache, InMemoryDescriptorCache)

    with pytest.raises(ConfigError, match="needs the redis section"):
        make_application(load_config(config_for(tmp_path, None, "redis"), {}), reactor)
    for built in (app, plain, local):
        await built.driver.close()  # type: ignore[union-attr]
    app.redis.close()


@pytest_twisted.ensureDeferred
async def test_serves_and_survives_redis_going_away(tmp_path: Path, redis_server: RedisServer) -> None:
    app = make_application(load_config(config_for(tmp_path, redis_server, "redis"), {}), reactor)
    port = reactor.listenTCP(0, app.listener("main").factory, interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        data = b"layer bytes" * 1000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = await treq.post(f"{url}/v2/app/blobs/uploads/")
        assert r.code == 202
        location = url + r.headers.getRawHeaders("location")[0].split(url, 1)[-1]
        r = await treq.patch(location, data=data[:5000], headers={"Content-Range": "0-4999"})
        assert r.code == 202, await r.text()
        location = url + r.headers.getRawHeaders("location")[0].split(url, 1)[-1]
        sep = "&" if "?" in location else "?"
        r = await treq.put(f"{location}{sep}digest={digest}", data=data[5000:])
        assert r.code == 201, await r.text()
        r = await treq.head(f"{url}/v2/app/blobs/{digest}")
        assert r.code == 200 and r.headers.getRawHeaders("content-length") == [str(len(data))]
        # The size and the link are in Redis now.
        assert await app.redis.execute("HGET", f"registry:blob:{digest}", "size") == str(len(data)).encode()

        redis_server.stop()
        r = await treq.head(f"{url}/v2/app/blobs/{digest}")
        assert r.code == 200  # a cache miss, answered by storage
        r = await treq.get(f"{url}/v2/app/blobs/{digest}")
        assert r.code == 200 and await r.content() == data
        status = app.redis.status()
        assert status["ok"] is False and status["error"]
        # Uploads need the shared lock (a POST opens its upload for a body
        # right away): refused with 503, the client retries later.
        r = await treq.post(f"{url}/v2/app/blobs/uploads/")
        assert r.code == 503
        body = await r.json()
        assert body["errors"][0]["code"] == "UNAVAILABLE"
    finally:
        await port.stopListening()
        await app.driver.close()  # type: ignore[union-attr]
        app.redis.close()


async def _probe_now(check: Any) -> None:
    """Run ``check`` once, starting now: after the probe the timer may have
    in flight (a ``run()`` during one returns at once, and that probe may
    have started before the test changed anything)."""
    from twisted.internet.task import deferLater

    for _ in range(500):
        if not check._running:
            break
        await deferLater(reactor, 0.01, lambda: None)
    await check.run()


@pytest_twisted.ensureDeferred
async def test_debug_health_reports_redis_without_closing_the_registry(tmp_path: Path, redis_server: RedisServer) -> None:
    from tests.observe.conftest import run_registry

    yaml_text = config_for(tmp_path, redis_server, "redis") + "http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n"
    async with run_registry(yaml_text) as r:
        health = r.application.health
        (check,) = [c for c in health.checks if c.name == "redis"]
        await _probe_now(check)  # as the timer does, every 10 s (it ran once at start)
        ok = await treq.get(f"{r.debug_url}/debug/health")
        assert ok.code == 200 and await ok.json() == {}
        redis_server.stop()
        await _probe_now(check)
        down = await treq.get(f"{r.debug_url}/debug/health")
        assert down.code == 503
        body = await down.json()
        assert list(body) == ["redis"] and body["redis"], body
        # Reported, but the registry stays open: pulls are served from storage.
        v2 = await treq.get(f"{r.url}/v2/")
        assert v2.code == 200
        await v2.content()
