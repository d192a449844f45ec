"""``GET /v2/<name>/tags/list`` over real HTTP: lexical order, ``n``/``last``
pagination with RFC 5988 ``Link`` headers, invalid ``n``, unknown
repositories, and 10,000 tags in one repository."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted

from registry.digest import sha256_digest
from registry.storage import paths
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.manifest_fixtures import OCI_MANIFEST, Server, image, server, start_server

__all__ = ["server"]

LINK_RE = re.compile(r'^<([^>]+)>; rel="next"$')


async def walk_pages(srv: Server, name: str, n: int) -> tuple[list[str], int]:
    """Follow ``Link`` headers from the first page of ``n``; returns every tag
    seen and the number of pages."""
    url: str | None = f"/v2/{name}/tags/list?n={n}"
    seen: list[str] = []
    pages = 0
    while url is not None:
        r = await srv.request("GET", url)
        assert r.status == 200, r.body
        body = r.json()
        assert body["name"] == name
        assert len(body["tags"]) <= n
        seen += body["tags"]
        pages += 1
        link = r.header("link")
        if link is None:
            url = None
            continue
        m = LINK_RE.match(link)
        assert m, link
        url = m.group(1)
        query = parse_qs(urlsplit(url).query)
        assert query["n"] == [str(n)] and query["last"] == [body["tags"][-1]]
    return seen, pages


@pytest_twisted.ensureDeferred
async def test_lexical_order_and_pagination(server: Server) -> None:
    body, _ = await image(server, "pg", layers=1)
    tags = ["b", "a", "B", "_x", "a.1", "a-1", "10", "9", "Z"]
    for tag in tags:
        assert (await server.put_manifest("pg", tag, body, OCI_MANIFEST)).status == 201
    expected = sorted(tags)
    r = await server.request("GET", "/v2/pg/tags/list")
    assert r.json() == {"name": "pg", "tags": expected}
    assert r.header("link") is None
    assert r.header("content-type") == "application/json"
    for n in (1, 2, 4, 8, 9, 10):
        seen, pages = await walk_pages(server, "pg", n)
        assert seen == expected
        assert pages == max(1, -(-len(tags) // n))
    r = await server.request("GET", "/v2/pg/tags/list?n=3&last=a")
    assert r.json()["tags"] == expected[expected.index("a") + 1 :][:3]
    # `last` need not be a tag: entries after it in lexical order.
    r = await server.request("GET", "/v2/pg/tags/list?last=a.0")
    assert r.json()["tags"] == [t for t in expected if t > "a.0"]
    r = await server.request("GET", "/v2/pg/tags/list?last=zzz")
    assert r.json()["tags"] == [] and r.header("link") is None
    r = await server.request("GET", "/v2/pg/tags/list?n=0")
    assert r.status == 200 and r.json()["tags"] == [] and r.header("link") is None


@pytest.mark.parametrize("n", ["-1", "x", "1.5", "", "0x10", " 1", "%2B1"])
@pytest_twisted.ensureDeferred
async def test_invalid_n(server: Server, n: str) -> None:
    body, _ = await image(server, "bad-n", layers=1)
    assert (await server.put_manifest("bad-n", "v1", body, OCI_MANIFEST)).status == 201
    r = await server.request("GET", f"/v2/bad-n/tags/list?n={n.replace(' ', '%20')}")
    assert r.status == 400, (n, r.body)
    assert r.error()["code"] == "PAGINATION_NUMBER_INVALID"
    assert "non-negative integer" in r.error()["message"]


@pytest_twisted.ensureDeferred
async def test_unknown_and_tagless_repositories(server: Server) -> None:
    r = await server.request("GET", "/v2/never/pushed/tags/list")
    assert r.status == 404 and r.error()["code"] == "NAME_UNKNOWN"
    assert "never/pushed" in r.error()["message"]
    # A repository with blobs but no tags exists: an empty list.
    await server.put_blob("blobs/only", b"data")
    r = await server.request("GET", "/v2/blobs/only/tags/list")
    assert r.status == 200 and r.json() == {"name": "blobs/only", "tags": []}
    # Untagging the last tag leaves a known, empty repository.
    body, _ = await image(server, "emptied", layers=1)
    assert (await server.put_manifest("emptied", "only", body, OCI_MANIFEST)).status == 201
    assert (await server.request("DELETE", "/v2/emptied/manifests/only")).status == 202
    r = await server.request("GET", "/v2/emptied/tags/list")
    assert r.status == 200 and r.json()["tags"] == []


@pytest_twisted.ensureDeferred
async def test_a_thousand_tags_through_the_in_memory_driver(server: Server) -> None:
    """Tags written by the data model into the in-memory driver (its writes
    cost O(objects) each, so a thousand here; 10,000 below on disk)."""
    model = DataModel.over(server.driver)
    d = sha256_digest(b"m")
    tags = [f"t{i}" for i in range(1000)]
    for tag in tags:
        await model.tags.tag("many", tag, d)
    seen, pages = await walk_pages(server, "many", 300)
    assert seen == sorted(tags) and pages == 4


def write_distribution_tags(root: Path, name: str, tags: list[str], digest: str) -> None:
    """Write tags' current links as Distribution lays them out (plain files,
    before the registry starts; the index links are left out to keep this
    quick, listing never reads them)."""
    base = root / paths.tags_dir(name).lstrip("/")
    for tag in tags:
        directory = base / tag / "current"
        os.makedirs(directory)
        (directory / "link").write_text(digest)


@pytest_twisted.ensureDeferred
async def test_ten_thousand_tags(tmp_path: Path) -> None:
    tags = [f"v{i}" for i in range(10_000)] + ["latest", "_first", "Z"]
    digest = str(sha256_digest(b"manifest"))
    write_distribution_tags(tmp_path, "big/repo", tags, digest)
    srv = await start_server(driver=create_driver("filesystem", {"rootdirectory": str(tmp_path)}))
    try:
        r = await srv.request("GET", "/v2/big/repo/tags/list")
        assert r.json()["tags"] == sorted(tags)
        seen, pages = await walk_pages(srv, "big/repo", 1000)
        assert seen == sorted(tags) and pages == 11
        r = await srv.request("GET", "/v2/big/repo/tags/list?n=2&last=v9998")
        assert r.json()["tags"] == ["v9999"] and r.header("link") is None
    finally:
        await srv.port.stopListening()
