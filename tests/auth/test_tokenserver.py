"""The test token server, driven with treq's in-memory StubTreq, and its
tokens accepted by the token access controller: the whole Docker token
flow without sockets."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from treq.testing import StubTreq

from registry.auth import Access, AuthChallenge, Credentials
from registry.auth.keys import libtrust_key_id
from registry.auth.token import TokenAccessController
from tests.auth.pki import CA, root_signer
from tests.auth.tokenserver import ANONYMOUS, TokenServer, grant

URL = "http://token.test/token"


@pytest.fixture
def server(ec_ca: CA) -> TokenServer:
    return TokenServer(
        ec_ca.signer("ec"),
        users={"alice": "wonderland", "bob": "builder"},
        grants={
            "alice": [grant("alice/*", "pull", "push", "delete"), grant("public/*", "pull"), grant("catalog", "*", rtype="registry")],
            "bob": [grant("public/*", "pull")],
        },
    )


@pytest.fixture
def controller(tmp_path: Path, ec_ca: CA) -> TokenAccessController:
    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(ec_ca.bundle_pem())
    return TokenAccessController(realm=URL, service="registry", issuer="test-issuer", rootcertbundle=str(bundle))


async def fetch_token(server: TokenServer, scopes: list[str], auth: Any = ("alice", "wonderland")) -> tuple[int, Any]:
    stub = StubTreq(server)
    params: list[tuple[str, str]] = [("service", "registry")] + [("scope", s) for s in scopes]
    response = await stub.get(URL, params=params, auth=auth)
    body = await response.content()
    return response.code, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_issues_token_per_spec(server: TokenServer, controller: TokenAccessController) -> None:
    code, body = await fetch_token(server, ["repository:alice/app:pull,push"])
    assert code == 200
    assert set(body) == {"token", "access_token", "expires_in", "issued_at"}
    assert body["token"] == body["access_token"]
    assert body["expires_in"] == 300
    assert body["issued_at"].endswith("Z")
    identity = controller.authorize_now(
        Credentials(b"Bearer " + body["token"].encode()),
        [Access("repository", "alice/app", "pull"), Access("repository", "alice/app", "push")],
    )
    assert identity.name == "alice"


@pytest_twisted.ensureDeferred
async def test_grants_only_what_the_user_has(server: TokenServer, controller: TokenAccessController) -> None:
    code, body = await fetch_token(server, ["repository:public/x:pull,push"], auth=("bob", "builder"))
    assert code == 200
    assert server.issued[-1]["access"] == [{"type": "repository", "name": "public/x", "actions": ["pull"]}]
    credentials = Credentials(b"Bearer " + body["token"].encode())
    controller.authorize_now(credentials, [Access("repository", "public/x", "pull")])
    with pytest.raises(AuthChallenge) as info:
        controller.authorize_now(credentials, [Access("repository", "public/x", "pull"), Access("repository", "public/x", "push")])
    assert 'error="insufficient_scope"' in info.value.www_authenticate


@pytest_twisted.ensureDeferred
async def test_several_scopes_and_catalog(server: TokenServer) -> None:
    code, _ = await fetch_token(server, ["repository:alice/a:pull repository:bob/b:pull", "registry:catalog:*"])
    assert code == 200
    assert server.issued[-1]["access"] == [
        {"type": "repository", "name": "alice/a", "actions": ["pull"]},
        {"type": "repository", "name": "bob/b", "actions": []},
        {"type": "registry", "name": "catalog", "actions": ["*"]},
    ]


@pytest_twisted.ensureDeferred
async def test_bad_credentials_get_401(server: TokenServer) -> None:
    for auth in (("alice", "wrong"), ("mallory", "x")):
        code, body = await fetch_token(server, ["repository:alice/a:pull"], auth=auth)
        assert code == 401
        assert body["errors"][0]["code"] == "UNAUTHORIZED"
    code, _ = await fetch_token(server, ["repository:alice/a:pull"], auth=None)
    assert code == 401


@pytest_twisted.ensureDeferred
async def test_anonymous_grants(ec_ca: CA) -> None:
    server = TokenServer(ec_ca.signer("ec"), users={}, grants={ANONYMOUS: [grant("public/*", "pull")]})
    code, _ = await fetch_token(server, ["repository:public/a:pull,push"], auth=None)
    assert code == 200
    assert server.issued[-1]["sub"] == ""
    assert server.issued[-1]["access"][0]["actions"] == ["pull"]


@pytest_twisted.ensureDeferred
async def test_kid_signed_tokens(tmp_path: Path) -> None:
    signer, cert = root_signer("rsa", "kid server")
    from cryptography.hazmat.primitives import serialization

    bundle = tmp_path / "roots.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    kid = libtrust_key_id(cert.public_key())
    server = TokenServer(signer, users={"u": "p"}, grants={"u": [grant("*", "pull")]}, key_by="kid", kid=kid)
    c = TokenAccessController(realm=URL, service="registry", issuer="test-issuer", rootcertbundle=str(bundle))
    code, body = await fetch_token(server, ["repository:x:pull"], auth=("u", "p"))
    assert code == 200
    header = json.loads(base64.urlsafe_b64decode(body["token"].split(".")[0] + "=="))
    assert header["kid"] == kid and "x5c" not in header
    c.authorize_now(Credentials(b"Bearer " + body["token"].encode()), [Access("repository", "x", "pull")])


@pytest_twisted.ensureDeferred
async def test_serves_on_a_real_socket(server: TokenServer, controller: TokenAccessController) -> None:
    import treq

    from tests.auth.tokenserver import serve

    port, url = await serve(server)
    try:
        response = await treq.get(url, params={"service": "registry", "scope": "repository:alice/a:pull"}, auth=("alice", "wonderland"))
        assert response.code == 200
        body = json.loads(await response.content())
        controller.authorize_now(Credentials(b"Bearer " + body["token"].encode()), [Access("repository", "alice/a", "pull")])
    finally:
        await port.stopListening()
