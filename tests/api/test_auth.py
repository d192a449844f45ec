"""Access control over real HTTP: htpasswd (Basic) and Docker token auth
(a real token server on another port issues the JWTs, as docker's flow
fetches them), on every kind of route, with nothing stored for a refused
request."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import bcrypt
import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import LogEvent, formatEvent, globalLogPublisher

from registry.app import make_root
from registry.auth.htpasswd import HtpasswdAccessController
from registry.auth.token import TokenAccessController
from registry.auth.keys import libtrust_key_id
from registry.http import RegistrySite
from registry.logs import ACCESS_NAMESPACE, format_json_event
from registry.storage.factory import create_driver
from tests.auth.pki import CA, b64url, claims, hs256_with, mint, public_pem, raw_jwt, root_signer
from tests.auth.pki import grant as claim_grant
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
    ca: CA  # signs the token server's keys; the registry's rootcertbundle


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
            yield TokenSetup(r, tokens, realm, ca)
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


# -- the access log ------------------------------------------------------------------


@pytest.fixture
def log_events() -> Any:
    """Every log event emitted while the test runs (access log and others)."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def logged_text(events: list[LogEvent]) -> str:
    """Everything the log would write: each event as text and as JSON."""
    return "\n".join(f"{formatEvent(e)}\n{format_json_event(e)}\n{e!r}" for e in events)


def access_lines(events: list[LogEvent]) -> list[LogEvent]:
    return [e for e in events if e.get("log_namespace") == ACCESS_NAMESPACE]


@pytest_twisted.ensureDeferred
async def test_access_log_names_the_user_and_never_the_password(
    htpasswd_registry: Registry, log_events: list[LogEvent]
) -> None:
    url = htpasswd_registry.url
    good, wrong = basic("alice", "wonder"), basic("bob", "not-bobs-password")
    r = await treq.get(f"{url}/v2/", headers=good)
    assert r.code == 200
    await r.content()
    r = await treq.get(f"{url}/v2/team/app/tags/list", headers=wrong)
    assert r.code == 401
    await r.content()
    lines = access_lines(log_events)
    assert [(e["path"], e["status"], e.get("user")) for e in lines] == [
        ("/v2/", 200, "alice"),
        ("/v2/team/app/tags/list", 401, None),  # a refused login names nobody
    ]
    assert "user=alice" in formatEvent(lines[0])
    assert json.loads(format_json_event(lines[0]))["user"] == "alice"
    text = logged_text(log_events)
    for secret in ("wonder", "not-bobs-password", good["Authorization"].split()[1], wrong["Authorization"].split()[1]):
        assert secret not in text


@pytest_twisted.ensureDeferred
async def test_access_log_names_the_token_subject_and_never_the_token(
    token_registry: TokenSetup, log_events: list[LogEvent]
) -> None:
    setup = token_registry
    token = await token_for(setup, "reader", "r-pass", "repository:team/app:pull")
    bearer = {"Authorization": f"Bearer {token}"}
    r = await treq.get(f"{setup.registry.url}/v2/team/app/tags/list", headers=bearer)
    assert r.code in (200, 404)
    await r.content()
    r = await treq.put(f"{setup.registry.url}/v2/team/app/manifests/x", headers=bearer, data=b"{}")
    assert r.code == 401  # insufficient_scope: a valid token, still no user in the line
    await r.content()
    lines = [e for e in access_lines(log_events) if e["path"].startswith("/v2/team/")]
    assert [(e["path"], e.get("user")) for e in lines] == [
        ("/v2/team/app/tags/list", "reader"),
        ("/v2/team/app/manifests/x", None),
    ]
    text = logged_text(log_events)
    for part in token.split("."):  # neither the token nor any of its three parts
        assert part not in text
    assert "r-pass" not in text


# -- hostile tokens over HTTP, each on its own -----------------------------------------


def _hostile(kind: str, ca: CA) -> str:
    """A token the registry must refuse with ``invalid_token``; every one
    would grant pull on team/app if it were accepted."""
    access = [claim_grant("team/app", "pull")]
    signer = ca.signer("ec")
    if kind == "alg-none":
        return raw_jwt({"alg": "none", "typ": "JWT", "x5c": signer.x5c()}, claims(access=access))
    if kind == "hmac-keyed-with-the-public-key":
        header = {"alg": "HS256", "typ": "JWT", "x5c": signer.x5c()}
        return raw_jwt(header, claims(access=access), hs256_with(public_pem(signer.key)))
    if kind == "unknown-kid":
        stranger, _ = root_signer("ec", "stranger")
        return mint(stranger, claims(access=access), use="kid", kid=libtrust_key_id(stranger.key.public_key()))
    if kind == "chain-from-another-ca":
        return mint(CA.make("ec", "Other").signer("ec"), claims(access=access))
    if kind == "wrong-audience":
        return mint(signer, claims(audience="another-registry", access=access))
    if kind == "wrong-issuer":
        return mint(signer, claims(issuer="someone-else", access=access))
    if kind == "expired":
        now = int(time.time())
        return mint(signer, claims(access=access, exp=now - 3600, nbf=now - 7200, iat=now - 7200))
    if kind == "not-yet-valid":
        return mint(signer, claims(access=access, lifetime=7200, nbf=int(time.time()) + 3600))
    if kind == "tampered-signature":
        head, payload, sig = mint(signer, claims(access=access)).split(".")
        raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
        raw[len(raw) // 2] ^= 0x01
        return f"{head}.{payload}.{b64url(bytes(raw))}"
    if kind == "tampered-payload":
        head, _, sig = mint(signer, claims(access=[claim_grant("team/other", "pull")])).split(".")
        return f"{head}.{b64url(json.dumps(claims(access=access)).encode())}.{sig}"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "alg-none", "hmac-keyed-with-the-public-key", "unknown-kid", "chain-from-another-ca", "wrong-audience",
        "wrong-issuer", "expired", "not-yet-valid", "tampered-signature", "tampered-payload",
    ],
)
@pytest_twisted.ensureDeferred
async def test_hostile_token_is_refused_with_invalid_token(token_registry: TokenSetup, kind: str) -> None:
    setup = token_registry
    r = await treq.get(
        f"{setup.registry.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {_hostile(kind, setup.ca)}"}
    )
    assert r.code == 401
    assert challenge_of(r) == {
        "realm": setup.realm, "service": "test-registry", "scope": "repository:team/app:pull", "error": "invalid_token",
    }
    body = await r.json()
    assert body["errors"][0]["code"] == "UNAUTHORIZED"
    # The control: the same request with a token the token server issued.
    token = await token_for(setup, "reader", "r-pass", "repository:team/app:pull")
    r = await treq.get(f"{setup.registry.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {token}"})
    assert r.code != 401
    await r.content()


