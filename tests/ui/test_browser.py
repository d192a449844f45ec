"""The web page in a real browser: Debian's headless chromium driven
through chromedriver, against this registry started as ``twistd registry``
(listening on 127.0.0.1, so the page is on by default; deletes enabled).

The images are real and pushed by skopeo: generated layer tarballs (gzip)
with a config carrying env, entrypoint, history, diff_ids and labels (one of
them hostile markup), copied from an OCI layout and from a ``docker save``
archive (as Docker schema 2), and a two-platform index copied with
``--all``. Referrers (a signature, an SBOM) are pushed over the API, as
cosign or oras would; the 55 repositories that make the list page through
two pages are pushed over the API too.

Browse list → repository → manifest, filter, paginate, back, delete a tag
through the confirmation form (CSRF token and cookie as the browser sends
them), a hostile label shown as text with nothing executed, and the CSP
header. A screenshot of every page type is taken and checked to be a PNG of
the window's size; they land in the test's temporary directory
(``UI_SCREENSHOTS=<dir>`` keeps them; ``docs/ui-repository.png`` is the
repository page's)."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterator

import pytest

from tests.clients.harness import (
    MEDIA_DOCKER_MANIFEST,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_MANIFEST,
    Image,
    MissingTool,
    Registry,
    Skopeo,
    http_request,
    make_image,
    missing_tool,
    start_our_registry,
    write_docker_archive,
    write_oci_layout,
)
from tests.ui.content import HOSTILE, Built, image, push, referrer
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
def skopeo(tmp_path: Path) -> Skopeo:
    try:
        return Skopeo(tmp_path / "skopeo")
    except MissingTool as e:
        missing_tool(e)


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


def check_png(path: Path) -> tuple[int, int]:
    """(width, height) of the PNG at ``path``; fails if it is not one."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", path
    width, height = struct.unpack(">II", data[16:24])
    assert width >= 800 and height >= 600 and len(data) > 10_000, (path, width, height, len(data))
    return width, height


def labelled(base: Image, labels: dict[str, str]) -> Image:
    """``base`` with more labels, env and an entrypoint in its config."""
    config = json.loads(base.config)
    config["config"]["Labels"].update(labels)
    config["config"]["Env"].append("GREETING=hello")
    config["config"]["Entrypoint"] = ["/bin/web", "--serve"]
    return Image(base.layers, json.dumps(config, sort_keys=True).encode(), base.architecture)


def test_browse_filter_paginate_delete_and_escape(
    browser: Browser, skopeo: Skopeo, registry: Registry, tmp_path: Path
) -> None:
    shots = shots_dir(tmp_path)
    base = registry.url
    sources = tmp_path / "sources"

    # Real images, pushed by skopeo.
    web = labelled(make_image("web", layers=3), {"org.opencontainers.image.title": "web", "evil": HOSTILE})
    skopeo.copy(write_oci_layout(sources / "web", [web], "1.0").reference, registry.docker_ref("library/web", "1.0"))
    old = make_image("old", layers=1)
    archive = write_docker_archive(old, sources / "old.tar", [])
    skopeo.copy(f"docker-archive:{archive}", registry.docker_ref("library/web", "old"), "--format", "v2s2")
    amd, arm = make_image("multi", layers=2), make_image("multi", layers=2, architecture="arm64")
    multi = write_oci_layout(sources / "multi", [amd, arm], "multi")
    skopeo.copy(multi.reference, registry.docker_ref("library/web", "multi"), "--all")

    served = registry.manifest("library/web", "1.0")
    assert served.status == 200 and served.headers["content-type"] == MEDIA_OCI_MANIFEST
    web_manifest = json.loads(served.body)
    web_size = web_manifest["config"]["size"] + sum(layer["size"] for layer in web_manifest["layers"])
    subject = Built(served.body, MEDIA_OCI_MANIFEST)
    push(base, "library/web", referrer(subject, "application/vnd.dev.cosign.artifact.sig.v1+json"))
    push(base, "library/web", referrer(subject, "application/spdx+json"))
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

    # Repository → tags with digests, types, sizes, created, platforms.
    browser.click_link("library/web")
    browser.wait_for("table.tags")
    assert browser.texts("td.tag a") == ["1.0", "multi", "old"]
    assert browser.texts("tr[data-tag=multi] .platform") == ["linux/amd64", "linux/arm64"]
    assert browser.texts("tr[data-tag='1.0'] td.type") == ["OCI image"]
    assert browser.texts("tr[data-tag=old] td.type") == ["Docker image"]
    assert browser.texts("tr[data-tag=multi] td.type") == ["OCI index"]
    assert browser.attribute(browser.find("tr[data-tag='1.0'] td.size"), "title") == f"{web_size} bytes"
    assert browser.texts("tr[data-tag='1.0'] td.created") == ["2024-01-01T00:00:00Z"]
    assert browser.attribute(browser.find("tr[data-tag='1.0'] code.digest"), "title") == served.headers["docker-content-digest"]
    check_png(browser.screenshot(shots / "3-repository.png"))

    # Manifest: layers, config with the hostile label as text, referrers.
    browser.click_link("1.0")
    browser.wait_for("table.layers")
    assert len(browser.find_all("tr.layer")) == 3
    assert browser.texts("tr.layer .size") == [f"{layer['size'] / 1000:.1f} kB" for layer in web_manifest["layers"]]
    assert HOSTILE in browser.texts("table.annotations td")
    assert browser.find_all("script") == [] and browser.alert_text() is None
    assert "GREETING=hello" in browser.texts("ul.env code")
    assert sorted(browser.texts("td.artifact-type")) == ["application/spdx+json", "application/vnd.dev.cosign.artifact.sig.v1+json"]
    assert f"docker pull {registry.host}/library/web:1.0" in browser.texts("pre.copy code")
    check_png(browser.screenshot(shots / "4-manifest.png"))
    browser.click(browser.find("details summary"))  # open "Config JSON"
    check_png(browser.screenshot(shots / "5-manifest-config-open.png"))

    # An index: its platforms, each a link to its manifest.
    browser.go(f"{base}/ui/r/library/web/-/manifest/multi")
    browser.wait_for("table.children")
    assert browser.texts("td.platform") == ["linux/amd64", "linux/arm64"]
    assert f"skopeo copy --all --src-tls-verify=false docker://{registry.host}/library/web:multi oci-archive:web.tar" in browser.texts("pre.copy code")
    check_png(browser.screenshot(shots / "6-index.png"))
    assert registry.manifest("library/web", "multi").headers["content-type"] == MEDIA_OCI_INDEX
    assert registry.manifest("library/web", "old").headers["content-type"] == MEDIA_DOCKER_MANIFEST

    # Delete tag "old": link → confirmation page → POST with the CSRF token.
    browser.go(f"{base}/ui/r/library/web")
    browser.click(browser.find("tr[data-tag=old] a.danger"))
    browser.wait_for("form.confirm")
    check_png(browser.screenshot(shots / "7-confirm-delete.png"))
    browser.click(browser.find("form.confirm button"))
    browser.wait_for("p.notice")
    assert browser.text(browser.find("p.notice")) == "Deleted tag old."
    assert browser.texts("td.tag a") == ["1.0", "multi"]
    check_png(browser.screenshot(shots / "8-deleted.png"))
    assert http_request(f"{base}/v2/library/web/manifests/old").status == 404

    # An error page.
    browser.go(f"{base}/ui/r/library/nothing")
    assert browser.texts("h1") == ["Not found"]
    check_png(browser.screenshot(shots / "9-not-found.png"))

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
