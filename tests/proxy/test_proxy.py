"""The pull-through cache in process: an upstream registry (ours, over the
in-memory driver, with htpasswd Basic auth) behind a counting relay, and a
proxy registry over its own in-memory storage; real sockets, real treq.

(Distribution 2.8.2 as the upstream, skopeo and the 256 MiB single-flight
test are in ``test_distribution.py``.)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import bcrypt
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList

from registry.app import make_root
from registry.auth.htpasswd import HtpasswdAccessController
from registry.client import BytesSource, Credentials, RegistryClient
from registry.config import ConfigError, load_config
from registry.digest import Digest
from registry.http import RegistrySite
from registry.proxy import Upstream, pull_through_model
from registry.storage import paths
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.proxy.relay import CountingRelay

USER, PASSWORD = "puller", "s3cret"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Setup:
    upstream_driver: IStorageDriver
    relay: CountingRelay
    proxy_url: str
    proxy_driver: IStorageDriver
    model: DataModel
    pusher: RegistryClient

    async def push_image(self, repo: str, tag: str, layers: list[bytes]) -> tuple[str, bytes, str]:
        """Push ``layers`` and a config upstream; returns (manifest digest, body, config digest)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": repo + tag}).encode()
        for blob in [config, *layers]:
            await self.pusher.push_blob(repo, Digest.parse(sha(blob)), BytesSource(blob))
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b), "size": len(b)} for b in layers
                ],
            }
        ).encode()
        d = await self.pusher.put_manifest(repo, tag, manifest, OCI_MANIFEST)
        return str(d), manifest, sha(config)


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_bytes(USER.encode() + b":" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(4)) + b"\n")
    access = HtpasswdAccessController("upstream", str(htpasswd), reactor=reactor)
    up_driver = create_driver("inmemory", {})
    up_port = reactor.listenTCP(0, RegistrySite(make_root(up_driver, access=access, delete_enabled=True)), interface="127.0.0.1")
    relay = CountingRelay(up_port.getHost().port)
    upstream = Upstream(relay.url, username=USER, password=PASSWORD, reactor=reactor)
    # The filesystem driver answers from a thread pool: pulls interleave at
    # every storage call, as they do in production.
    proxy_driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "proxy")})
    model = pull_through_model(proxy_driver, upstream, 3600.0, reactor, high_water=256 * 1024, retain=64 * 1024, laggard_timeout=0.5)
    proxy_port = reactor.listenTCP(
        0, RegistrySite(make_root(proxy_driver, model=model, pull_through=True)), interface="127.0.0.1"
    )
    pusher = RegistryClient(f"127.0.0.1:{up_port.getHost().port}", reactor=reactor, credentials=Credentials(USER, PASSWORD))
    try:
        yield Setup(up_driver, relay, f"http://127.0.0.1:{proxy_port.getHost().port}", proxy_driver, model, pusher)
    finally:
        await pusher.close()
        await upstream.close()
        await relay.close()
        await proxy_port.stopListening()
        await up_port.stopListening()
        await proxy_driver.close()


async def get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, Any, bytes]:
    r = await treq.request(method, url, headers=headers or {}, persistent=False)
    body = await r.content()
    return r.code, r.headers, body


def error_code(body: bytes) -> str:
    return str(json.loads(body)["errors"][0]["code"])


@pytest_twisted.ensureDeferred
async def test_pull_through_then_cached_with_upstream_down(setup: Setup) -> None:
    layers = [os.urandom(300_000), os.urandom(5000)]
    digest, manifest, config_digest = await setup.push_image("lib/app", "v1", layers)
    base = f"{setup.proxy_url}/v2/lib/app"

    code, headers, body = await get(f"{base}/manifests/v1", ACCEPT)
    assert code == 200, body
    assert body == manifest
    assert headers.getRawHeaders("docker-content-digest") == [digest]
    for layer in layers:
        code, headers, body = await get(f"{base}/blobs/{sha(layer)}")
        assert code == 200 and body == layer
    # A HEAD asks the upstream but downloads nothing.
    code, headers, _ = await get(f"{base}/blobs/{config_digest}", method="HEAD")
    assert code == 200 and headers.getRawHeaders("content-length") == [str(len(await setup.pusher.read_blob("lib/app", Digest.parse(config_digest))))]
    assert setup.relay.count("GET", f"/blobs/{config_digest}") == 0
    # Stored as a push would have: blob data, layer links, revision, tag.
    await settle(setup)
    for layer in layers:
        assert await setup.proxy_driver.get_content(paths.blob_data(Digest.parse(sha(layer)))) == layer
        assert await setup.model.blobs.descriptors.is_linked("lib/app", Digest.parse(sha(layer)))
    assert await setup.model.manifests.exists("lib/app", Digest.parse(digest))

    await setup.relay.down()
    requests_before = sum(setup.relay.requests.values())
    for ref in ("v1", digest):
        code, _, body = await get(f"{base}/manifests/{ref}", ACCEPT)
        assert code == 200 and body == manifest
    for layer in layers:
        code, _, body = await get(f"{base}/blobs/{sha(layer)}")
        assert code == 200 and body == layer
    # Not cached: 503 UNAVAILABLE, and the message does not name the upstream.
    for path in (f"{base}/blobs/{config_digest}", f"{base}/manifests/other", f"{base}/manifests/{sha(b'nothing')}"):
        code, _, body = await get(path, ACCEPT)
        assert code == 503, (path, body)
        assert error_code(body) == "UNAVAILABLE"
        assert str(setup.relay.port_number) not in body.decode() and "127.0.0.1" not in body.decode()
    assert sum(setup.relay.requests.values()) == requests_before


