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


@pytest_twisted.ensureDeferred
async def test_a_page_of_the_catalog_lists_about_a_page_of_directories() -> None:
    """``?n=`` pages of a big registry cost about ``n`` directory listings,
    not a walk of every repository; without ``n`` the whole list comes."""
    import hashlib

    from registry.digest import Digest
    from registry.storage.factory import create_driver
    from registry.storage.model import DataModel
    from tests.manifest_fixtures import start_server
    from tests.ui.test_speed import Counting

    inner = create_driver("inmemory", {})
    model = DataModel.over(inner)
    blob = b"a layer"
    digest = Digest.parse("sha256:" + hashlib.sha256(blob).hexdigest())
    await model.blobs.put_content(digest, blob)
    names = [f"org{i % 20:02d}/repo{i:04d}" for i in range(2000)]
    for name in names:
        await model.blobs.descriptors.link(name, digest)
    counting = Counting(inner)
    srv = await start_server(driver=counting)  # type: ignore[arg-type]  # a pass-through wrapper
    try:
        ordered = sorted(names)
        for path, expected in (("/v2/_catalog?n=10", ordered[:10]),
                               (f"/v2/_catalog?n=10&last={ordered[1234]}", ordered[1235:1245])):
            counting.lists = 0
            r = await srv.request("GET", path)
            assert r.json()["repositories"] == expected
            link = r.header("link")
            assert link is not None and f"last={expected[-1].replace('/', '%2F')}" in link
            # The top listing, the organisations before the page and one per name.
            assert counting.lists < 40, (path, counting.lists)
        counting.lists = 0
        r = await srv.request("GET", "/v2/_catalog")
        assert r.json()["repositories"] == ordered and r.header("link") is None
        assert counting.lists > 2000
    finally:
        await srv.port.stopListening()
