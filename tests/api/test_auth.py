"""Access control over real HTTP: htpasswd (Basic) and Docker token auth
(a real token server on another port issues the JWTs, as docker's flow
fetches them), on every kind of route, with nothing stored for a refused
request."""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import bcrypt
import pytest_twisted
import treq
from twisted.internet import reactor

from registry.app import make_root
from registry.auth.htpasswd import HtpasswdAccessController
from registry.auth.token import TokenAccessController
from registry.http import RegistrySite
from registry.storage.factory import create_driver
from tests.auth.pki import CA
from tests.auth.tokenserver import ANONYMOUS, TokenServer, grant, serve

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@dataclass
class Registry:
    url: str
    driver: Any

    async def files(self) -> dict[str, bytes]:
        out = {}
        for info in await self.driver.walk("/"):
            if not info.is_dir:
                out[info.path] = await self.driver.get_content(info.path)
        return out


async def _serve(access: Any) -> AsyncIterator[Registry]:
    driver = create_driver("inmemory", {})
    port = reactor.listenTCP(0, RegistrySite(make_root(driver, delete_enabled=True, access=access)), interface="127.0.0.1")
    try:
        yield Registry(f"http://127.0.0.1:{port.getHost().port}", driver)
    finally:
        await port.stopListening()
        await access.close()


# -- htpasswd ---------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def htpasswd_registry(tmp_path: Path) -> AsyncIterator[Registry]:
    path = tmp_path / "htpasswd"
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}" for u, p in (("alice", "wonder"), ("bob", "builder"))]
    path.write_text("\n".join(lines) + "\n")
    async for r in _serve(HtpasswdAccessController("test realm", str(path), reactor=reactor)):
        yield r


async def push_blob(url: str, name: str, data: bytes, headers: dict[str, str]) -> str:
    """POST, PATCH with the whole body, PUT: docker's sequence."""
    r = await treq.post(f"{url}/v2/{name}/blobs/uploads/", headers=headers)
    assert r.code == 202, await r.text()
    location = url + r.headers.getRawHeaders("location")[0]
    r = await treq.patch(location, data=data, headers={**headers, "Content-Type": "application/octet-stream"})
    assert r.code == 202, await r.text()
    location = url + r.headers.getRawHeaders("location")[0]
    sep = "&" if "?" in location else "?"
    r = await treq.put(f"{location}{sep}digest={sha(data)}", headers=headers)
    assert r.code == 201, await r.text()
    return sha(data)


