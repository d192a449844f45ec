"""The web page's resource, through ``treq.testing.StubTreq`` (a real Site
over an in-memory transport) over the in-memory driver: what each page
shows, escaping, security headers, CSRF, errors and pagination."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pytest_twisted
from treq.testing import StubTreq

from registry.digest import Digest
from registry.resources.context import Context
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from registry.ui import UIResource
from registry.ui.csrf import COOKIE
from registry.ui.resource import CONTENT_SECURITY_POLICY, REPOSITORIES_PER_PAGE
from tests.ui.content import HOSTILE, image, index, referrer, store

BASE = "http://registry.test"


@dataclass
class Page:
    code: int
    headers: Any
    text: str

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None


class UI:
    """A UIResource over a fresh in-memory data model, and a StubTreq on it."""

    def __init__(self, delete_enabled: bool = True, access: Any = None, readonly: bool = False) -> None:
        self.model = DataModel.over(create_driver("inmemory", {}))
        self.resource = UIResource(Context(self.model, delete_enabled=delete_enabled, readonly=readonly), access)
        self.stub = StubTreq(self.resource)

    async def request(self, method: str, path: str, **kw: Any) -> Page:
        # Each request carries only the cookies the test gives: StubTreq's
        # client keeps a jar, which adds its cookies only to a request
        # without a Cookie header. Redirects are the test's to follow.
        headers = dict(kw.pop("headers", None) or {})
        headers.setdefault("Cookie", "unrelated=1")
        kw["headers"] = headers
        kw.setdefault("allow_redirects", False)
        d = self.stub.request(method, BASE + path, **kw)
        self.stub.flush()
        response = await d
        body = await response.text("utf-8")
        return Page(response.code, response.headers, body)

    async def get(self, path: str, **kw: Any) -> Page:
        return await self.request("GET", path, **kw)


def rows(html: str, cls: str) -> list[str]:
    return re.findall(rf'<tr class="{cls}"[^>]*>(.*?)</tr>', html)


def links(html: str) -> list[str]:
    return [h.replace("&amp;", "&") for h in re.findall(r'href="([^"]+)"', html)]


@pytest_twisted.ensureDeferred
async def test_repository_list_pages_through_the_catalog_and_filters_by_prefix() -> None:
    ui = UI()
    one = image("shared")
    names = [f"team/app{i:03d}" for i in range(70)] + ["library/alpine", "library/ubuntu", "solo"]
    for name in names:
        await store(ui.model, name, one, "latest")
    first = await ui.get("/ui/")
    assert first.code == 200
    shown = re.findall(r'<li class="repository"><a href="[^"]+">([^<]+)</a>', first.text)
    assert shown == sorted(names)[:REPOSITORIES_PER_PAGE]
    nexts = [h for h in links(first.text) if "last=" in h]
    assert nexts == [f"/ui/?last={shown[-1].replace('/', '%2F')}"]
    second = await ui.get(nexts[0])
    rest = re.findall(r'<li class="repository"><a href="[^"]+">([^<]+)</a>', second.text)
    assert rest == sorted(names)[REPOSITORIES_PER_PAGE:]
    assert "Next page" not in second.text and "First page" in second.text

    filtered = await ui.get("/ui/?q=library%2F")
    assert re.findall(r'<li class="repository"><a href="([^"]+)">([^<]+)</a>', filtered.text) == [
        ("/ui/r/library/alpine", "library/alpine"),
        ("/ui/r/library/ubuntu", "library/ubuntu"),
    ]
    assert 'value="library/"' in filtered.text
    nothing = await ui.get("/ui/?q=zzz")
    assert nothing.code == 200 and "No repositories" in nothing.text


@pytest_twisted.ensureDeferred
async def test_repository_page_lists_tags_with_digest_type_size_created_and_platforms() -> None:
    ui = UI()
    amd = image("amd", arch="amd64")
    arm = image("arm", arch="arm64", created=None)
    multi = index((amd, {"os": "linux", "architecture": "amd64"}), (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"}))
    d_amd = await store(ui.model, "app", amd, "v1")
    await store(ui.model, "app", arm, "arm-only")
    d_multi = await store(ui.model, "app", multi, "multi")
    page = await ui.get("/ui/r/app")
    assert page.code == 200
    by_tag = {re.search(r'data-tag="([^"]+)"', r).group(0)[10:-1]: r for r in re.findall(r'<tr class="tag-row".*?</tr>', page.text)}  # type: ignore[union-attr]
    assert sorted(by_tag) == ["arm-only", "multi", "v1"]
    v1 = by_tag["v1"]
    assert str(d_amd) in v1 and "OCI image" in v1 and "2024-05-06T07:08:09Z" in v1
    amd_size = sum(len(b) for b in amd.blobs)
    assert f'title="{amd_size} bytes"' in v1
    assert 'href="/ui/r/app/-/manifest/v1"' in v1
    assert "2024" not in by_tag["arm-only"].split("created")[1][:40]  # no created in its config
    m = by_tag["multi"]
    assert str(d_multi) in m and "OCI index" in m
    assert re.findall(r'<span class="platform">([^<]+)</span>', m) == ["linux/amd64", "linux/arm64/v8"]
    arm_size = sum(len(b) for b in arm.blobs)
    assert f'title="{amd_size + arm_size} bytes"' in m
    assert "3 tags" in page.text


@pytest_twisted.ensureDeferred
async def test_repository_tags_paginate() -> None:
    ui = UI()
    one = image("one")
    tags = [f"t{i:03d}" for i in range(230)]
    for tag in tags:
        await store(ui.model, "many", one, tag)
    page = await ui.get("/ui/r/many")
    shown = re.findall(r'data-tag="([^"]+)"', page.text)
    assert shown == tags[:100] and "230 tags" in page.text
    following = [h for h in links(page.text) if "last=" in h]
    assert following == ["/ui/r/many?last=t099"]
    page2 = await ui.get(following[0])
    assert re.findall(r'data-tag="([^"]+)"', page2.text) == tags[100:200]
    assert "/ui/r/many" in links(page2.text)  # previous: the first page
    page3 = await ui.get("/ui/r/many?last=t199&n=50")
    assert re.findall(r'data-tag="([^"]+)"', page3.text) == tags[200:]
    assert "/ui/r/many?last=t149&n=50" in links(page3.text)
    assert (await ui.get("/ui/r/many?n=0")).code == 400
    assert (await ui.get("/ui/r/many?n=abc")).code == 400


@pytest_twisted.ensureDeferred
async def test_manifest_page_shows_layers_config_referrers_and_pull_lines() -> None:
    ui = UI()
    img = image("web", labels={"org.opencontainers.image.source": "https://example.test/web"})
    d = await store(ui.model, "library/web", img, "1.0")
    sig = referrer(img, "application/vnd.dev.cosign.artifact.sig.v1+json")
    sbom = referrer(img, "application/spdx+json", {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"})
    d_sig = await store(ui.model, "library/web", sig)
    await store(ui.model, "library/web", sbom)
    for ref in ("1.0", str(d)):
        page = await ui.get(f"/ui/r/library/web/-/manifest/{ref}")
        assert page.code == 200, page.text
        text = page.text
        assert str(d) in text and "application/vnd.oci.image.manifest.v1+json" in text
        layers = rows(text, "layer")
        assert len(layers) == 2 and all("application/vnd.oci.image.layer.v1.tar+gzip" in r for r in layers)
        assert f'title="{len(img.blobs[1])} bytes"' in layers[0]
        # Config: env, entrypoint, labels, diff_ids, history, and the whole JSON.
        for expected in ("SEED=web", "[\"/bin/app\", \"--serve\"]", "org.opencontainers.image.source",
                         "https://example.test/web", "rootfs.diff_ids", "ADD file:web in /", "Config JSON", "\"diff_ids\": ["):
            assert expected in text, expected
        referrers = rows(text, "referrer")
        assert len(referrers) == 2
        assert {re.search(r'class="artifact-type">([^<]+)<', r).group(1) for r in referrers} == {  # type: ignore[union-attr]
            "application/vnd.dev.cosign.artifact.sig.v1+json", "application/spdx+json"}
        assert f'href="/ui/r/library/web/-/manifest/{d_sig}"' in text
        image_ref = "library/web:1.0" if ref == "1.0" else f"library/web@{d}"
        assert f"docker pull registry.test/{image_ref}" in text
        assert f"skopeo copy --src-tls-verify=false docker://registry.test/{image_ref} oci-archive:web.tar" in text
    # The referrer's own page links back to its subject.
    sig_page = await ui.get(f"/ui/r/library/web/-/manifest/{d_sig}")
    assert f'href="/ui/r/library/web/-/manifest/{d}"' in sig_page.text
    assert "application/vnd.dev.cosign.artifact.sig.v1+json" in sig_page.text


@pytest_twisted.ensureDeferred
async def test_index_page_lists_platforms_with_links() -> None:
    ui = UI()
    amd, arm = image("a"), image("b", arch="arm64")
    multi = index((amd, {"os": "linux", "architecture": "amd64"}), (arm, {"os": "linux", "architecture": "arm", "variant": "v7"}))
    await store(ui.model, "multi", multi, "latest")
    page = await ui.get("/ui/r/multi/-/manifest/latest")
    children = rows(page.text, "child")
    assert [re.search(r'class="platform">([^<]+)<', c).group(1) for c in children] == ["linux/amd64", "linux/arm/v7"]  # type: ignore[union-attr]
    assert f'href="/ui/r/multi/-/manifest/{amd.digest}"' in children[0]
    assert "skopeo copy --all " in page.text


@pytest_twisted.ensureDeferred
async def test_hostile_text_is_shown_as_text_everywhere() -> None:
    ui = UI()
    img = image("evil", labels={"x": HOSTILE, HOSTILE: "key"}, annotations={"note": HOSTILE})
    await store(ui.model, "evil", img, "latest")
    await store(ui.model, "evil", referrer(img, "application/example", {"a": HOSTILE}))
    for path in ("/ui/r/evil/-/manifest/latest", "/ui/r/evil", "/ui/?q=%3Cscript%3E", "/ui/?last=%3Cscript%3E",
                 "/ui/r/evil?deleted_tag=%3Cscript%3E", "/ui/r/evil/-/manifest/%3Cscript%3E"):
        page = await ui.get(path)
        assert "<script" not in page.text.lower(), path
    page = await ui.get("/ui/r/evil/-/manifest/latest")
    assert page.text.count("&lt;script&gt;alert(") >= 5  # label value and key, annotation, referrer annotation, JSON
    assert "&lt;script&gt;" in (await ui.get("/ui/?q=%3Cscript%3E")).text


@pytest_twisted.ensureDeferred
async def test_every_response_has_the_security_headers_and_the_stylesheet_is_cached() -> None:
    ui = UI()
    await store(ui.model, "a", image("a"), "v1")
    for path in ("/ui/", "/ui/r/a", "/ui/r/a/-/manifest/v1", "/ui/r/missing", "/ui/nowhere"):
        page = await ui.get(path)
        assert page.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY, path
        assert page.header("X-Content-Type-Options") == "nosniff"
        assert page.header("X-Frame-Options") == "DENY"
        assert page.header("Cache-Control") == "no-store"
        assert page.header("Content-Type") == "text/html; charset=utf-8"
    assert "script-src" not in CONTENT_SECURITY_POLICY and "default-src 'none'" in CONTENT_SECURITY_POLICY
    home = await ui.get("/ui/")
    css = re.search(r'<link rel="stylesheet" href="([^"]+)"', home.text).group(1)  # type: ignore[union-attr]
    sheet = await ui.get(css)
    assert sheet.code == 200 and sheet.header("Content-Type") == "text/css; charset=utf-8"
    assert sheet.header("Cache-Control") == "public, max-age=31536000, immutable"
    assert sheet.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    assert "--accent" in sheet.text and "@import" not in sheet.text and "url(" not in sheet.text
    assert (await ui.get("/ui/static/style-0000000000000000.css")).code == 404
    head = await ui.request("HEAD", "/ui/r/a")
    assert head.code == 200 and head.text == "" and head.header("Content-Security-Policy") == CONTENT_SECURITY_POLICY
    redirect = await ui.request("GET", "/ui", allow_redirects=False)
    assert redirect.code == 301 and redirect.header("Location") == "/ui/"


@pytest_twisted.ensureDeferred
async def test_not_found_and_bad_requests_are_pages_with_a_message() -> None:
    ui = UI()
    d = await store(ui.model, "a", image("a"), "v1")
    other = Digest("sha256", "0" * 64)
    cases = {
        "/ui/r/missing": (404, "not known"),
        "/ui/r/a/-/manifest/nope": (404, "manifest"),
        f"/ui/r/a/-/manifest/{other}": (404, "manifest"),
        "/ui/r/missing/-/manifest/v1": (404, "manifest"),
        "/ui/r/a/-/manifest/sha256:123": (400, "digest"),
        "/ui/r/a/-/manifest/bad%20tag": (400, "tag"),
        "/ui/r/UPPER": (404, "repository"),
        "/ui/r/a/-/elsewhere": (404, "no such page"),
        "/ui/whatever": (404, "no such page"),
    }
    for path, (code, words) in cases.items():
        page = await ui.get(path)
        assert page.code == code, (path, page.code, page.text)
        assert words in page.text.lower(), (path, page.text)
        assert "<h1>" in page.text
    # The same digest through another repository is not there.
    await store(ui.model, "b", image("b"), "v1")
    assert (await ui.get(f"/ui/r/b/-/manifest/{d}")).code == 404
    wrong = await ui.request("PUT", "/ui/r/a")
    assert wrong.code == 405 and wrong.header("Allow") == "GET, HEAD"


async def confirm(ui: UI, query: str, cookie: str | None = None) -> tuple[str, str]:
    """GET the confirmation page; return (cookie nonce, form token)."""
    headers = {"Cookie": f"{COOKIE.decode()}={cookie}"} if cookie else {}
    page = await ui.get(f"/ui/r/app/-/delete?{query}", headers=headers)
    assert page.code == 200, page.text
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', page.text).group(1)  # type: ignore[union-attr]
    if cookie is None:
        set_cookie = page.header("Set-Cookie") or ""
        assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/ui/" in set_cookie, set_cookie
        cookie = re.match(rf"{COOKIE.decode()}=([0-9a-f]+)", set_cookie).group(1)  # type: ignore[union-attr]
    return cookie, token


async def post_delete(ui: UI, form: dict[str, str], cookie: str | None, **headers: str) -> Page:
    h = {"Content-Type": "application/x-www-form-urlencoded", **headers}
    if cookie:
        h["Cookie"] = f"{COOKIE.decode()}={cookie}"
    from urllib.parse import urlencode

    return await ui.request("POST", "/ui/r/app/-/delete", data=urlencode(form).encode(), headers=h)


@pytest_twisted.ensureDeferred
async def test_delete_a_tag_needs_the_forms_token_and_its_cookie() -> None:
    ui = UI()
    d = await store(ui.model, "app", image("a"), "old")
    await ui.model.tags.tag("app", "keep", d)
    cookie, token = await confirm(ui, "tag=old")
    refused = [
        ({"tag": "old"}, cookie),  # no token
        ({"tag": "old", "csrf": token}, None),  # no cookie
        ({"tag": "old", "csrf": "0" * 64}, cookie),  # a forged token
        ({"tag": "old", "csrf": token}, "f" * 32),  # another browser's cookie
    ]
    for form, jar in refused:
        page = await post_delete(ui, form, jar)
        assert page.code == 403 and "token" in page.text, (form, jar)
    cross = await post_delete(ui, {"tag": "old", "csrf": token}, cookie, **{"Sec-Fetch-Site": "cross-site"})
    assert cross.code == 403
    assert await ui.model.tags.all("app") == ["keep", "old"]

    done = await post_delete(ui, {"tag": "old", "csrf": token}, cookie)
    assert done.code == 303 and done.header("Location") == "/ui/r/app?deleted_tag=old"
    assert await ui.model.tags.all("app") == ["keep"]
    assert await ui.model.manifests.exists("app", d)
    after = await ui.get("/ui/r/app?deleted_tag=old")
    assert "Deleted tag old." in after.text and 'data-tag="old"' not in after.text
    # The same cookie keeps its token on the next confirmation page.
    assert await confirm(ui, "tag=keep", cookie) == (cookie, token)


@pytest_twisted.ensureDeferred
async def test_delete_a_manifest_removes_its_tags() -> None:
    ui = UI()
    d = await store(ui.model, "app", image("a"), "one")
    await ui.model.tags.tag("app", "two", d)
    await store(ui.model, "app", image("b"), "other")
    manifest_page = await ui.get(f"/ui/r/app/-/manifest/{d}")
    assert f'href="/ui/r/app/-/delete?digest={d.algorithm}%3A{d.hex}"' in manifest_page.text
    cookie, token = await confirm(ui, f"digest={d}")
    page = await ui.get(f"/ui/r/app/-/delete?digest={d}", headers={"Cookie": f"{COOKIE.decode()}={cookie}"})
    assert "(one, two)" in page.text
    done = await post_delete(ui, {"digest": str(d), "csrf": token}, cookie)
    assert done.code == 303
    assert not await ui.model.manifests.exists("app", d)
    assert await ui.model.tags.all("app") == ["other"]
    assert (await post_delete(ui, {"digest": str(d), "csrf": token}, cookie)).code == 404
    assert (await post_delete(ui, {"csrf": token}, cookie)).code == 400
    assert (await post_delete(ui, {"tag": "x", "digest": str(d), "csrf": token}, cookie)).code == 400


@pytest_twisted.ensureDeferred
async def test_no_delete_when_deletes_are_disabled_or_read_only() -> None:
    for ui in (UI(delete_enabled=False), UI(readonly=True)):
        d = await store(ui.model, "app", image("a"), "v1")
        assert "Delete" not in (await ui.get("/ui/r/app")).text
        assert "Delete this manifest" not in (await ui.get("/ui/r/app/-/manifest/v1")).text
        page = await ui.get("/ui/r/app/-/delete?tag=v1")
        assert page.code == 405 and ("disabled" in page.text or "read-only" in page.text)
        refused = await post_delete(ui, {"tag": "v1", "csrf": "0" * 64}, "a" * 32)
        assert refused.code in (403, 405)
        assert await ui.model.tags.resolve("app", "v1") == d


@pytest_twisted.ensureDeferred
async def test_text_json_cannot_encode_as_utf8_is_shown_replaced_not_a_500() -> None:
    # A config is any JSON the pusher chose: "\ud800" (a lone surrogate
    # escape) decodes to a str UTF-8 cannot encode. One such label or
    # created time must not take the manifest page, or every tag of the
    # repository page, down with it.
    ui = UI()
    await store(ui.model, "odd", image("odd", labels={"lone": "a\ud800b"}, created="2024\udfff"), "v1")
    await store(ui.model, "odd", image("fine"), "v2")
    for path in ("/ui/r/odd/-/manifest/v1", "/ui/r/odd"):
        page = await ui.get(path)
        assert page.code == 200, (path, page.text)
    assert "a\ufffdb" in (await ui.get("/ui/r/odd/-/manifest/v1")).text
    listing = (await ui.get("/ui/r/odd")).text
    assert "2024\ufffd" in listing and 'data-tag="v2"' in listing