@pytest_twisted.ensureDeferred
async def test_base_answers_a_valid_token_granting_nothing(token_registry: TokenSetup) -> None:
    setup = token_registry
    token = await token_for(setup, "reader", "r-pass", "")  # docker login asks for no scope
    r = await treq.get(f"{setup.registry.url}/v2/", headers={"Authorization": f"Bearer {token}"})
    assert r.code == 200 and await r.json() == {}
    r = await treq.get(f"{setup.registry.url}/v2/", headers={"Authorization": f"Bearer {_hostile('expired', setup.ca)}"})
    assert r.code == 401 and challenge_of(r).get("error") == "invalid_token" and "scope" not in challenge_of(r)


# -- referrers, and mounts that must not tell what exists ---------------------------------


@pytest_twisted.ensureDeferred
async def test_referrers_need_pull_on_the_repository(token_registry: TokenSetup) -> None:
    setup = token_registry
    path = f"/v2/team/app/referrers/sha256:{'b' * 64}"
    r = await treq.get(setup.registry.url + path)
    assert r.code == 401
    assert challenge_of(r) == {"realm": setup.realm, "service": "test-registry", "scope": "repository:team/app:pull"}
    other = await token_for(setup, "writer", "w-pass", "repository:source:pull")
    r = await treq.get(setup.registry.url + path, headers={"Authorization": f"Bearer {other}"})
    assert r.code == 401 and challenge_of(r)["error"] == "insufficient_scope"
    assert challenge_of(r)["scope"] == "repository:team/app:pull"
    r = await call(setup, "GET", path, "reader", "r-pass")
    assert r.code == 200, await r.text()
    assert (await r.json())["manifests"] == []


@pytest_twisted.ensureDeferred
async def test_a_refused_mount_source_answers_as_if_it_did_not_exist(token_registry: TokenSetup) -> None:
    setup = token_registry
    data = b"a layer only in secret"
    r = await call(setup, "POST", f"/v2/secret/blobs/uploads/?digest={sha(data)}", "admin", "a-pass", data=data)
    assert r.code == 201
    token = await token_for(setup, "writer", "w-pass", "repository:team/x:pull,push repository:secret:pull")
    auth = {"Authorization": f"Bearer {token}"}
    answers = []
    for source, digest in (("secret", sha(data)), ("secret", sha(b"nothing")), ("no-such-repo", sha(data))):
        r = await treq.post(f"{setup.registry.url}/v2/team/x/blobs/uploads/?mount={digest}&from={source}", headers=auth)
        body = await r.content()
        headers = {k.lower(): v for k, v in r.headers.getAllRawHeaders() if k.lower() not in (b"date", b"location",
                   b"docker-upload-uuid", b"x-request-id")}  # fmt: skip
        answers.append((r.code, headers, body))
    # The blob exists in "secret", the writer may not pull it: the same answer
    # as for a blob that exists nowhere or a repository that does not exist.
    assert answers[0][0] == 202
    assert answers[0] == answers[1] == answers[2]
    r = await treq.head(f"{setup.registry.url}/v2/team/x/blobs/{sha(data)}", headers=auth)
    assert r.code == 404


@pytest_twisted.ensureDeferred
async def test_an_upload_cannot_be_continued_through_another_repository(token_registry: TokenSetup) -> None:
    # The writer may push team/*, not "secret": naming secret's upload under
    # a repository the writer may push does not reach it.
    setup = token_registry
    r = await call(setup, "POST", "/v2/secret/blobs/uploads/", "admin", "a-pass")
    assert r.code == 202
    location = r.headers.getRawHeaders("location")[0]
    assert location.startswith("/v2/secret/blobs/uploads/")
    before = await setup.registry.files()
    detour = location.replace("/v2/secret/", "/v2/team/app/", 1)
    for method in ("PATCH", "PUT"):
        target = detour if method == "PATCH" else f"{detour}{'&' if '?' in detour else '?'}digest={sha(b'intruder')}"
        r = await call(setup, method, target, "writer", "w-pass", data=b"intruder",
                       headers={"Content-Type": "application/octet-stream"})
        assert r.code == 404, (method, await r.text())
        assert (await r.json())["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"
    assert await setup.registry.files() == before
    r = await call(setup, "PATCH", location, "admin", "a-pass", data=b"owner",
                   headers={"Content-Type": "application/octet-stream"})
    assert r.code == 202
