"""The web page in a real browser: Debian's headless chromium driven
through chromedriver, against this registry started as ``twistd registry``
(listening on 127.0.0.1, so the page is on by default; deletes enabled),
with content pushed over the HTTP API.

Browse list → repository → manifest, filter, paginate, delete a tag
through the confirmation form (CSRF token and cookie as the browser sends
them), a hostile label shown as text, and the CSP header. Screenshots land
in the test's temporary directory (``UI_SCREENSHOTS=<dir>`` keeps them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.harness import MissingTool, Registry, http_request, missing_tool, start_our_registry
from tests.ui.content import HOSTILE, image, index, push, referrer
from tests.ui.webdriver import Browser

pytestmark = pytest.mark.clients


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = start_our_registry(tmp_path / "registry")
    try:
        yield reg
    finally:
        reg.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    try:
        b = Browser(tmp_path / "browser")
    except MissingTool as e:
        missing_tool(e)
    try:
        yield b
    finally:
        b.quit()


def shots_dir(tmp_path: Path) -> Path:
    keep = os.environ.get("UI_SCREENSHOTS")
    path = Path(keep) if keep else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_browse_filter_paginate_delete_and_escape(browser: Browser, registry: Registry, tmp_path: Path) -> None:
    shots = shots_dir(tmp_path)
    base = registry.url
    web = image("web", labels={"org.opencontainers.image.title": "web", "evil": HOSTILE})
    push(base, "library/web", web, "1.0")
    push(base, "library/web", image("old"), "old")
    push(base, "library/web", referrer(web, "application/vnd.dev.cosign.artifact.sig.v1+json"))
    push(base, "library/web", referrer(web, "application/spdx+json"))
    amd, arm = image("amd"), image("arm", arch="arm64")
    push(base, "library/web", index((amd, {"os": "linux", "architecture": "amd64"}),
                                    (arm, {"os": "linux", "architecture": "arm64", "variant": "v8"})), "multi")
    small = image("small", layers=1)
    for i in range(55):
        push(base, f"team/svc{i:02d}", small, "latest")

    # The list: 50 names a page, the rest behind "Next page".
    browser.go(f"{base}/ui/")
    assert browser.title == "Repositories · registry"
    first = browser.texts("li.repository a")
    assert first[:1] == ["library/web"] and len(first) == 50
    browser.screenshot(shots / "1-repositories.png")
    browser.click_link("Next page »")
    second = browser.texts("li.repository a")
    assert second == [f"team/svc{i:02d}" for i in range(49, 55)]
    browser.back()
    assert browser.texts("li.repository a") == first

    # Filter by prefix with the form.
    field = browser.find("input[name=q]")
    browser.type(field, "library/")
    browser.click(browser.find("form.filter button"))
    browser.wait_for("li.repository")
    assert browser.texts("li.repository a") == ["library/web"]
    assert browser.url.endswith("/ui/?q=library%2F")
    browser.screenshot(shots / "2-filtered.png")

    # Repository → tags with digests, types, sizes, platforms.
    browser.click_link("library/web")
    browser.wait_for("table.tags")
    assert browser.texts("td.tag a") == ["1.0", "multi", "old"]
    assert browser.texts("tr[data-tag=multi] .platform") == ["linux/amd64", "linux/arm64/v8"]
    browser.screenshot(shots / "3-repository.png")

    # Manifest: layers, config with the hostile label as text, referrers.
    browser.click_link("1.0")
    browser.wait_for("table.layers")
    assert len(browser.find_all("tr.layer")) == 2
    assert HOSTILE in browser.texts("table.annotations td")
    assert browser.find_all("script") == []
    assert sorted(browser.texts("td.artifact-type")) == ["application/spdx+json", "application/vnd.dev.cosign.artifact.sig.v1+json"]
    assert f"docker pull {registry.host}/library/web:1.0" in browser.texts("pre.copy code")
    browser.screenshot(shots / "4-manifest.png")
    browser.click(browser.find("details summary"))  # open "Config JSON"
    browser.screenshot(shots / "5-manifest-config-open.png")

    # Delete tag "old": link → confirmation page → POST with the CSRF token.
    browser.go(f"{base}/ui/r/library/web")
    browser.click(browser.find("tr[data-tag=old] a.danger"))
    browser.wait_for("form.confirm")
    browser.screenshot(shots / "6-confirm-delete.png")
    browser.click(browser.find("form.confirm button"))
    browser.wait_for("p.notice")
    assert browser.text(browser.find("p.notice")) == "Deleted tag old."
    assert browser.texts("td.tag a") == ["1.0", "multi"]
    browser.screenshot(shots / "7-deleted.png")
    assert http_request(f"{base}/v2/library/web/manifests/old").status == 404

    # A forged form (no cookie, no token) deletes nothing.
    forged = http_request(f"{base}/ui/r/library/web/-/delete", method="POST", body=b"tag=1.0",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert forged.status == 403
    assert http_request(f"{base}/v2/library/web/manifests/1.0",
                        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"}).status == 200

    # The headers the browser got.
    page = http_request(f"{base}/ui/")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"