@pytest_twisted.ensureDeferred
async def test_unknown_upstream_is_404_and_credentials_stay_inside(setup: Setup) -> None:
    await setup.push_image("lib/app", "v1", [b"layer"])
    code, headers, body = await get(f"{setup.proxy_url}/v2/lib/app/manifests/nope", ACCEPT)
    assert code == 404 and error_code(body) == "MANIFEST_UNKNOWN"
    code, headers, body = await get(f"{setup.proxy_url}/v2/lib/app/blobs/{sha(b'absent')}")
    assert code == 404 and error_code(body) == "BLOB_UNKNOWN"
    # The upstream demanded Basic auth from the proxy; clients of the proxy
    # (which has no auth configured) are never challenged nor told the credentials.
    code, headers, body = await get(f"{setup.proxy_url}/v2/lib/app/manifests/v1", ACCEPT)
    assert code == 200
    assert headers.getRawHeaders("www-authenticate") is None
    assert PASSWORD.encode() not in body


@pytest_twisted.ensureDeferred
async def test_pushes_and_deletes_are_unsupported(setup: Setup) -> None:
    digest, manifest, _ = await setup.push_image("lib/app", "v1", [b"layer"])
    base = f"{setup.proxy_url}/v2/lib/app"
    attempts = [
        ("POST", f"{base}/blobs/uploads/", b""),
        ("POST", f"{base}/blobs/uploads/?digest={sha(b'x')}", b"x"),
        ("POST", f"{base}/blobs/uploads/?mount={sha(b'layer')}&from=lib/app", b""),
        ("PUT", f"{base}/manifests/v2", manifest),
        ("DELETE", f"{base}/manifests/{digest}", b""),
        ("DELETE", f"{base}/blobs/{sha(b'layer')}", b""),
    ]
    for method, url, data in attempts:
        r = await treq.request(method, url, data=data, headers={"Content-Type": OCI_MANIFEST}, persistent=False)
        body = await r.content()
        assert r.code == 405, (method, url, body)
        assert error_code(body) == "UNSUPPORTED"
        assert b"pull-through cache" in body
    assert setup.relay.count("PUT", "") == setup.relay.count("POST", "") == setup.relay.count("DELETE", "") == 0


@pytest_twisted.ensureDeferred
async def test_concurrent_pulls_share_one_upstream_fetch(setup: Setup) -> None:
    blob = os.urandom(3 * 1024 * 1024)  # many times the test's 256 KiB window
    await setup.push_image("lib/big", "v1", [blob])
    url = f"{setup.proxy_url}/v2/lib/big/blobs/{sha(blob)}"
    results = await DeferredList([Deferred.fromCoroutine(get(url)) for _ in range(6)], consumeErrors=True)
    for ok, value in results:
        assert ok, value
        code, _, body = value
        assert code == 200 and body == blob
    assert setup.relay.count("GET", f"/blobs/{sha(blob)}") == 1
    await settle(setup)
    # A later pull, and a Range request, come from storage.
    code, headers, body = await get(url, {"Range": "bytes=100-199"})
    assert code == 206 and body == blob[100:200]
    assert setup.relay.count("GET", f"/blobs/{sha(blob)}") == 1


