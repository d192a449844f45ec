"""http.prefix, http.host with http.relativeurls, and http.headers."""

from __future__ import annotations

import pytest_twisted
import treq

from registry.storage.factory import create_driver
from tests.api.conftest import _serve, sha


@pytest_twisted.ensureDeferred
async def test_prefix_moves_the_api_and_its_urls() -> None:
    async for s in _serve(create_driver("inmemory", {}), prefix="/reg/"):
        assert (await treq.get(s.url + "/v2/")).code == 404
        r = await treq.get(s.url + "/reg/v2/")
        assert r.code == 200
        r = await treq.post(s.url + "/reg/v2/a/blobs/uploads/")
        assert r.code == 202
        location = r.headers.getRawHeaders("location")[0]
        assert location.startswith("/reg/v2/a/blobs/uploads/")
        r = await treq.put(f"{s.url}{location}?digest={sha(b'')}")
        assert r.code == 201
        assert r.headers.getRawHeaders("location") == [f"/reg/v2/a/blobs/{sha(b'')}"]


@pytest_twisted.ensureDeferred
async def test_host_gives_absolute_urls_unless_relative_urls() -> None:
    driver = create_driver("inmemory", {})
    async for s in _serve(driver, base_url="https://registry.example:8443/"):
        r = await treq.post(s.url + "/v2/a/blobs/uploads/")
        assert r.headers.getRawHeaders("location")[0].startswith("https://registry.example:8443/v2/a/blobs/uploads/")
    async for s in _serve(driver, base_url="https://registry.example:8443", relative_urls=True):
        r = await treq.post(s.url + "/v2/a/blobs/uploads/")
        assert r.headers.getRawHeaders("location")[0].startswith("/v2/a/blobs/uploads/")


@pytest_twisted.ensureDeferred
async def test_configured_headers_on_every_response() -> None:
    headers = {"X-Content-Type-Options": ["nosniff"], "X-Multi": ["a", "b"]}
    async for s in _serve(create_driver("inmemory", {}), extra_headers=headers):
        for r in (await treq.get(s.url + "/v2/"), await treq.get(s.url + "/v2/a/blobs/" + sha(b"x"))):
            assert r.headers.getRawHeaders("x-content-type-options") == ["nosniff"]
            assert r.headers.getRawHeaders("x-multi") == ["a", "b"]
