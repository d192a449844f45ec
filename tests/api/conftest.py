"""A registry served by a real Site on a free 127.0.0.1 port, over the
in-memory or filesystem driver, talked to with real treq over sockets."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor

from registry.app import make_root
from registry.http import RegistrySite
from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver


@dataclass
class Server:
    url: str
    driver: IStorageDriver

    def blob_url(self, name: str, digest: str) -> str:
        return f"{self.url}/v2/{name}/blobs/{digest}"

    async def files(self) -> dict[str, bytes]:
        """Every object in storage with its content (to check nothing changed)."""
        out = {}
        for info in await self.driver.walk("/"):
            if not info.is_dir:
                out[info.path] = await self.driver.get_content(info.path)
        return out

    async def start_upload(self, name: str) -> str:
        r = await treq.post(f"{self.url}/v2/{name}/blobs/uploads/")
        assert r.code == 202, await r.text()
        return self.url + r.headers.getRawHeaders("location")[0]

    async def push_blob(self, name: str, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = await treq.post(f"{self.url}/v2/{name}/blobs/uploads/?digest={digest}", data=data)
        assert r.code == 201, await r.text()
        return digest


async def _serve(driver: IStorageDriver, **kw: Any) -> AsyncIterator[Server]:
    port = reactor.listenTCP(0, RegistrySite(make_root(driver, **kw)), interface="127.0.0.1")
    try:
        yield Server(f"http://127.0.0.1:{port.getHost().port}", driver)
    finally:
        await port.stopListening()
        closer = getattr(driver, "close", None)
        if closer is not None:
            await closer()


@pytest.fixture(params=["inmemory", "filesystem"])
def driver_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_twisted.async_yield_fixture
async def server(driver_name: str, tmp_path: Path) -> AsyncIterator[Server]:
    """Deletes enabled; over each driver."""
    params = {"rootdirectory": str(tmp_path / "store")} if driver_name == "filesystem" else {}
    async for s in _serve(create_driver(driver_name, params), delete_enabled=True):
        yield s


@pytest_twisted.async_yield_fixture
async def mem_server() -> AsyncIterator[Server]:
    """In-memory, deletes enabled: for behaviour that does not depend on the driver."""
    async for s in _serve(create_driver("inmemory", {}), delete_enabled=True):
        yield s


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


async def error_code(response: Any) -> str:
    body = await response.json()
    assert set(body) == {"errors"}, body
    err = body["errors"][0]
    assert err["message"], body
    return str(err["code"])