@pytest_twisted.ensureDeferred
async def test_window_is_bounded_and_a_stalled_reader_is_detached(setup: Setup) -> None:
    blob = os.urandom(4 * 1024 * 1024)
    await setup.push_image("lib/big", "v1", [blob])
    d = Digest.parse(sha(blob))
    blobs = setup.model.blobs
    assert await blobs.repo_size("lib/big", d) == len(blob)
    fast = await blobs.open(d, 0)
    stalled = await blobs.open(d, 0)
    fetch = blobs.fetches[d]  # type: ignore[attr-defined]
    first = await stalled.read(1000)
    bound = 256 * 1024 + 64 * 1024 + 1024 * 1024  # high water + retain + one chunk
    got = []
    while True:
        chunk = await fast.read(1 << 20)
        if not chunk:
            break
        got.append(chunk)
        assert fetch.window_bytes() <= bound
    assert b"".join(got) == blob
    # The stalled reader held the upstream back, was detached after the
    # laggard timeout, and continues from storage once the blob is stored.
    assert stalled.detached
    rest = [first]
    while rest[-1]:
        rest.append(await stalled.read(1 << 20))
    assert b"".join(rest) == blob
    await fast.close()
    await stalled.close()
    assert fetch.peak_window <= bound
    assert setup.relay.count("GET", f"/blobs/{d}") == 1


@pytest_twisted.ensureDeferred
async def test_digest_mismatch_discards_the_local_copy(setup: Setup) -> None:
    blob = os.urandom(500_000)
    await setup.push_image("lib/bad", "v1", [blob])
    d = Digest.parse(sha(blob))
    # Corrupt the upstream's copy (same size, other bytes).
    await setup.upstream_driver.put_content(paths.blob_data(d), os.urandom(len(blob)))
    r = await treq.get(f"{setup.proxy_url}/v2/lib/bad/blobs/{d}", persistent=False)
    assert r.code == 200  # the response started before the end was verified...
    try:
        body = await r.content()
    except Exception:
        body = None  # ...and is cut short: the client never gets a complete body
    assert body is None, f"a response of {len(body or b'')} bytes completed"
    await asyncio_sleep(0.2)
    assert await setup.model.blobs.descriptors.size(d) is None
    assert not await setup.model.blobs.descriptors.is_linked("lib/bad", d)
    # no upload left behind
    try:
        uploads = await setup.proxy_driver.list(paths.repository("lib/bad") + "/_uploads")
    except Exception:
        uploads = []
    assert uploads == []


async def settle(setup: Setup) -> None:
    """Wait until every upstream download has been stored (clients get their
    last byte when it is verified, a moment before the commit)."""
    fetches = setup.model.blobs.fetches  # type: ignore[attr-defined]
    for fetch in list(fetches.values()):
        assert await fetch.wait_stored()
    assert fetches == {}