@pytest_twisted.ensureDeferred
async def test_base_challenges_anonymous_and_greets_users(htpasswd_registry: Registry) -> None:
    url = htpasswd_registry.url
    r = await treq.get(f"{url}/v2/")
    assert r.code == 401
    assert r.headers.getRawHeaders("www-authenticate") == ['Basic realm="test realm"']
    body = await r.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    r = await treq.get(f"{url}/v2/", headers=basic("alice", "wonder"))
    assert r.code == 200 and await r.json() == {}
    for user, password in (("alice", "wrong"), ("mallory", "wonder")):
        r = await treq.get(f"{url}/v2/", headers=basic(user, password))
        assert r.code == 401, (user, password)
        assert (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"


@pytest_twisted.ensureDeferred
async def test_push_and_pull_with_a_password_and_a_large_first_body(htpasswd_registry: Registry) -> None:
    # The first request with these credentials is a PATCH of 3 MiB: the
    # bcrypt check runs in a thread while the body waits (and the connection
    # is paused past 256 KiB); then every byte reaches storage.
    url = htpasswd_registry.url
    data = bytes(range(256)) * (3 * 4096)
    auth = basic("bob", "builder")
    digest = await push_blob(url, "team/app", data, auth)
    r = await treq.get(f"{url}/v2/team/app/blobs/{digest}", headers=auth)
    assert r.code == 200 and await r.content() == data
    r = await treq.get(f"{url}/v2/team/app/blobs/{digest}")
    assert r.code == 401


@pytest_twisted.ensureDeferred
async def test_refused_uploads_store_nothing(htpasswd_registry: Registry) -> None:
    url = htpasswd_registry.url
    auth = basic("alice", "wonder")
    r = await treq.post(f"{url}/v2/keep/blobs/uploads/", headers=auth)
    location = url + r.headers.getRawHeaders("location")[0]
    before = await htpasswd_registry.files()
    data = b"x" * (1 << 20)
    for headers in ({}, basic("alice", "nope")):
        r = await treq.patch(location, data=data, headers={**headers, "Content-Type": "application/octet-stream"})
        assert r.code == 401
        r = await treq.post(f"{url}/v2/other/blobs/uploads/?digest={sha(data)}", data=data, headers=headers)
        assert r.code == 401
    assert await htpasswd_registry.files() == before


@pytest_twisted.ensureDeferred
async def test_oversized_authorization_header_is_refused(htpasswd_registry: Registry) -> None:
    r = await treq.get(f"{htpasswd_registry.url}/v2/", headers={"Authorization": "Basic " + "A" * 9000})
    assert r.code == 401


# -- token --------------------------------------------------------------------------


@dataclass
class TokenSetup:
    registry: Registry
    tokens: TokenServer
    realm: str


@pytest_twisted.async_yield_fixture
async def token_registry(tmp_path: Path) -> AsyncIterator[TokenSetup]:
    ca = CA.make("ec")
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.bundle_pem())
    tokens = TokenServer(
        ca.signer("ec"),
        users={"writer": "w-pass", "reader": "r-pass", "admin": "a-pass"},
        grants={
            "writer": [grant("team/*", "pull", "push"), grant("source", "pull")],
            "reader": [grant("team/*", "pull")],
            "admin": [grant("*", "*"), grant("catalog", "*", rtype="registry")],
            ANONYMOUS: [],
        },
        issuer="test-issuer",
    )
    token_port, realm = await serve(tokens)
    access = TokenAccessController(realm=realm, service="test-registry", issuer="test-issuer", rootcertbundle=str(bundle))
    try:
        async for r in _serve(access):
            yield TokenSetup(r, tokens, realm)
    finally:
        await token_port.stopListening()


_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


def challenge_of(response: Any) -> dict[str, str]:
    header = response.headers.getRawHeaders("www-authenticate")[0]
    assert header.startswith("Bearer "), header
    return dict(_CHALLENGE.findall(header))


async def token_for(setup: TokenSetup, user: str, password: str, scope: str) -> str:
    r = await treq.get(setup.realm, params={"service": "test-registry", "scope": scope}, headers=basic(user, password))
    assert r.code == 200, await r.text()
    return str((await r.json())["token"])


async def call(setup: TokenSetup, method: str, path: str, user: str, password: str, **kw: Any) -> Any:
    """docker's flow: try, read the challenge, fetch a token for its scope, retry."""
    url = setup.registry.url + path
    r = await treq.request(method, url, **kw)
    if r.code != 401:
        return r
    await r.content()
    scope = challenge_of(r).get("scope", "")
    token = await token_for(setup, user, password, scope)
    headers = {**kw.pop("headers", {}), "Authorization": f"Bearer {token}"}
    return await treq.request(method, url, headers=headers, **kw)


@pytest_twisted.ensureDeferred
async def test_challenge_names_the_scope_and_has_no_error_when_anonymous(token_registry: TokenSetup) -> None:
    r = await treq.post(f"{token_registry.registry.url}/v2/team/app/blobs/uploads/")
    assert r.code == 401
    c = challenge_of(r)
    assert c == {"realm": token_registry.realm, "service": "test-registry", "scope": "repository:team/app:pull,push"}
    r = await treq.get(f"{token_registry.registry.url}/v2/_catalog")
    assert challenge_of(r)["scope"] == "registry:catalog:*"
    # A mount's challenge names both scopes, so one token covers both.
    r = await treq.post(f"{token_registry.registry.url}/v2/team/app/blobs/uploads/?mount=sha256:{'a' * 64}&from=source")
    assert challenge_of(r)["scope"] == "repository:team/app:pull,push repository:source:pull"
    r = await treq.get(f"{token_registry.registry.url}/v2/")
    assert r.code == 401 and "error" not in challenge_of(r)


