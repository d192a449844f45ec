"""The web page mounted on the registry's root (real sockets, RegistrySite),
under the registry's access controller, and ``ui.enabled`` in the
configuration and the application."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlencode

import bcrypt
import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet import reactor

from registry.app import make_application, make_root
from registry.auth.htpasswd import HtpasswdAccessController
from registry.config import load_config
from registry.http import RegistrySite
from registry.resources.context import Context
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from registry.ui import UIResource
from registry.ui.csrf import COOKIE
from tests.ui.content import image, push

REALM = "ui test realm"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def listen(root: Any) -> tuple[str, Any]:
    port = reactor.listenTCP(0, RegistrySite(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    return f"http://127.0.0.1:{port.getHost().port}", port


async def fetch(method: str, url: str, **kw: Any) -> tuple[int, Any, str]:
    r = await treq.request(method, url, allow_redirects=False, **kw)
    return r.code, r.headers, await r.text("utf-8")


@pytest_twisted.ensureDeferred
async def test_root_serves_the_page_beside_the_api_only_when_enabled() -> None:
    driver = create_driver("inmemory", {})
    on, on_port = await listen(make_root(driver, ui=True))
    off, off_port = await listen(make_root(driver, ui=False))
    prefixed, prefixed_port = await listen(make_root(driver, ui=True, prefix="/reg/"))
    try:
        code, headers, body = await fetch("GET", f"{on}/ui/")
        assert code == 200 and headers.getRawHeaders("content-type") == ["text/html; charset=utf-8"]
        assert "<h1>Repositories</h1>" in body and headers.getRawHeaders("content-security-policy")
        code, headers, body = await fetch("GET", f"{on}/v2/")
        assert code == 200 and body == "{}"
        code, headers, body = await fetch("GET", f"{on}/ui")
        assert code == 301 and headers.getRawHeaders("location") == ["/ui/"]
        # A big form is refused without being read.
        code, _, body = await fetch("POST", f"{on}/ui/r/a/-/delete", data=b"x" * 200_000)
        assert code == 413
        code, _, body = await fetch("GET", f"{off}/ui/")
        assert code == 404 and '"UNSUPPORTED"' in body  # the API's answer: no page here
        code, _, body = await fetch("GET", f"{prefixed}/reg/ui/")
        assert code == 200 and 'href="/reg/ui/static/style-' in body
        code, _, _ = await fetch("GET", f"{prefixed}/ui/")
        assert code == 404
    finally:
        for port in (on_port, off_port, prefixed_port):
            await port.stopListening()


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                            for u, p in (("alice", "wonder"), ("bob", "builder"))))
    return path


@pytest_twisted.ensureDeferred
async def test_anonymous_gets_the_basic_challenge_from_the_resource(htpasswd: Path) -> None:
    access = HtpasswdAccessController(REALM, str(htpasswd), reactor=reactor)
    try:
        stub = StubTreq(UIResource(Context(DataModel.over(create_driver("inmemory", {})), delete_enabled=True), access))
        for path in ("/ui/", "/ui/r/a", "/ui/r/a/-/manifest/v1", "/ui/r/a/-/delete?tag=v1"):
            d = stub.get("http://registry.test" + path)
            stub.flush()
            r = await d
            assert r.code == 401, path
            assert r.headers.getRawHeaders("www-authenticate") == [f'Basic realm="{REALM}"']
            assert r.headers.getRawHeaders("content-security-policy")
            assert "Sign in required" in await r.text("utf-8")
        d = stub.post("http://registry.test/ui/r/a/-/delete", data={"tag": "v1"})
        stub.flush()
        assert (await d).code == 401
    finally:
        await access.close()


@pytest_twisted.async_yield_fixture
async def guarded(htpasswd: Path) -> AsyncIterator[str]:
    access = HtpasswdAccessController(REALM, str(htpasswd), reactor=reactor)
    url, port = await listen(make_root(create_driver("inmemory", {}), delete_enabled=True, access=access, ui=True))
    try:
        yield url
    finally:
        await port.stopListening()
        await access.close()


@pytest_twisted.ensureDeferred
async def test_signed_in_users_browse_and_delete_with_their_own_token(guarded: str) -> None:
    from twisted.internet.threads import deferToThread

    # Push as alice over the API (the synchronous pusher runs in a thread).
    img = image("a")
    alice, bob = basic("alice", "wonder"), basic("bob", "builder")

    await deferToThread(push, guarded, "team/app", img, "v1", alice)
    code, _, body = await fetch("GET", f"{guarded}/ui/r/team/app", headers=alice)
    assert code == 200 and "signed in as" in body and "alice" in body and 'data-tag="v1"' in body
    code, _, _ = await fetch("GET", f"{guarded}/ui/", headers=basic("alice", "wrong"))
    assert code == 401

    code, headers, body = await fetch("GET", f"{guarded}/ui/r/team/app/-/delete?tag=v1", headers=alice)
    assert code == 200
    cookie = re.match(rf"{COOKIE.decode()}=([0-9a-f]+)", headers.getRawHeaders("set-cookie")[0]).group(1)  # type: ignore[union-attr]
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', body).group(1)  # type: ignore[union-attr]
    form = urlencode({"tag": "v1", "csrf": token}).encode()
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"{COOKIE.decode()}={cookie}"}
    # Alice's token is no good for bob, even with her cookie.
    code, _, body = await fetch("POST", f"{guarded}/ui/r/team/app/-/delete", data=form, headers={**form_headers, **bob})
    assert code == 403 and "token" in body
    code, _, _ = await fetch("POST", f"{guarded}/ui/r/team/app/-/delete", data=form, headers=form_headers)
    assert code == 401  # no credentials: the challenge, before the form is looked at
    code, headers, _ = await fetch("POST", f"{guarded}/ui/r/team/app/-/delete", data=form, headers={**form_headers, **alice})
    assert code == 303 and headers.getRawHeaders("location") == ["/ui/r/team/app?deleted_tag=v1"]
    code, _, _ = await fetch("GET", f"{guarded}/v2/team/app/manifests/v1", headers=alice)
    assert code == 404


def config(addr: str, extra: str = "") -> Any:
    return load_config(f"version: 0.1\nstorage: inmemory\nhttp:\n  addr: {addr!r}\n{extra}", {})


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:5000", True), ("127.1.2.3:5000", True), ("localhost:5000", True), ("[::1]:5000", True),
     (":5000", False), ("0.0.0.0:5000", False), ("192.0.2.1:5000", False), ("[::]:5000", False), ("registry.example:5000", False)],
)
def test_ui_is_on_by_default_only_for_loopback_listeners(addr: str, expected: bool) -> None:
    c = config(addr)
    assert c.ui.enabled is None and c.ui.active(c.http) is expected


def test_ui_enabled_overrides_the_default_and_listen_is_considered() -> None:
    assert config(":5000", "ui:\n  enabled: true\n").ui.active(config(":5000").http) is True
    c = config("127.0.0.1:5000", "ui:\n  enabled: false\n")
    assert c.ui.active(c.http) is False
    c = config("127.0.0.1:5000")
    assert c.ui.active(c.http, "tcp:0:interface=127.0.0.1") is True
    assert c.ui.active(c.http, "tcp:0") is False
    assert c.ui.active(c.http, r"tcp6:0:interface=\:\:1") is True
    env = load_config("version: 0.1\nstorage: inmemory\nhttp:\n  addr: ':5000'\n", {"REGISTRY_UI_ENABLED": "true"})
    assert env.ui.active(env.http) is True
    with pytest.raises(ValueError, match="ui.enabled"):
        config("127.0.0.1:5000", "ui:\n  enabled: sometimes\n")


def test_application_mounts_the_page_per_configuration() -> None:
    loopback = make_application(config("127.0.0.1:5000"), reactor)
    assert loopback.root.ui is not None  # type: ignore[attr-defined]
    everywhere = make_application(config(":5000"), reactor)
    assert everywhere.root.ui is None  # type: ignore[attr-defined]
    forced = make_application(config(":5000", "ui:\n  enabled: true\n"), reactor, listen="tcp:0")
    assert forced.root.ui is not None  # type: ignore[attr-defined]