async def asyncio_sleep(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_tags_are_revalidated_after_ttl(setup: Setup) -> None:
    d1, m1, _ = await setup.push_image("lib/app", "latest", [b"one"])
    tags = setup.model.tags
    url = f"{setup.proxy_url}/v2/lib/app/manifests/latest"
    code, headers, body = await get(url, ACCEPT)
    assert code == 200 and body == m1
    d2, m2, _ = await setup.push_image("lib/app", "latest", [b"two"])
    heads = setup.relay.count("HEAD", "/manifests/latest")
    # Within the ttl the cached tag is served without asking the upstream.
    code, headers, body = await get(url, ACCEPT)
    assert code == 200 and body == m1
    assert setup.relay.count("HEAD", "/manifests/latest") == heads
    # After it: a HEAD finds the new digest, which is fetched and served.
    tags.now = lambda: time.time() + 7200  # the fixture's ttl is 3600 s  # type: ignore[attr-defined]
    code, headers, body = await get(url, ACCEPT)
    assert code == 200 and body == m2
    assert headers.getRawHeaders("docker-content-digest") == [d2]
    assert setup.relay.count("HEAD", "/manifests/latest") == heads + 1
    # The old manifest stays cached by digest.
    code, _, body = await get(f"{setup.proxy_url}/v2/lib/app/manifests/{d1}", ACCEPT)
    assert code == 200 and body == m1
    # Unchanged upstream: a HEAD only, and the tag's check time restarts.
    gets = setup.relay.count("GET", "/manifests/latest")
    code, _, body = await get(url, ACCEPT)
    assert code == 200 and body == m2
    assert setup.relay.count("GET", "/manifests/latest") == gets
    # Stale tag with the upstream down: served from the cache.
    await setup.relay.down()
    code, _, body = await get(url, ACCEPT)
    assert code == 200 and body == m2


@pytest_twisted.ensureDeferred
async def test_tag_list_comes_from_the_upstream(setup: Setup) -> None:
    await setup.push_image("lib/app", "a", [b"x"])
    await setup.push_image("lib/app", "b", [b"y"])
    code, _, body = await get(f"{setup.proxy_url}/v2/lib/app/tags/list")
    assert code == 200 and json.loads(body)["tags"] == ["a", "b"]
    await get(f"{setup.proxy_url}/v2/lib/app/manifests/a", ACCEPT)
    await setup.relay.down()
    code, _, body = await get(f"{setup.proxy_url}/v2/lib/app/tags/list")
    assert code == 200 and json.loads(body)["tags"] == ["a"]


def test_proxy_config() -> None:
    config = load_config(
        "version: 0.1\nstorage: {inmemory: {}}\nproxy:\n  remoteurl: https://registry.example:5000/\n"
        "  username: u\n  password: p\n  ttl: 10m\n",
        {},
    )
    assert config.proxy.remoteurl == "https://registry.example:5000"
    assert (config.proxy.username, config.proxy.password, config.proxy.ttl) == ("u", "p", 600.0)
    assert config.warnings == []
    assert load_config("version: 0.1\nstorage: {inmemory: {}}\n", {}).proxy.remoteurl is None
    env = load_config("version: 0.1\nstorage: {inmemory: {}}\n", {"REGISTRY_PROXY_REMOTEURL": "http://127.0.0.1:1"})
    assert env.proxy.remoteurl == "http://127.0.0.1:1"
    for bad in ("ftp://x", "https://u:p@host", "https://host/path", "nohost"):
        with pytest.raises(ConfigError, match="proxy.remoteurl"):
            load_config(f"version: 0.1\nstorage: {{inmemory: {{}}}}\nproxy: {{remoteurl: '{bad}'}}\n", {})


@pytest_twisted.ensureDeferred
async def test_application_with_proxy_section_starts_with_the_upstream_down(tmp_path: Path) -> None:
    """``make_application`` wires the cache from ``proxy:``; nothing is asked
    of the (unreachable) upstream until a pull, which then gets a 503."""
    from twisted.application.internet import TimerService

    from registry.app import make_application
    from registry.proxy import UpstreamService

    dead = CountingRelay(1)
    await dead.down()  # a port that was free a moment ago: connections are refused
    config = load_config(
        f"version: 0.1\nstorage: {{filesystem: {{rootdirectory: {tmp_path / 'store'}}}}}\n"
        f"proxy: {{remoteurl: '{dead.url}', username: u, password: p}}\n",
        {},
    )
    app = make_application(config, reactor)
    assert any(isinstance(s, UpstreamService) for s in app.services)
    port = reactor.listenTCP(0, app.listener("main").factory, interface="127.0.0.1")
    try:
        base = f"http://127.0.0.1:{port.getHost().port}"
        code, _, _ = await get(f"{base}/v2/")
        assert code == 200
        code, _, body = await get(f"{base}/v2/lib/app/manifests/v1", ACCEPT)
        assert code == 503 and error_code(body) == "UNAVAILABLE"
        assert str(dead.port_number).encode() not in body
        code, _, body = await get(f"{base}/v2/lib/app/blobs/uploads/", method="POST")
        assert code == 405 and error_code(body) == "UNSUPPORTED"
    finally:
        await port.stopListening()
        for service in reversed(app.services):
            if not isinstance(service, TimerService):  # never started
                await service.stopService()


@pytest_twisted.ensureDeferred
async def test_worker_processes_share_one_upstream_fetch(setup: Setup, tmp_path: Path) -> None:
    """Two proxies over one storage with one flights directory, as the
    worker processes of ``http.workers`` are: concurrent pulls landing on
    both fetch the blob from the upstream once; the other worker's clients
    get it from storage once it is stored."""
    from registry.proxy import HostFlights

    blob = os.urandom(3 * 1024 * 1024)
    repos = ["lib/workers", "lib/workers-too"]  # one blob in two repositories upstream
    for repo in repos:
        await setup.push_image(repo, "v1", [blob])
    flights_dir = str(tmp_path / "flights")
    workers = []
    for _ in range(2):
        upstream = Upstream(setup.relay.url, username=USER, password=PASSWORD, reactor=reactor)
        driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "shared")})
        model = pull_through_model(
            driver, upstream, 3600.0, reactor, flights=HostFlights(flights_dir),
            high_water=256 * 1024, retain=64 * 1024,
        )
        port = reactor.listenTCP(0, RegistrySite(make_root(driver, model=model, pull_through=True)), interface="127.0.0.1")
        workers.append((upstream, driver, model, port))
    try:
        urls = [f"http://127.0.0.1:{port.getHost().port}/v2/{repo}/blobs/{sha(blob)}" for repo, (*_, port) in zip(repos, workers)]
        pulls = [Deferred.fromCoroutine(get(urls[i % 2])) for i in range(8)]
        results = await DeferredList(pulls, consumeErrors=True)
        for ok, value in results:
            assert ok, value
            code, _, body = value
            assert code == 200 and body == blob
        assert setup.relay.count("GET", f"/blobs/{sha(blob)}") == 1
        assert sum(upstream.blob_fetches for upstream, *_ in workers) == 1
        # Nothing is left locked: a later blob is fetched by whichever worker is asked.
        for _, _, model, _ in workers:
            for fetch in list(model.blobs.fetches.values()):  # type: ignore[attr-defined]
                await fetch.wait_stored()
        assert os.listdir(flights_dir) == []
        # Whichever worker fetched it, both repositories now hold the blob.
        for repo in repos:
            assert await workers[0][2].blobs.descriptors.is_linked(repo, Digest.parse(sha(blob)))
    finally:
        for upstream, driver, _, port in workers:
            await port.stopListening()
            await upstream.close()
            await driver.close()


