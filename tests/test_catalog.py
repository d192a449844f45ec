"""``GET /v2/_catalog`` over real HTTP: nested names, repositories with only
blobs, sorted pagination with ``Link`` headers, invalid ``n``."""

from __future__ import annotations

import re

import pytest_twisted

from tests.manifest_fixtures import OCI_MANIFEST, Server, image, server

__all__ = ["server"]


@pytest_twisted.ensureDeferred
async def test_empty_registry(server: Server) -> None:
    r = await server.request("GET", "/v2/_catalog")
    assert r.status == 200 and r.json() == {"repositories": []}


@pytest_twisted.ensureDeferred
async def test_catalog_lists_nested_repositories_sorted_and_paginates(server: Server) -> None:
    names = ["b", "a", "a/b", "a/b/c", "a-b", "z/y/x", "library/ubuntu"]
    for name in names:
        body, _ = await image(server, name, layers=1)
        assert (await server.put_manifest(name, "v1", body, OCI_MANIFEST)).status == 201
    await server.put_blob("only/blobs", b"layer")
    # An upload in progress alone does not make a repository.
    assert (await server.request("POST", "/v2/only/uploads/blobs/uploads/")).status == 202
    expected = sorted(names + ["only/blobs"])
    r = await server.request("GET", "/v2/_catalog")
    assert r.json() == {"repositories": expected}
    assert r.header("link") is None

    seen: list[str] = []
    url: str | None = "/v2/_catalog?n=3"
    while url is not None:
        r = await server.request("GET", url)
        page = r.json()["repositories"]
        assert 0 < len(page) <= 3
        seen += page
        link = r.header("link")
        url = None
        if link is not None:
            m = re.match(r'^<(/v2/_catalog\?n=3&last=[^>]+)>; rel="next"$', link)
            assert m, link
            url = m.group(1)
    assert seen == expected
    r = await server.request("GET", "/v2/_catalog?n=2&last=a%2Fb")
    assert r.json()["repositories"] == expected[expected.index("a/b") + 1 :][:2]
    r = await server.request("GET", "/v2/_catalog?n=0")
    assert r.json() == {"repositories": []}
    r = await server.request("GET", "/v2/_catalog?n=-5")
    assert r.status == 400 and r.error()["code"] == "PAGINATION_NUMBER_INVALID"
