"""``GET /debug/health`` over real HTTP with real checks: a storage driver
stat, a maintenance file, an HTTP service, a TCP port."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Site

from registry.bench.servers import free_port
from registry.config import ConfigError, load_config

from .conftest import run_registry


async def health(url: str) -> tuple[int, Any]:
    r = await treq.get(f"{url}/debug/health")
    assert r.headers.getRawHeaders("content-type")[0].startswith("application/json")
    return r.code, await r.json()


async def until(check: Callable[[], Any], want: Any, timeout: float = 5.0) -> Any:
    got = None
    for _ in range(int(timeout / 0.02)):
        got = await check()
        if got == want:
            return got
        await deferLater(reactor, 0.02, lambda: None)
    return got


def fs_yaml(root: Path, extra: str) -> str:
    return (
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n{extra}"
    )


@pytest_twisted.ensureDeferred
async def test_storage_driver_check_names_the_failing_driver(tmp_path: Path) -> None:
    root = tmp_path / "store"
    root.mkdir()
    extra = "health:\n  storagedriver:\n    enabled: true\n    interval: 20ms\n    threshold: 2\n"
    async with run_registry(fs_yaml(root, extra)) as r:
        assert r.debug_url is not None
        # An empty registry (no storage root yet) is healthy.
        assert await until(lambda: health(r.debug_url), (200, {})) == (200, {})
        # A real fault under the storage root: a symlink loop.
        os.symlink(root / "docker", root / "docker")
        url = r.debug_url

        async def code_of() -> int:
            return (await health(url))[0]

        assert await until(code_of, 503) == 503
        code, body = await health(url)
        assert code == 503
        assert list(body) == ["storagedriver_filesystem"]
        assert "symbolic links" in body["storagedriver_filesystem"]
        # Meanwhile the registry itself answers 503, as Distribution does.
        down = await treq.get(f"{r.url}/v2/")
        assert down.code == 503
        assert (await down.json())["errors"][0]["code"] == "UNAVAILABLE"
        os.unlink(root / "docker")
        assert await until(lambda: health(r.debug_url), (200, {})) == (200, {})
        up = await treq.get(f"{r.url}/v2/")
        assert up.code == 200
        await up.content()


@pytest_twisted.ensureDeferred
async def test_file_http_and_tcp_checks(tmp_path: Path) -> None:
    class Status(Resource):
        isLeaf = True
        code = 200

        def render_HEAD(self, request: Any) -> bytes:
            request.setResponseCode(self.code)
            return b""

    status = Status()
    service = reactor.listenTCP(0, Site(status), interface="127.0.0.1")
    service_url = f"http://127.0.0.1:{service.getHost().port}/ping"
    listening = reactor.listenTCP(0, Site(Resource()), interface="127.0.0.1")
    open_addr = f"127.0.0.1:{listening.getHost().port}"
    closed_addr = f"127.0.0.1:{free_port()}"
    flag = tmp_path / "maintenance"
    extra = (
        "health:\n"
        f"  file:\n    - file: {flag}\n      interval: 20ms\n"
        f"  http:\n    - uri: {service_url}\n      interval: 20ms\n      threshold: 3\n      timeout: 1s\n"
        f"  tcp:\n    - addr: {open_addr}\n      interval: 20ms\n"
        f"    - addr: {closed_addr}\n      interval: 20ms\n      timeout: 1s\n"
    )
    try:
        async with run_registry(fs_yaml(tmp_path / "store", extra)) as r:
            url = r.debug_url
            assert url is not None

            async def failing() -> list[str]:
                return sorted((await health(url))[1])

            # Only the closed port fails, and the answer names only it.
            assert await until(failing, [closed_addr]) == [closed_addr]
            code, body = await health(url)
            assert code == 503 and "connection to" in body[closed_addr]
            flag.write_text("down for maintenance")
            assert await until(failing, sorted([closed_addr, str(flag)])) == sorted([closed_addr, str(flag)])
            assert (await health(url))[1][str(flag)] == "file exists"
            flag.unlink()
            status.code = 500
            want = sorted([closed_addr, service_url])
            assert await until(failing, want) == want
            assert "unexpected status: 500" in (await health(url))[1][service_url]
            status.code = 200
            assert await until(failing, [closed_addr]) == [closed_addr]
    finally:
        await service.stopListening()
        await listening.stopListening()


def test_health_config() -> None:
    config = load_config(
        "version: 0.1\nstorage: inmemory\nhealth:\n  storagedriver: {enabled: true, threshold: 3}\n"
        "  http:\n    - uri: http://127.0.0.1:1/x\n      headers: {Authorization: [Basic x]}\n      statuscode: 204\n"
        "  tcp:\n    - addr: 127.0.0.1:6379\n      bogus: 1\n",
        {},
    )
    assert config.health.storagedriver.enabled and config.health.storagedriver.threshold == 3
    assert config.health.storagedriver.interval == 10.0
    (h,) = config.health.http
    assert (h.statuscode, h.timeout, h.headers) == (204, 3.0, {"Authorization": ["Basic x"]})
    assert config.health.tcp[0].addr == "127.0.0.1:6379"
    assert any("health.tcp.0.bogus" in w and "unknown key" in w for w in config.warnings)
    with pytest.raises(ConfigError, match="health.tcp.0.addr"):
        load_config("version: 0.1\nstorage: inmemory\nhealth:\n  tcp:\n    - addr: nonsense\n", {})
    with pytest.raises(ConfigError, match="health.storagedriver.threshold"):
        load_config("version: 0.1\nstorage: inmemory\nhealth:\n  storagedriver: {threshold: -1}\n", {})


@pytest_twisted.ensureDeferred
async def test_threshold_counts_failures_in_a_row() -> None:
    from registry.observe.health import HealthCheck

    outcomes = ["fail", "fail", "ok", "fail", "fail", "fail"]

    async def probe() -> None:
        if outcomes.pop(0) == "fail":
            raise RuntimeError("down")

    check = HealthCheck("svc", probe, 1.0, threshold=3)
    seen = []
    for _ in range(6):
        await check.run()
        seen.append(check.error)
    assert seen == [None, None, None, None, None, "down"]


@pytest_twisted.ensureDeferred
async def test_health_on_the_main_listener_only_when_configured(tmp_path: Path) -> None:
    import bcrypt

    flag = tmp_path / "maintenance"
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"alice:{bcrypt.hashpw(b'pw', bcrypt.gensalt(rounds=4)).decode()}\n")
    checks = f"health:\n  file:\n    - file: {flag}\n      interval: 20ms\n"
    auth = f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n"
    # Not configured: the main listener has no such endpoint.
    async with run_registry(fs_yaml(tmp_path / "store", checks + auth)) as r:
        absent = await treq.get(f"{r.url}/debug/health")
        assert absent.code == 404  # no registry endpoint there
        await absent.content()
    async with run_registry(fs_yaml(tmp_path / "store", checks + "  mainlistener: true\n" + auth)) as r:
        assert await until(lambda: health(r.url), (200, {})) == (200, {})  # no credentials needed
        flag.write_text("down")
        want = (503, {str(flag): "file exists"})
        assert await until(lambda: health(r.url), want) == want
        assert await health(r.debug_url) == want  # the same page as the debug listener's
        api = await treq.get(f"{r.url}/v2/")
        assert api.code == 503  # the gate closes the API, not the health page
        await api.content()
    async with run_registry(fs_yaml(tmp_path / "store", "health:\n  mainlistener: true\n").replace(
        "  addr: 127.0.0.1:0\n  debug:", "  addr: 127.0.0.1:0\n  prefix: /reg/\n  debug:"
    )) as r:
        assert await health(f"{r.url}/reg") == (200, {})
