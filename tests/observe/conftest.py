"""A registry built by ``make_application`` from a YAML configuration and run
by ``RegistryService`` (the tap's service: its listeners on 127.0.0.1 with
free ports, its services), plus a real webhook receiver."""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from registry.app import RegistryApplication, make_application
from registry.config import load_config
from registry.tap import RegistryService


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass
class Running:
    url: str
    debug_url: str | None
    application: RegistryApplication
    service: RegistryService

    async def push_blob(self, name: str, data: bytes, headers: dict[str, str] | None = None) -> Any:
        r = await treq.post(f"{self.url}/v2/{name}/blobs/uploads/?digest={sha(data)}", data=data, headers=headers)
        assert r.code == 201, await r.text()
        return r

    async def push_manifest(self, name: str, tag: str, layers: list[bytes]) -> tuple[str, bytes]:
        config = b'{"architecture":"amd64","os":"linux"}'
        for blob in [config, *layers]:
            await self.push_blob(name, blob)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": len(config)},
                "layers": [
                    {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha(b), "size": len(b)} for b in layers
                ],
            }
        ).encode()
        r = await treq.put(
            f"{self.url}/v2/{name}/manifests/{tag}",
            data=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.code == 201, await r.text()
        return sha(manifest), manifest


@asynccontextmanager
async def run_registry(yaml_text: str) -> AsyncIterator[Running]:
    config = load_config(yaml_text, {})
    application = make_application(config, reactor)
    service = RegistryService(config, application, None, reactor)
    service.startService()
    try:
        port = await service.when_listening("main")
        url = f"http://127.0.0.1:{port.getHost().port}"
        debug_url = None
        if config.http.debug.addr is not None:
            debug_port = await service.when_listening("debug")
            debug_url = f"http://127.0.0.1:{debug_port.getHost().port}"
        yield Running(url, debug_url, application, service)
    finally:
        await service.stopService()


REGISTRY_YAML = """\
version: 0.1
storage:
  inmemory: {}
  delete: {enabled: true}
http:
  addr: 127.0.0.1:0
"""


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1: records what arrives; ``mode`` says
    how it answers (``ok``, ``fail``: 500, ``hang``: never)."""

    url: str = ""
    mode: str = "ok"
    envelopes: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    attempts: int = 0
    #: ``time.monotonic()`` of each POST's arrival.
    attempt_times: list[float] = field(default_factory=list)
    hanging: list[Request] = field(default_factory=list)
    waiters: list[tuple[Callable[[], bool], Deferred[None]]] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for env in self.envelopes for e in env["events"]]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        if predicate():
            d.callback(None)
            return d
        self.waiters.append((predicate, d))
        d.addTimeout(timeout, reactor)
        return d

    def _check(self) -> None:
        for item in list(self.waiters):
            predicate, d = item
            if not d.called and predicate():
                self.waiters.remove(item)
                d.callback(None)


class _Hook(Resource):
    isLeaf = True

    def __init__(self, receiver: Receiver) -> None:
        super().__init__()
        self.receiver = receiver

    def render_POST(self, request: Request) -> Any:
        rec = self.receiver
        rec.attempts += 1
        rec.attempt_times.append(time.monotonic())
        if rec.mode == "hang":
            rec.hanging.append(request)
            reactor.callLater(0, rec._check)
            return NOT_DONE_YET
        if rec.mode == "fail":
            request.setResponseCode(500)
            reactor.callLater(0, rec._check)
            return b"no"
        assert request.content is not None
        rec.envelopes.append(json.loads(request.content.read()))
        rec.requests.append(request)
        reactor.callLater(0, rec._check)
        return b""


@pytest_twisted.async_yield_fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    port = reactor.listenTCP(0, Site(_Hook(rec)), interface="127.0.0.1")
    rec.url = f"http://127.0.0.1:{port.getHost().port}/hook"
    try:
        yield rec
    finally:
        for request in rec.hanging:
            if not request.finished and not request._disconnected:
                request.finish()
        await port.stopListening()
