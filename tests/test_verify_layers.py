"""Verified pushes (``validation.manifests.verifylayers``,
``registry.storage.verify``): real images built here (tarfile + gzip / zstd),
pushed to a real server over sockets; a wrong diff_id is refused and nothing
is stored; a gzip bomb is streamed in bounded memory and refused past the
limit; the reactor keeps serving meanwhile; the recorded diff_id and tarsum
are served at ``/v2/<name>/_registry/layers/<digest>``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import time
from pathlib import Path
from typing import Any, AsyncIterator

import psutil
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater

from registry.app import make_root
from registry.http import RegistrySite
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver
from registry.storage.verify import LayerVerifier, compression_of, is_record_path
from registry.tarsum import TarSum

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
TAR_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_of(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def zstd_compress(data: bytes) -> bytes:
    zstandard = pytest.importorskip("zstandard")
    return bytes(zstandard.ZstdCompressor(level=3).compress(data))


class Server:
    def __init__(self, url: str, driver: IStorageDriver, verifier: LayerVerifier) -> None:
        self.url = url
        self.driver = driver
        self.verifier = verifier

    async def push_blob(self, name: str, data: bytes) -> str:
        digest = sha(data)
        r = await treq.post(f"{self.url}/v2/{name}/blobs/uploads/?digest={digest}", data=data)
        assert r.code == 201, await r.text()
        return digest

    async def push_image(
        self, name: str, layers: list[tuple[str, bytes, bytes]], *, diff_ids: list[str] | None = None,
        tag: str = "latest", manifest_type: str = OCI_MANIFEST, config_type: str = OCI_CONFIG,
    ) -> Any:
        """``layers``: (media type, blob bytes, uncompressed tar). Returns the PUT response."""
        config = json.dumps({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": diff_ids if diff_ids is not None else [sha(t) for _, _, t in layers]},
        }).encode()
        config_digest = await self.push_blob(name, config)
        descs = []
        for media_type, blob, _ in layers:
            descs.append({"mediaType": media_type, "digest": await self.push_blob(name, blob), "size": len(blob)})
        body = json.dumps({
            "schemaVersion": 2, "mediaType": manifest_type,
            "config": {"mediaType": config_type, "digest": config_digest, "size": len(config)},
            "layers": descs,
        }).encode()
        return await treq.put(
            f"{self.url}/v2/{name}/manifests/{tag}", data=body, headers={"Content-Type": manifest_type}
        )

    async def files(self) -> dict[str, bytes]:
        out = {}
        for info in await self.driver.walk("/"):
            if not info.is_dir:
                out[info.path] = await self.driver.get_content(info.path)
        return out


async def serve(driver: IStorageDriver, verifier: LayerVerifier | None) -> Any:
    root = make_root(driver, delete_enabled=True, layer_verifier=verifier)
    return reactor.listenTCP(0, RegistrySite(root), interface="127.0.0.1")


@pytest_twisted.async_yield_fixture(params=["inmemory", "filesystem"])
async def server(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Server]:
    params = {"rootdirectory": str(tmp_path / "store")} if request.param == "filesystem" else {}
    driver = create_driver(request.param, params)
    verifier = LayerVerifier(driver, max_uncompressed=256 << 20)
    port = await serve(driver, verifier)
    try:
        yield Server(f"http://127.0.0.1:{port.getHost().port}", driver, verifier)
    finally:
        await port.stopListening()
        await verifier.close()
        await driver.close()


async def error_of(response: Any) -> tuple[str, str]:
    body = await response.json()
    err = body["errors"][0]
    return str(err["code"]), str(err["message"])


@pytest_twisted.ensureDeferred
async def test_a_real_image_passes_and_its_layers_are_recorded_once(server: Server) -> None:
    first = tar_of({"etc/hello": b"hello world\n", "bin/tool": b"\x7fELF" + bytes(5000)})
    second = tar_of({"usr/share/doc/readme": b"read me " * 1000})
    third = tar_of({"opt/app/data.json": b'{"x": 1}'})
    gz = gzip.compress(first, mtime=0)
    multi = gzip.compress(second[:10240], mtime=0) + gzip.compress(second[10240:], mtime=0)  # two gzip members
    layers = [(TAR_GZIP, gz, first), (TAR_GZIP, multi, second), (TAR, third, third),
              (TAR_ZSTD, zstd_compress(third + b""), third)]
    r = await server.push_image("app", layers)
    assert r.code == 201, await r.text()
    app_digest = r.headers.getRawHeaders("docker-content-digest")[0]
    assert server.verifier.computed == 4
    # Each record sits next to its blob and says what the layer is.
    for media_type, blob, tar in layers:
        r = await treq.get(f"{server.url}/v2/app/_registry/layers/{sha(blob)}")
        assert r.code == 200, await r.text()
        doc = await r.json()
        expected_tarsum = TarSum("v1")
        expected_tarsum.update(tar)
        assert doc == {
            "digest": sha(blob), "diffID": sha(tar), "tarsum": expected_tarsum.finish(), "mediaType": media_type,
            "compression": compression_of(media_type), "size": len(tar),
        }
        assert doc["tarsum"].startswith("tarsum.v1+sha256:")
    assert [p for p in await server.files() if is_record_path(p)] and all(
        "/blobs/sha256/" in p for p in await server.files() if is_record_path(p))
    # A second image over the same layers (Docker schema 2 this time) reads the records: nothing is recomputed.
    r = await server.push_image("other", [(DOCKER_GZIP, gz, first), (TAR, third, third)],
                                manifest_type=DOCKER_MANIFEST, config_type=DOCKER_CONFIG)
    assert r.code == 201, await r.text()
    assert server.verifier.computed == 4
    # `registry check` knows the records (no stray objects); garbage collection removes them with their blob.
    from registry.storage.check import check
    from registry.storage.gc import collect

    assert (await check(server.driver)).problems == []
    r = await treq.delete(f"{server.url}/v2/app/manifests/{app_digest}")
    assert r.code == 202
    await deferLater(reactor, 0.05, lambda: None)
    await collect(server.driver, grace_s=0.0)
    left = await server.files()
    assert [p for p in left if sha(multi).split(":")[1] in p] == []  # only "app" used it: data and record are gone
    assert sha(gz).split(":")[1] in " ".join(p for p in left if is_record_path(p))  # "other" still uses it


@pytest_twisted.ensureDeferred
async def test_a_wrong_diff_id_is_refused_naming_the_layer_and_nothing_is_stored(server: Server) -> None:
    good = tar_of({"a": b"a" * 100})
    tampered = tar_of({"b": b"evil"})
    layers = [(TAR_GZIP, gzip.compress(good, mtime=0), good), (TAR_GZIP, gzip.compress(tampered, mtime=0), tampered)]
    wrong = [sha(good), sha(tar_of({"b": b"good"}))]
    # Push the blobs (and config) first, then see what the refused PUT changes.
    await server.push_image("app", layers, diff_ids=wrong, tag="setup")
    before = {p: v for p, v in (await server.files()).items() if not is_record_path(p)}
    r = await server.push_image("app", layers, diff_ids=wrong, tag="v1")
    assert r.code == 400
    code, message = await error_of(r)
    assert code == "MANIFEST_INVALID"
    assert sha(layers[1][1]) in message and "layer 1" in message and sha(tampered) in message, message
    after = {p: v for p, v in (await server.files()).items() if not is_record_path(p)}
    assert after == before  # no manifest, revision, tag or link was written
    r = await treq.get(f"{server.url}/v2/app/manifests/v1")
    assert r.code == 404
    r = await treq.get(f"{server.url}/v2/app/tags/list")
    assert "v1" not in ((await r.json()).get("tags") or [])
    # Fixing the config (the right diff_ids) is accepted.
    r = await server.push_image("app", layers, tag="v1")
    assert r.code == 201, await r.text()


@pytest_twisted.ensureDeferred
async def test_layers_that_are_no_valid_layers_are_refused(server: Server) -> None:
    tar = tar_of({"x": b"x"})
    cases = [
        ([(TAR_GZIP, b"this is not gzip data at all" * 10, tar)], "not valid gzip data"),
        ([(TAR_GZIP, gzip.compress(tar, mtime=0)[:-20], tar)], "not valid gzip data"),  # truncated
        ([(TAR_GZIP, gzip.compress(b"not a tar archive" * 100, mtime=0), tar)], "not a valid tar archive"),
    ]
    for i, (layers, expected) in enumerate(cases):
        r = await server.push_image("bad", layers, tag=f"t{i}")
        assert r.code == 400, await r.text()
        code, message = await error_of(r)
        assert code == "MANIFEST_INVALID" and expected in message and "layer 0" in message, message
    # One diff_id too few.
    r = await server.push_image("bad", [(TAR, tar, tar)], diff_ids=[], tag="count")
    code, message = await error_of(r)
    assert r.code == 400 and code == "MANIFEST_INVALID" and "diff_ids" in message


@pytest_twisted.ensureDeferred
async def test_artifacts_are_not_verified(server: Server) -> None:
    r = await server.push_image("art", [("application/vnd.example.data", b"payload", b"")],
                                config_type="application/vnd.example.config+json", diff_ids=[])
    assert r.code == 201, await r.text()
    assert server.verifier.computed == 0


def gzip_bomb(total: int) -> bytes:
    """A small multi-member gzip that inflates to ``total`` zero bytes."""
    member = gzip.compress(bytes(16 << 20), compresslevel=9, mtime=0)
    assert total % (16 << 20) == 0
    return member * (total // (16 << 20))


@pytest_twisted.ensureDeferred
async def test_a_gzip_bomb_is_refused_past_the_limit_in_bounded_memory_off_the_reactor(server: Server) -> None:
    bomb = gzip_bomb(4 << 30)  # ~4 MB that inflate to 4 GiB; the limit here is 256 MiB
    assert len(bomb) < 8 << 20
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = [baseline]
    gaps: list[float] = []
    last = [time.monotonic()]

    def sample() -> None:
        now = time.monotonic()
        gaps.append(now - last[0])
        last[0] = now
        peak[0] = max(peak[0], process.memory_info().rss)

    await server.push_blob("bomb", bomb)
    loop = LoopingCall(sample)
    loop.start(0.01)
    try:
        started = time.monotonic()
        pending = server.push_image("bomb", [(TAR_GZIP, bomb, b"")], diff_ids=[sha(b"")])
        # The reactor keeps answering other requests while the layer inflates.
        ping = time.monotonic()
        r = await treq.get(f"{server.url}/v2/")
        assert r.code == 200
        ping_s = time.monotonic() - ping
        r = await pending
        elapsed = time.monotonic() - started
    finally:
        loop.stop()
    assert r.code == 400
    code, message = await error_of(r)
    assert code == "MANIFEST_INVALID" and "inflates to more than 268435456 bytes" in message, message
    assert elapsed < 30, elapsed
    # Inflating 256 MiB takes seconds here: on the reactor thread it would stall every tick that long.
    assert ping_s < 1.0, ping_s
    assert max(gaps) < 1.0, max(gaps)
    assert peak[0] - baseline < 128 << 20, (peak[0] - baseline) >> 20
    # The refusal is recorded: the bomb is never inflated again.
    computed = server.verifier.computed
    r = await server.push_image("bomb", [(TAR_GZIP, bomb, b"")], diff_ids=[sha(b"")], tag="again")
    assert r.code == 400 and server.verifier.computed == computed


@pytest_twisted.ensureDeferred
async def test_a_large_layer_streams_through_in_bounded_memory(tmp_path: Path) -> None:
    """No limit in the way: 512 MiB inflate, are hashed, and never sit in memory."""
    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path / "store")})
    verifier = LayerVerifier(driver)  # the default limit (64 GiB)
    port = await serve(driver, verifier)
    s = Server(f"http://127.0.0.1:{port.getHost().port}", driver, verifier)
    process = psutil.Process()
    try:
        bomb = gzip_bomb(512 << 20)
        await s.push_blob("big", bomb)
        baseline = process.memory_info().rss
        peak = [baseline]
        loop = LoopingCall(lambda: peak.__setitem__(0, max(peak[0], process.memory_info().rss)))
        loop.start(0.02)
        try:
            r = await s.push_image("big", [(TAR_GZIP, bomb, b"")], diff_ids=[sha(b"")])
        finally:
            loop.stop()
        code, message = await error_of(r)
        zeros = hashlib.sha256()
        for _ in range(32):
            zeros.update(bytes(16 << 20))
        # Inflated completely (the digest of 512 MiB of zeros), refused for the mismatch only.
        assert r.code == 400 and code == "MANIFEST_INVALID" and "sha256:" + zeros.hexdigest() in message, message
        assert peak[0] - baseline < 128 << 20, (peak[0] - baseline) >> 20
    finally:
        await port.stopListening()
        await verifier.close()
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_the_layer_endpoint(server: Server, tmp_path: Path) -> None:
    tar = tar_of({"f": b"f"})
    blob = await server.push_blob("repo", tar)
    r = await treq.get(f"{server.url}/v2/repo/_registry/layers/{blob}")
    assert r.code == 404 and (await error_of(r))[0] == "BLOB_UNKNOWN"  # not verified yet
    r = await server.push_image("repo", [(TAR, tar, tar)])
    assert r.code == 201
    r = await treq.head(f"{server.url}/v2/repo/_registry/layers/{blob}")
    assert r.code == 200 and r.headers.getRawHeaders("content-type") == ["application/json"]
    r = await treq.get(f"{server.url}/v2/elsewhere/_registry/layers/{blob}")
    assert r.code == 404 and (await error_of(r))[0] == "BLOB_UNKNOWN"  # not in that repository
    r = await treq.get(f"{server.url}/v2/repo/_registry/layers/sha256:nothex")
    assert r.code == 400 and (await error_of(r))[0] == "DIGEST_INVALID"
    r = await treq.put(f"{server.url}/v2/repo/_registry/layers/{blob}", data=b"{}")
    assert r.code == 405
    # Without verification the endpoint says so.
    driver = create_driver("inmemory", {})
    port = await serve(driver, None)
    try:
        r = await treq.get(f"http://127.0.0.1:{port.getHost().port}/v2/repo/_registry/layers/{blob}")
        assert r.code == 405 and (await error_of(r))[0] == "UNSUPPORTED"
    finally:
        await port.stopListening()


def test_configuration_builds_the_verifier() -> None:
    from registry.app import VerifierService, make_application
    from registry.config import load_config

    config = load_config(
        "version: 0.1\nstorage: inmemory\nvalidation:\n  manifests:\n    verifylayers: true\n"
        "    maxuncompressedlayersize: 10GiB\n", {})
    assert config.validation.manifests.verifylayers and config.validation.manifests.maxuncompressedlayersize == 10 << 30
    app = make_application(config, reactor)
    [service] = [s for s in app.services if isinstance(s, VerifierService)]
    assert service.verifier.max_uncompressed == 10 << 30
    off = load_config("version: 0.1\nstorage: inmemory\n", {})
    assert not off.validation.manifests.verifylayers
    assert not [s for s in make_application(off, reactor).services if isinstance(s, VerifierService)]
    from registry.config import ConfigError

    with pytest.raises(ConfigError, match="maxuncompressedlayersize"):
        load_config("version: 0.1\nstorage: inmemory\n",
                    {"REGISTRY_VALIDATION_MANIFESTS_MAXUNCOMPRESSEDLAYERSIZE": "lots"})


def test_media_types() -> None:
    assert compression_of(TAR_GZIP) == "gzip" and compression_of(DOCKER_GZIP) == "gzip"
    assert compression_of(TAR_ZSTD) == "zstd" and compression_of(TAR) == "none"
    assert compression_of("application/vnd.docker.image.rootfs.diff.tar") == "none"
    assert compression_of("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip") == "gzip"
    assert compression_of("application/vnd.example.data") is None
    assert compression_of("application/vnd.oci.image.layer.v1.tar+gzip+encrypted") is None


@pytest_twisted.ensureDeferred
async def test_concurrent_pushes_of_one_layer_compute_it_once(server: Server) -> None:
    from twisted.internet import defer

    tar = tar_of({"big": bytes(range(256)) * 40000})
    blob = gzip.compress(tar, mtime=0)
    results = await defer.gatherResults([
        defer.ensureDeferred(server.push_image(f"c{i}", [(TAR_GZIP, blob, tar)])) for i in range(4)
    ])
    assert [r.code for r in results] == [201] * 4
    assert server.verifier.computed == 1
    await deferLater(reactor, 0, lambda: None)
