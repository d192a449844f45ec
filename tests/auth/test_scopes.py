"""What each registry request needs, and the scope strings of the token spec."""

from __future__ import annotations

import pytest
from twisted.web.test.requesthelper import DummyRequest

from registry.auth import Access, Identity, filter_catalog, required_access, scope_param
from registry.auth.scopes import credentials_from_request, parse_scope


def repo(name: str, *actions: str) -> list[Access]:
    return [Access("repository", name, a) for a in actions]


@pytest.mark.parametrize(
    "method, kind, expected",
    [
        ("GET", "manifests", ("pull",)),
        ("HEAD", "manifests", ("pull",)),
        ("PUT", "manifests", ("pull", "push")),
        ("DELETE", "manifests", ("delete",)),
        ("GET", "blobs", ("pull",)),
        ("HEAD", "blobs", ("pull",)),
        ("DELETE", "blobs", ("delete",)),
        ("GET", "tags", ("pull",)),
        ("GET", "referrers", ("pull",)),
        ("POST", "upload_start", ("pull", "push")),
        ("PATCH", "upload", ("pull", "push")),
        ("PUT", "upload", ("pull", "push")),
        ("GET", "upload", ("pull",)),
        ("DELETE", "upload", ("delete",)),
    ],
)
def test_repository_routes(method: str, kind: str, expected: tuple[str, ...]) -> None:
    assert required_access(method, kind, {"name": "a/b", "reference": "x"}) == repo("a/b", *expected)


def test_base_and_catalog() -> None:
    assert required_access("GET", "base", {}) == []
    assert required_access(b"get", "catalog", {}) == [Access("registry", "catalog", "*")]


def test_mount_adds_pull_on_source() -> None:
    q = {"mount": ["sha256:" + "0" * 64], "from": ["src/repo"]}
    assert required_access("POST", "upload_start", {"name": "a/b"}, q) == repo("a/b", "pull", "push") + repo("src/repo", "pull")
    # 'from' without 'mount', an invalid source name, or the same repository add nothing.
    assert required_access("POST", "upload_start", {"name": "a/b"}, {"from": ["src"]}) == repo("a/b", "pull", "push")
    bad = {"mount": ["sha256:" + "0" * 64], "from": ['x" scope="y']}
    assert required_access("POST", "upload_start", {"name": "a/b"}, bad) == repo("a/b", "pull", "push")
    same = {"mount": ["sha256:" + "0" * 64], "from": ["a/b"]}
    assert required_access("POST", "upload_start", {"name": "a/b"}, same) == repo("a/b", "pull", "push")


def test_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown route kind"):
        required_access("GET", "nope", {})
    with pytest.raises(ValueError, match="'name'"):
        required_access("GET", "manifests", {})


def test_scope_param_groups_by_resource() -> None:
    needed = repo("a/b", "pull", "push") + repo("c", "pull") + [Access("registry", "catalog", "*")]
    assert scope_param(needed) == "repository:a/b:pull,push repository:c:pull registry:catalog:*"
    assert scope_param([]) == ""


def test_parse_scope() -> None:
    assert parse_scope("repository:a/b:pull,push") == repo("a/b", "pull", "push")
    assert parse_scope("repository:localhost:5000/a:pull") == repo("localhost:5000/a", "pull")
    with pytest.raises(ValueError):
        parse_scope("repository:a")


def test_filter_catalog() -> None:
    names = ["a/b", "c", "d/e"]
    assert filter_catalog(Identity("alice"), names) == names
    assert filter_catalog(Identity("t", frozenset(repo("c", "pull") + repo("d/e", "push"))), names) == ["c"]
    assert filter_catalog(Identity("t", frozenset(repo("a/b", "*"))), names) == ["a/b"]
    assert filter_catalog(Identity("t", frozenset({Access("registry", "catalog", "*")})), names) == names
    assert filter_catalog(Identity("t", frozenset()), names) == []


def test_credentials_from_request() -> None:
    request = DummyRequest([b"v2", b""])
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer abc"])
    request.requestHeaders.setRawHeaders(b"host", [b"registry.local:5000"])
    creds = credentials_from_request(request)
    assert creds.authorization == b"Bearer abc"
    assert creds.host == "registry.local:5000"
    assert creds.scheme == "http"
    assert creds.forwarded_proto is None
    request.requestHeaders.setRawHeaders(b"x-forwarded-proto", [b"https"])
    assert credentials_from_request(request).scheme == "https"
    assert credentials_from_request(request).forwarded_proto == "https"
    assert credentials_from_request(DummyRequest([b""])).authorization is None