@pytest_twisted.ensureDeferred
async def test_writer_pushes_reader_pulls_and_is_refused_a_push(token_registry: TokenSetup) -> None:
    setup = token_registry
    config = b'{"architecture":"amd64","os":"linux"}'
    r = await call(setup, "POST", f"/v2/team/app/blobs/uploads/?digest={sha(config)}", "writer", "w-pass", data=config)
    assert r.code == 201, await r.text()
    manifest = (b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
                b'"digest":"%s","size":%d},"layers":[]}' % (OCI_MANIFEST.encode(), sha(config).encode(), len(config)))
    r = await call(setup, "PUT", "/v2/team/app/manifests/v1", "writer", "w-pass", data=manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.code == 201, await r.text()
    r = await call(setup, "GET", "/v2/team/app/manifests/v1", "reader", "r-pass", headers={"Accept": OCI_MANIFEST})
    assert r.code == 200 and await r.content() == manifest
    # The reader's token does not grant push: 401 naming the scope, code DENIED.
    before = await setup.registry.files()
    r = await call(setup, "PUT", "/v2/team/app/manifests/v2", "reader", "r-pass", data=manifest,
                   headers={"Content-Type": OCI_MANIFEST})
    assert r.code == 401
    c = challenge_of(r)
    assert c["error"] == "insufficient_scope" and c["scope"] == "repository:team/app:pull,push"
    assert (await r.json())["errors"][0]["code"] == "DENIED"
    assert await setup.registry.files() == before


@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_invalid(token_registry: TokenSetup) -> None:
    setup = token_registry
    good = await token_for(setup, "reader", "r-pass", "repository:team/app:pull")
    head, payload, signature = good.split(".")
    tampered = ".".join([head, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
    for token in (tampered, "not-a-jwt", good + "x"):
        r = await treq.get(f"{setup.registry.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {token}"})
        assert r.code == 401, token
        assert challenge_of(r)["error"] == "invalid_token"
        assert (await r.json())["errors"][0]["code"] == "UNAUTHORIZED"


@pytest_twisted.ensureDeferred
async def test_catalog_needs_the_catalog_scope(token_registry: TokenSetup) -> None:
    r = await call(token_registry, "GET", "/v2/_catalog", "reader", "r-pass")
    assert r.code == 401 and challenge_of(r)["error"] == "insufficient_scope"
    r = await call(token_registry, "GET", "/v2/_catalog", "admin", "a-pass")
    assert r.code == 200 and await r.json() == {"repositories": []}


@pytest_twisted.ensureDeferred
async def test_an_upload_is_continued_only_with_push_on_its_repository(token_registry: TokenSetup) -> None:
    setup = token_registry
    r = await call(setup, "POST", "/v2/team/app/blobs/uploads/", "writer", "w-pass")
    assert r.code == 202
    location = r.headers.getRawHeaders("location")[0]
    before = await setup.registry.files()
    r = await call(setup, "PATCH", location, "reader", "r-pass", data=b"intruder",
                   headers={"Content-Type": "application/octet-stream"})
    assert r.code == 401 and challenge_of(r)["error"] == "insufficient_scope"
    assert await setup.registry.files() == before
    r = await call(setup, "PATCH", location, "writer", "w-pass", data=b"owner",
                   headers={"Content-Type": "application/octet-stream"})
    assert r.code == 202


@pytest_twisted.ensureDeferred
async def test_mounts_need_pull_on_the_source(token_registry: TokenSetup) -> None:
    setup = token_registry
    data = b"shared layer"
    # The admin stores the blob in two repositories.
    for repo in ("secret", "source"):
        r = await call(setup, "POST", f"/v2/{repo}/blobs/uploads/?digest={sha(data)}", "admin", "a-pass", data=data)
        assert r.code == 201
    # The writer may pull "source" but not "secret": only the first mounts.
    r = await call(setup, "POST", f"/v2/team/a/blobs/uploads/?mount={sha(data)}&from=source", "writer", "w-pass")
    assert r.code == 201, await r.text()
    r = await call(setup, "POST", f"/v2/team/b/blobs/uploads/?mount={sha(data)}&from=secret", "writer", "w-pass")
    assert r.code == 202, await r.text()
    # Nor does an automatic mount (no from) take it from anywhere.
    r = await call(setup, "POST", f"/v2/team/c/blobs/uploads/?mount={sha(data)}", "writer", "w-pass")
    assert r.code == 202
    r = await call(setup, "HEAD", f"/v2/team/b/blobs/{sha(data)}", "writer", "w-pass")
    assert r.code == 404
