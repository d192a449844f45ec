"""Pure parts of the client: challenges, auth files, error envelopes, references, links."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from registry.client.auth import (
    Challenge,
    Credentials,
    TokenCache,
    credentials_for,
    default_auth_files,
    parse_auth_config,
    parse_challenges,
    merge_scopes,
    parse_token_response,
)
from registry.client.blobs import parse_upload_range, with_query
from registry.client.client import next_link
from registry.client.errors import (
    AuthenticationError,
    BlobUnknown,
    ProtocolError,
    RegistryAPIError,
    TooManyRequests,
    Unauthorized,
    api_error,
)
from registry.client.references import DockerReference, OCIReference, ReferenceError_, parse_reference
from registry.digest import Digest


def test_bearer_challenge() -> None:
    (challenge,) = parse_challenges(
        ['Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push"']
    )
    assert challenge == Challenge(
        "bearer",
        {"realm": "https://auth.example/token", "service": "registry.example", "scope": "repository:a/b:pull,push"},
    )


def test_several_challenges_quoting_and_case() -> None:
    found = parse_challenges(['Basic realm="a \\"quoted\\" realm", BEARER Realm=http://t/x, error=insufficient_scope'])
    assert [c.scheme for c in found] == ["basic", "bearer"]
    assert found[0].realm == 'a "quoted" realm'
    assert found[1].params == {"realm": "http://t/x", "error": "insufficient_scope"}
    assert parse_challenges(["Basic"]) == [Challenge("basic", {})]
    assert parse_challenges(["", "  "]) == []


def test_credentials_parse() -> None:
    assert Credentials.parse("u:p:w") == Credentials("u", "p:w")
    assert Credentials.parse("u") == Credentials("u", "")
    with pytest.raises(ValueError):
        Credentials.parse(":p")
    assert Credentials("u", "p").basic_header() == "Basic " + base64.b64encode(b"u:p").decode()


def test_auth_config(tmp_path: Path) -> None:
    document = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:secret").decode()},
            "127.0.0.1:5000": {"username": "u", "password": "p"},
            "Other.Example": {"identitytoken": "refresh"},
            "empty.example": {},
        }
    }
    found = parse_auth_config(document)
    assert found == {
        "index.docker.io": Credentials("hub", "secret"),
        "127.0.0.1:5000": Credentials("u", "p"),
        "other.example": Credentials("", "", "refresh"),
    }
    with pytest.raises(AuthenticationError, match="not base64"):
        parse_auth_config({"auths": {"h": {"auth": "!!!"}}})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(document))
    assert credentials_for("docker.io", [tmp_path / "missing.json", path]) == Credentials("hub", "secret")
    assert credentials_for("127.0.0.1:5000", [path]) == Credentials("u", "p")
    assert credentials_for("nowhere:1", [path]) is None
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(AuthenticationError, match="not valid JSON"):
        credentials_for("x", [tmp_path / "bad.json"])
    assert default_auth_files({"HOME": "/h", "XDG_RUNTIME_DIR": "/run/u"}) == [
        Path("/run/u/containers/auth.json"),
        Path("/h/.docker/config.json"),
    ]
    assert default_auth_files({"REGISTRY_AUTH_FILE": "/a.json", "DOCKER_CONFIG": "/d"}) == [
        Path("/a.json"),
        Path("/d/config.json"),
    ]


def test_token_cache_expiry() -> None:
    now = [100.0]
    cache = TokenCache(lambda: now[0])
    key = cache.key("realm", "svc", ["repository:a:pull", "repository:a:pull"])
    assert key == ("realm", "svc", ("repository:a:pull",))
    cache.put(key, "tok", 60)
    now[0] = 150.0
    assert cache.get(key) == "tok"
    now[0] = 156.0  # within the 5 s margin
    assert cache.get(key) is None


def test_merge_scopes() -> None:
    assert merge_scopes(["repository:a/b:pull", "repository:a/b:push,pull", "registry:catalog:*", "bad"]) == [
        "registry:catalog:*",
        "repository:a/b:pull,push",
    ]


def test_token_response() -> None:
    assert parse_token_response(b'{"token": "t", "expires_in": 300}', "r") == ("t", 300.0)
    assert parse_token_response(b'{"access_token": "a"}', "r") == ("a", 60.0)
    with pytest.raises(AuthenticationError):
        parse_token_response(b'{"expires_in": 3}', "r")
    with pytest.raises(AuthenticationError):
        parse_token_response(b"<html>", "r")


def test_error_envelope_becomes_typed_exception() -> None:
    body = json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown", "detail": {"digest": "d"}}]})
    error = api_error(404, body.encode(), "GET x")
    assert isinstance(error, BlobUnknown)
    assert (error.status, error.code, error.message, error.detail) == (404, "BLOB_UNKNOWN", "blob unknown", {"digest": "d"})
    assert str(error) == 'GET x: HTTP 404: BLOB_UNKNOWN: blob unknown ({"digest": "d"})'
    plain = api_error(429, b"slow down\nmore", "")
    assert isinstance(plain, TooManyRequests) and plain.message == "slow down"
    html = api_error(500, b"<html>oops</html>")
    assert type(html) is RegistryAPIError and html.code == "" and str(html) == "HTTP 500"
    assert isinstance(api_error(401, b""), Unauthorized)
    assert isinstance(api_error(401, b""), AuthenticationError)


def test_references() -> None:
    assert parse_reference("docker://127.0.0.1:5000/a/b:v1") == DockerReference("127.0.0.1:5000", "a/b", "v1")
    digest = "sha256:" + "a" * 64
    ref = parse_reference(f"docker://localhost/a@{digest}")
    assert ref == DockerReference("localhost", "a", None, Digest.parse(digest))
    assert isinstance(ref, DockerReference) and ref.reference == digest
    hub = parse_reference("docker://busybox")
    assert hub == DockerReference("docker.io", "library/busybox")
    assert isinstance(hub, DockerReference) and hub.api_host == "registry-1.docker.io" and hub.reference == "latest"
    assert parse_reference("docker://user/app:1") == DockerReference("docker.io", "user/app", "1")
    assert parse_reference("oci:/tmp/x:tag") == OCIReference(Path("/tmp/x"), "tag")
    assert parse_reference("oci:/tmp/x") == OCIReference(Path("/tmp/x"), None)
    assert parse_reference("oci:rel/dir") == OCIReference(Path("rel/dir"), None)
    for bad in ("docker://h.example/UPPER", "docker://h.example/a:bad tag", "oci:", "dir:/x", "/plain", "docker://h/a@sha256:1"):
        with pytest.raises(ReferenceError_):
            parse_reference(bad)


def test_links_ranges_and_queries() -> None:
    base = "http://r/v2/a/tags/list?n=2"
    assert next_link(['</v2/a/tags/list?n=2&last=b>; rel="next"'], base) == "http://r/v2/a/tags/list?n=2&last=b"
    assert next_link(["<http://other/x>; rel=next"], base) == "http://other/x"
    assert next_link(['</x>; rel="prev"'], base) is None
    assert next_link([], base) is None
    assert parse_upload_range(None) == 0
    assert parse_upload_range("0-0") == 0
    assert parse_upload_range("0-99") == 100
    assert parse_upload_range("bytes=0-9") == 10
    with pytest.raises(ProtocolError):
        parse_upload_range("5-9")
    assert with_query("http://r/u/1?_state=x", digest="sha256:1") == "http://r/u/1?_state=x&digest=sha256%3A1"
