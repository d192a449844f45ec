"""Shared by the manifest, tag, catalog and referrers tests: a registry
(``make_root`` over the in-memory driver, deletes enabled) listening on
127.0.0.1 with a free port, spoken to with real treq, and builders for
blobs and manifests of every supported media type."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.threads import deferToThread

from registry.app import make_root
from registry.digest import sha256_digest
from registry.http import RegistrySite
from registry.manifest_types import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Response:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    def error(self) -> dict[str, Any]:
        """The first entry of an OCI error envelope."""
        entries = self.json()["errors"]
        assert len(entries) >= 1
        return entries[0]


@dataclass
class Server:
    driver: IStorageDriver
    base: str
    port: Any = field(repr=False)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    async def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str | list[str]] | None = None,
        chunked: bool = False,
    ) -> Response:
        """One HTTP request on its own connection, made with ``http.client`` in
        a thread (every header line is sent and seen as is, HEAD included).
        ``chunked`` sends the body with ``Transfer-Encoding: chunked``."""
        return await deferToThread(self._request_blocking, method, path, body, headers or {}, chunked)

    def _request_blocking(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str | list[str]], chunked: bool
    ) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.port_number, timeout=30)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for k, v in headers.items():
                for value in [v] if isinstance(v, str) else v:
                    conn.putheader(k, value)
            if body is not None and chunked:
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders(iter([body[i : i + 65536] for i in range(0, len(body), 65536)]), encode_chunked=True)
            else:
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders(body)
            resp = conn.getresponse()
            content = resp.read()
            out: dict[str, list[str]] = {}
            for k, value in resp.getheaders():
                out.setdefault(k.lower(), []).append(value)
            return Response(resp.status, out, content)
        finally:
            conn.close()

    async def put_blob(self, name: str, data: bytes) -> dict[str, Any]:
        """Upload ``data`` to ``name`` (POST then PUT) and return its descriptor fields."""
        d = str(sha256_digest(data))
        started = await self.request("POST", f"/v2/{name}/blobs/uploads/")
        assert started.status == 202, started.body
        location = started.header("location")
        assert location is not None
        sep = "&" if "?" in location else "?"
        done = await self.request("PUT", f"{location}{sep}digest={d}", data, {"Content-Type": "application/octet-stream"})
        assert done.status == 201, done.body
        return {"digest": d, "size": len(data)}

    async def put_manifest(
        self, name: str, reference: str, body: bytes, content_type: str | None, chunked: bool = False
    ) -> Response:
        headers: dict[str, str | list[str]] = {"Content-Type": content_type} if content_type else {}
        return await self.request("PUT", f"/v2/{name}/manifests/{reference}", body, headers, chunked)

    async def snapshot(self) -> dict[str, bytes]:
        """Every object in the store, path -> bytes (to show nothing changed)."""
        out: dict[str, bytes] = {}
        try:
            infos = await self.driver.walk("/")
        except Exception:
            return out
        for info in infos:
            if not info.is_dir:
                out[info.path] = await self.driver.get_content(info.path)
        return out


async def start_server(delete_enabled: bool = True, driver: IStorageDriver | None = None) -> Server:
    driver = driver or create_driver("inmemory", {})
    site = RegistrySite(make_root(driver, delete_enabled=delete_enabled))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    return Server(driver, f"http://127.0.0.1:{port.getHost().port}", port)


@pytest_twisted.async_yield_fixture
async def server() -> AsyncIterator[Server]:
    """A registry with deletes enabled on a fresh in-memory driver."""
    srv = await start_server()
    try:
        yield srv
    finally:
        await srv.port.stopListening()


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=3).encode()


async def image(
    srv: Server, name: str, media_type: str = OCI_MANIFEST, layers: int = 2, seed: str = "x", **extra: Any
) -> tuple[bytes, dict[str, Any]]:
    """Push a config and ``layers`` layers to ``name`` and return the body of
    an image manifest of ``media_type`` over them (not pushed) and its
    descriptor fields."""
    docker = media_type == DOCKER_MANIFEST
    config = await srv.put_blob(name, json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode())
    blobs = [await srv.put_blob(name, f"layer {seed} {i}".encode() * 10) for i in range(layers)]
    manifest: dict[str, Any] = {"schemaVersion": 2, "mediaType": media_type}
    manifest["config"] = {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, **config}
    manifest["layers"] = [{"mediaType": DOCKER_LAYER if docker else OCI_LAYER, **b} for b in blobs]
    manifest.update(extra)
    body = dumps(manifest)
    return body, {"mediaType": media_type, "digest": str(sha256_digest(body)), "size": len(body)}


def index_body(children: list[dict[str, Any]], media_type: str = OCI_INDEX, **extra: Any) -> bytes:
    manifests = [{**c, "platform": {"architecture": f"arch{i}", "os": "linux"}} for i, c in enumerate(children)]
    return dumps({"schemaVersion": 2, "mediaType": media_type, "manifests": manifests, **extra})


__all__ = ["DOCKER_LIST", "DOCKER_MANIFEST", "OCI_INDEX", "OCI_MANIFEST", "Server", "server", "start_server"]
