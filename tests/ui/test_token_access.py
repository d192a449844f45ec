"""The web page under the token access controller (``auth.token``): the
same controller as the API decides every page and every delete, from the
bearer token's grants. A browser cannot fetch a bearer token itself; a
client or a proxy in front that sends one gets exactly what the token
allows (tests over StubTreq; the tokens come from a test PKI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from treq.testing import StubTreq

from registry.auth.token import TokenAccessController
from registry.resources.context import Context
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from registry.ui import UIResource
from registry.ui.csrf import COOKIE
from tests.auth.pki import CA, claims, grant, mint
from tests.ui.content import image, store

BASE = "http://registry.test"
NONCE = "f" * 32


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA.make("ec", "UI")


@pytest.fixture
def controller(ca: CA, tmp_path: Path) -> TokenAccessController:
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(ca.root.public_bytes(serialization.Encoding.PEM))
    return TokenAccessController(realm="https://auth.test/token", service="test-registry", issuer="test-issuer",
                                 rootcertbundle=str(bundle))


async def call(stub: StubTreq, method: str, path: str, token: str | None = None, **kw: Any) -> tuple[int, Any, str]:
    headers = dict(kw.pop("headers", {}))
    headers.setdefault("Cookie", f"{COOKIE.decode()}={NONCE}")
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    d = stub.request(method, BASE + path, headers=headers, allow_redirects=False, **kw)
    stub.flush()
    r = await d
    return r.code, r.headers, await r.text("utf-8")


@pytest_twisted.ensureDeferred
async def test_pages_and_deletes_follow_the_tokens_grants(ca: CA, controller: TokenAccessController) -> None:
    model = DataModel.over(create_driver("inmemory", {}))
    await store(model, "team/app", image("a"), "v1")
    await store(model, "team/app", image("b"), "v2")
    await store(model, "other/app", image("c"), "v1")
    stub = StubTreq(UIResource(Context(model, delete_enabled=True), controller))
    signer = ca.signer("ec")
    reader = mint(signer, claims(subject="reader", access=[grant("team/app", "pull")]))
    deleter = mint(signer, claims(subject="deleter", access=[grant("team/app", "pull", "delete")]))
    cataloguer = mint(signer, claims(subject="cat", access=[grant("catalog", "*", rtype="registry")]))

    # No token: the Bearer challenge naming the scope the page needs.
    code, headers, text = await call(stub, "GET", "/ui/r/team/app")
    assert code == 401 and "Sign in required" in text
    assert headers.getRawHeaders("www-authenticate") == [
        'Bearer realm="https://auth.test/token",service="test-registry",scope="repository:team/app:pull"']
    # The list needs registry:catalog:*.
    # (A token short of the scope gets 401 with insufficient_scope, as from the API.)
    code, headers, _ = await call(stub, "GET", "/ui/", reader)
    assert code == 401 and 'scope="registry:catalog:*",error="insufficient_scope"' in headers.getRawHeaders("www-authenticate")[0]
    code, _, text = await call(stub, "GET", "/ui/", cataloguer)
    assert code == 200 and "team/app" in text and "other/app" in text

    # Pull on team/app: its pages, no delete links, no other repository.
    code, _, text = await call(stub, "GET", "/ui/r/team/app", reader)
    assert code == 200 and 'data-tag="v1"' in text and "signed in as" in text and "reader" in text
    assert "/-/delete" not in text
    code, _, text = await call(stub, "GET", "/ui/r/team/app/-/manifest/v1", reader)
    assert code == 200 and "Delete this manifest" not in text
    assert (await call(stub, "GET", "/ui/r/other/app", reader))[0] == 401

    # Without delete in the token: no confirmation page, no delete, whatever the form holds.
    code, headers, _ = await call(stub, "GET", "/ui/r/team/app/-/delete?tag=v1", reader)
    assert code == 401 and 'scope="repository:team/app:delete",error="insufficient_scope"' in headers.getRawHeaders("www-authenticate")[0]
    code, _, text = await call(stub, "GET", "/ui/r/team/app/-/delete?tag=v1", deleter)
    assert code == 200
    token = re.search(r'name="csrf" value="([0-9a-f]+)"', text).group(1)  # type: ignore[union-attr]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    code, _, _ = await call(stub, "POST", "/ui/r/team/app/-/delete", reader, headers=form,
                            data=urlencode({"tag": "v1", "csrf": token}).encode())
    assert code == 401
    assert await model.tags.all("team/app") == ["v1", "v2"]

    # With delete: the links show, and the form (its token bound to the token's subject) deletes.
    code, _, text = await call(stub, "GET", "/ui/r/team/app", deleter)
    assert "/ui/r/team/app/-/delete?tag=v1" in text
    code, headers, _ = await call(stub, "POST", "/ui/r/team/app/-/delete", deleter, headers=form,
                                  data=urlencode({"tag": "v1", "csrf": token}).encode())
    assert code == 303 and headers.getRawHeaders("location") == ["/ui/r/team/app?deleted_tag=v1"]
    assert await model.tags.all("team/app") == ["v2"]
