"""The debug listener's Prometheus page over real HTTP: request counts by
route, method and status, durations, bytes, uploads in progress, storage
driver latency, process metrics; labels bounded."""

from __future__ import annotations

import socket
from typing import Any, AsyncIterator

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.app import make_application
from registry.config import load_config

from .conftest import REGISTRY_YAML, Running, run_registry, sha

DEBUG_YAML = REGISTRY_YAML + "  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n      path: /prom\n"


@pytest_twisted.async_yield_fixture
async def registry() -> AsyncIterator[Running]:
    async with run_registry(DEBUG_YAML) as r:
        yield r


async def scrape(r: Running) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    resp = await treq.get(f"{r.debug_url}/prom")
    assert resp.code == 200
    assert resp.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=")
    text = await resp.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_debug_listener_is_off_by_default() -> None:
    app = make_application(load_config(REGISTRY_YAML, {}), reactor)
    assert [listener.name for listener in app.listeners] == ["main"]


@pytest_twisted.ensureDeferred
async def test_requests_bytes_and_driver_operations(registry: Running) -> None:
    data = b"layer bytes " * 1000
    await registry.push_blob("team/app", data)
    got = await treq.get(f"{registry.url}/v2/team/app/blobs/{sha(data)}")
    assert await got.content() == data
    missing = await treq.get(f"{registry.url}/v2/other/repo/manifests/latest")
    assert missing.code == 404
    await missing.content()
    await (await treq.get(f"{registry.url}/not/an/endpoint")).content()

    text, samples = await scrape(registry)
    # Distribution's names and labels (handler, code, lower-case method).
    assert value(samples, "registry_http_requests_total", handler="blob_upload", method="post", code="201") == 1
    assert value(samples, "registry_http_requests_total", handler="blob", method="get", code="200") == 1
    assert value(samples, "registry_http_requests_total", handler="manifest", method="get", code="404") == 1
    assert value(samples, "registry_http_requests_total", handler="unknown", method="get", code="404") == 1
    assert value(samples, "registry_http_request_duration_seconds_count", handler="blob", method="get") == 1
    assert value(samples, "registry_http_request_size_bytes_sum", handler="blob_upload") == len(data)
    assert value(samples, "registry_http_response_size_bytes_sum", handler="blob") == len(data)
    assert value(samples, "registry_http_response_size_bytes_count", handler="blob") == 1
    assert value(samples, "registry_uploads_in_progress") == 0
    # Storage operations, by driver and action, with their latency.
    assert value(samples, "registry_storage_action_seconds_count", driver="inmemory", action="Writer") >= 1
    assert value(samples, "registry_storage_action_seconds_count", driver="inmemory", action="Stat") >= 1
    assert value(samples, "registry_storage_action_errors_total", driver="inmemory", action="GetContent") >= 1
    # The usual process metrics.
    assert value(samples, "process_resident_memory_bytes") > 0
    assert any(name == "python_info" for name, _ in samples)
    # Bounded labels: no repository names or digests.
    assert "team/app" not in text and "other/repo" not in text and sha(data) not in text


@pytest_twisted.ensureDeferred
async def test_uploads_in_progress_while_a_body_streams(registry: Running) -> None:
    r = await treq.post(f"{registry.url}/v2/big/blobs/uploads/")
    assert r.code == 202
    location = r.headers.getRawHeaders("location")[0]
    await r.content()
    port = int(registry.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port))
    try:
        sock.sendall(
            f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: 100000\r\n\r\n".encode()
            + b"x" * 1000
        )
        for _ in range(100):
            _, samples = await scrape(registry)
            if value(samples, "registry_uploads_in_progress") == 1:
                break
            await deferLater(reactor, 0.02, lambda: None)
        assert value(samples, "registry_uploads_in_progress") == 1
    finally:
        sock.close()
    for _ in range(100):
        _, samples = await scrape(registry)
        if value(samples, "registry_uploads_in_progress") == 0:
            break
        await deferLater(reactor, 0.02, lambda: None)
    assert value(samples, "registry_uploads_in_progress") == 0


@pytest_twisted.ensureDeferred
async def test_metrics_disabled_leaves_health_only() -> None:
    async with run_registry(REGISTRY_YAML + "  debug:\n    addr: 127.0.0.1:0\n") as r:
        resp = await treq.get(f"{r.debug_url}/metrics")
        assert resp.code == 404
        assert "/debug/health" in await resp.text()
        health = await treq.get(f"{r.debug_url}/debug/health")
        assert health.code == 200
        assert await health.json() == {}


@pytest_twisted.ensureDeferred
async def test_cache_hits_and_misses(tmp_path: Any) -> None:
    # Every cache: the in-process content and tag caches and, with
    # storage.cache.blobdescriptor, the blob-descriptor cache; Distribution
    # 2.8's registry_storage_cache_total{type} plus which cache.
    yaml_text = (
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n  cache:\n    blobdescriptor: inmemory\n"
        "http:\n  addr: 127.0.0.1:0\n  debug:\n    addr: 127.0.0.1:0\n    prometheus:\n      enabled: true\n      path: /prom\n"
    )
    async with run_registry(yaml_text) as r:
        digest, manifest = await r.push_manifest("team/cached", "v1", [b"cached layer"])
        for _ in range(3):
            got = await treq.get(
                f"{r.url}/v2/team/cached/manifests/{digest}",
                headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
            )
            assert await got.content() == manifest
            head = await treq.head(f"{r.url}/v2/team/cached/blobs/{sha(b'cached layer')}")
            assert head.code == 200
            by_tag = await treq.get(
                f"{r.url}/v2/team/cached/manifests/v1", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}
            )
            assert await by_tag.content() == manifest
        _, samples = await scrape(r)
        for cache in ("content", "tags", "blobdescriptor"):
            hits = value(samples, "registry_storage_cache_total", cache=cache, type="Hit")
            misses = value(samples, "registry_storage_cache_total", cache=cache, type="Miss")
            assert hits >= 2 and misses >= 1, (cache, hits, misses)
            assert value(samples, "registry_storage_cache_total", cache=cache, type="Request") == hits + misses
            assert value(samples, "registry_storage_cache_total", cache=cache, type="Error") == 0