def test_host_flights_lock_per_digest(tmp_path: Path) -> None:
    from registry.proxy import HostFlights

    one, other = HostFlights(str(tmp_path)), HostFlights(str(tmp_path))
    a, b = Digest.parse(sha(b"a")), Digest.parse(sha(b"b"))
    release = one.try_acquire(a)
    assert release is not None
    assert other.try_acquire(a) is None and one.try_acquire(a) is None  # flock: per open file, even in one process
    release_b = other.try_acquire(b)
    assert release_b is not None
    release()
    release()  # twice is harmless
    again = other.try_acquire(a)
    assert again is not None
    again()
    release_b()
    assert os.listdir(tmp_path) == []


@pytest_twisted.ensureDeferred
async def test_clients_authenticate_to_the_proxy_with_its_own_auth(setup: Setup, tmp_path: Path) -> None:
    """A proxy with an ``auth`` of its own (htpasswd, another realm and user):
    its clients are challenged for the proxy's realm, the upstream's
    credentials get them nothing, the proxy's get the image."""
    import base64

    digest, manifest, _ = await setup.push_image("lib/app", "v1", [b"guarded layer"])
    htpasswd = tmp_path / "proxy-htpasswd"
    htpasswd.write_bytes(b"client:" + bcrypt.hashpw(b"client-pw", bcrypt.gensalt(4)) + b"\n")
    access = HtpasswdAccessController("proxy-realm", str(htpasswd), reactor=reactor)
    upstream = Upstream(setup.relay.url, username=USER, password=PASSWORD, reactor=reactor)
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "guarded")})
    model = pull_through_model(driver, upstream, 3600.0, reactor)
    port = reactor.listenTCP(
        0, RegistrySite(make_root(driver, model=model, pull_through=True, access=access)), interface="127.0.0.1"
    )
    base = f"http://127.0.0.1:{port.getHost().port}"

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode(), **ACCEPT}

    try:
        code, headers, body = await get(f"{base}/v2/lib/app/manifests/v1", ACCEPT)
        assert code == 401 and error_code(body) == "UNAUTHORIZED"
        assert headers.getRawHeaders("www-authenticate") == ['Basic realm="proxy-realm"']
        code, headers, body = await get(f"{base}/v2/lib/app/manifests/v1", basic(USER, PASSWORD))
        assert code == 401, "the upstream's credentials must not open the proxy"
        assert setup.relay.count("GET", "/manifests/v1") == 0  # refused before the upstream was asked
        code, headers, body = await get(f"{base}/v2/lib/app/manifests/v1", basic("client", "client-pw"))
        assert code == 200 and body == manifest
        client = RegistryClient(f"127.0.0.1:{port.getHost().port}", reactor=reactor, credentials=Credentials("client", "client-pw"))
        try:
            assert await client.read_blob("lib/app", Digest.parse(sha(b"guarded layer"))) == b"guarded layer"
        finally:
            await client.close()
    finally:
        await port.stopListening()
        await upstream.close()
        await driver.close()
        await access.close()
