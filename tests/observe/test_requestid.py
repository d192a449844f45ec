"""Request ids over real HTTP: kept when well formed, made otherwise, echoed
in the response and in the access log line."""

from __future__ import annotations

import uuid
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
import treq
from twisted.logger import LogEvent, globalLogPublisher

from registry.logs import ACCESS_NAMESPACE
from registry.observe.requestid import choose_request_id

from .conftest import REGISTRY_YAML, Running, run_registry


@pytest_twisted.async_yield_fixture
async def registry() -> AsyncIterator[Running]:
    async with run_registry(REGISTRY_YAML) as r:
        yield r


@pytest.fixture
def access_events() -> Any:
    events: list[LogEvent] = []

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def test_choose_request_id() -> None:
    assert choose_request_id(b"abc-123") == "abc-123"
    assert choose_request_id(b" trace.id:42/x ") == "trace.id:42/x"
    for bad in (None, b"", b"has space", b"x" * 129, b"new\nline", b"-leading", "caf\u00e9".encode()):
        made = choose_request_id(bad)
        assert str(uuid.UUID(made)) == made


@pytest_twisted.ensureDeferred
async def test_incoming_id_is_kept_and_logged(registry: Running, access_events: list[LogEvent]) -> None:
    r = await treq.get(f"{registry.url}/v2/", headers={"X-Request-Id": "client-id-1"})
    assert r.code == 200
    assert r.headers.getRawHeaders("x-request-id") == ["client-id-1"]
    await r.content()
    assert [e.get("request_id") for e in access_events] == ["client-id-1"]


@pytest_twisted.ensureDeferred
async def test_malformed_id_is_replaced_and_errors_carry_one(registry: Running, access_events: list[LogEvent]) -> None:
    r = await treq.get(f"{registry.url}/v2/nope/manifests/latest", headers={"X-Request-Id": "bad id with spaces"})
    assert r.code == 404
    (made,) = r.headers.getRawHeaders("x-request-id")
    assert str(uuid.UUID(made)) == made
    await r.content()
    r2 = await treq.get(f"{registry.url}/nowhere")
    assert r2.code == 404
    (other,) = r2.headers.getRawHeaders("x-request-id")
    assert other != made
    await r2.content()
    assert [e.get("request_id") for e in access_events] == [made, other]


@pytest_twisted.ensureDeferred
async def test_json_access_line_has_the_request_id_and_log_fields(registry: Running) -> None:
    import io
    import json

    from registry.config import LogConfig
    from registry.logs import setup_logging

    out = io.StringIO()
    observer = setup_logging(LogConfig(level="info", formatter="json", fields={"service": "registry"}), out)
    try:
        r = await treq.get(f"{registry.url}/v2/", headers={"X-Request-Id": "json-line-1"})
        await r.content()
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    (access,) = [line for line in lines if line["namespace"] == ACCESS_NAMESPACE]
    assert access["request_id"] == "json-line-1" and access["service"] == "registry"
    assert "request_id=json-line-1" in access["message"]
