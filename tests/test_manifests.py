"""``/v2/<name>/manifests/<reference>`` over real HTTP (a registry on
127.0.0.1, in-memory storage): every media type, every validation error
(with storage unchanged afterwards), Accept negotiation, deletes, names and
tags at the grammar's edges, and the on-storage layout."""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted

from registry.digest import sha256_digest
from registry.manifest_types import OCI_EMPTY_DIGEST
from registry.storage import paths
from registry.digest import Digest
from tests.manifest_fixtures import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Response,
    Server,
    dumps,
    image,
    index_body,
    server,
    start_server,
)

__all__ = ["server"]  # the fixture

ALL_ACCEPT = [f"{DOCKER_MANIFEST}, {DOCKER_LIST}", OCI_MANIFEST, OCI_INDEX]


def check_served(r: Response, body: bytes, media_type: str, head: bool = False) -> None:
    assert r.status == 200, r.body
    assert r.header("content-type") == media_type
    assert r.header("docker-content-digest") == str(sha256_digest(body))
    assert r.header("content-length") == str(len(body))
    assert r.body == (b"" if head else body)


async def assert_refused(srv: Server, name: str, reference: str, body: bytes, ct: str | None,
                         status: int, code: str, message: str, chunked: bool = False) -> dict[str, Any]:
    """PUT that must fail with ``status``/``code`` and a message matching
    ``message``, leaving every stored byte as it was."""
    before = await srv.snapshot()
    r = await srv.put_manifest(name, reference, body, ct, chunked)
    assert r.status == status, r.body
    err = r.error()
    assert err["code"] == code
    assert message.lower() in err["message"].lower(), err["message"]
    assert await srv.snapshot() == before
    return err


# -- every media type --------------------------------------------------------


@pytest.mark.parametrize("media_type", [DOCKER_MANIFEST, OCI_MANIFEST])
@pytest_twisted.ensureDeferred
async def test_image_manifest_by_tag_and_digest(server: Server, media_type: str) -> None:
    body, desc = await image(server, "lib/app", media_type)
    r = await server.put_manifest("lib/app", "v1", body, media_type)
    assert r.status == 201, r.body
    assert r.header("docker-content-digest") == desc["digest"]
    assert r.header("location") == f"/v2/lib/app/manifests/{desc['digest']}"
    assert r.header("oci-subject") is None
    for ref in ("v1", desc["digest"]):
        check_served(await server.request("GET", f"/v2/lib/app/manifests/{ref}", headers={"Accept": ALL_ACCEPT}), body, media_type)
        check_served(await server.request("HEAD", f"/v2/lib/app/manifests/{ref}"), body, media_type, head=True)
    # Distribution's layout, exactly.
    d = Digest.parse(desc["digest"])
    drv = server.driver
    assert await drv.get_content(paths.blob_data(d)) == body
    assert await drv.get_content(paths.manifest_revision_link("lib/app", d)) == desc["digest"].encode()
    assert await drv.get_content(paths.tag_current_link("lib/app", "v1")) == desc["digest"].encode()
    assert await drv.get_content(paths.tag_index_link("lib/app", "v1", d)) == desc["digest"].encode()


@pytest.mark.parametrize("media_type", [DOCKER_LIST, OCI_INDEX])
@pytest_twisted.ensureDeferred
async def test_index_after_its_children(server: Server, media_type: str) -> None:
    children = []
    for arch in ("amd64", "arm64"):
        mt = DOCKER_MANIFEST if media_type == DOCKER_LIST else OCI_MANIFEST
        body, desc = await image(server, "multi", mt, seed=arch)
        assert (await server.put_manifest("multi", desc["digest"], body, mt)).status == 201
        children.append(desc)
    idx = index_body(children, media_type)
    r = await server.put_manifest("multi", "latest", idx, media_type)
    assert r.status == 201, r.body
    check_served(await server.request("GET", "/v2/multi/manifests/latest"), idx, media_type)


@pytest_twisted.ensureDeferred
async def test_oci_manifest_without_media_type_is_served_with_the_pushed_type(server: Server) -> None:
    body, _ = await image(server, "nomt", OCI_MANIFEST)
    obj = json.loads(body)
    del obj["mediaType"]
    raw = dumps(obj)
    assert (await server.put_manifest("nomt", "m", raw, OCI_MANIFEST)).status == 201
    check_served(await server.request("GET", "/v2/nomt/manifests/m"), raw, OCI_MANIFEST)
    idx = dumps({"schemaVersion": 2, "manifests": [{"mediaType": OCI_MANIFEST, "digest": str(sha256_digest(raw)), "size": len(raw)}]})
    assert (await server.put_manifest("nomt", "i", idx, OCI_INDEX)).status == 201
    check_served(await server.request("GET", "/v2/nomt/manifests/i"), idx, OCI_INDEX)


@pytest_twisted.ensureDeferred
async def test_artifacts_custom_config_and_the_empty_descriptor(server: Server) -> None:
    subject_body, subject = await image(server, "art")
    assert (await server.put_manifest("art", "v1", subject_body, OCI_MANIFEST)).status == 201
    # A custom config media type: an artifact whose config blob is pushed.
    cfg = await server.put_blob("art", b'{"tool": "x"}')
    custom = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": "application/vnd.example.config.v1+json", **cfg}, "layers": []})
    r = await server.put_manifest("art", "custom", custom, OCI_MANIFEST)
    assert r.status == 201, r.body
    # artifactType + the empty descriptor, never uploaded: accepted, and the
    # empty blob is then in the repository.
    empty = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(OCI_EMPTY_DIGEST), "size": 2, "data": "e30="}
    sig = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sig",
                 "config": empty, "layers": [empty], "subject": subject})
    r = await server.put_manifest("art", str(sha256_digest(sig)), sig, OCI_MANIFEST)
    assert r.status == 201, r.body
    assert r.header("oci-subject") == subject["digest"]
    blob = await server.request("GET", f"/v2/art/blobs/{OCI_EMPTY_DIGEST}")
    assert blob.status == 200 and blob.body == b"{}"
    check_served(await server.request("GET", f"/v2/art/manifests/{sha256_digest(sig)}"), sig, OCI_MANIFEST)
    # The empty descriptor with a wrong size is no exception.
    bad = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {**empty, "size": 3}, "layers": []})
    await assert_refused(server, "art", "bad", bad, OCI_MANIFEST, 400, "MANIFEST_INVALID", "size 3")


@pytest_twisted.ensureDeferred
async def test_exact_bytes_are_served(server: Server) -> None:
    body, _ = await image(server, "bytes", DOCKER_MANIFEST)
    odd = body.replace(b"\n", b"\r\n   ") + b"  \n"  # same JSON, other bytes
    r = await server.put_manifest("bytes", "odd", odd, DOCKER_MANIFEST)
    assert r.status == 201
    assert r.header("docker-content-digest") == str(sha256_digest(odd))
    check_served(await server.request("GET", "/v2/bytes/manifests/odd"), odd, DOCKER_MANIFEST)


# -- validation errors, storage unchanged -------------------------------------


@pytest_twisted.ensureDeferred
async def test_schema1_is_refused(server: Server) -> None:
    s1 = dumps({"schemaVersion": 1, "name": "old", "tag": "v1", "architecture": "amd64", "fsLayers": [], "history": []})
    for ct in ("application/vnd.docker.distribution.manifest.v1+json", "application/vnd.docker.distribution.manifest.v1+prettyjws", None):
        await assert_refused(server, "old", "v1", s1, ct, 400, "MANIFEST_INVALID", "schema 1 is not supported")


@pytest.mark.parametrize(
    "body, ct, message",
    [
        (b"this is not json", OCI_MANIFEST, "not valid JSON"),
        (b'["a list"]', OCI_MANIFEST, "JSON object"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": 7, "layers": []}', OCI_MANIFEST, "config must be a descriptor"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.example+json", "config": {}, "layers": []}', None, "unsupported manifest media type"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.example+json"}', None, "unsupported manifest media type"),
        (b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {}, "layers": []}', DOCKER_MANIFEST, "does not match"),
        (b'{"schemaVersion": 2}', None, "cannot tell"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_malformed_manifests(server: Server, body: bytes, ct: str | None, message: str) -> None:
    good, _ = await image(server, "bad")
    assert (await server.put_manifest("bad", "keep", good, OCI_MANIFEST)).status == 201
    await assert_refused(server, "bad", "keep", body, ct, 400, "MANIFEST_INVALID", message)
    check_served(await server.request("GET", "/v2/bad/manifests/keep"), good, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_blobs_must_be_in_this_repository(server: Server) -> None:
    body, _ = await image(server, "other")  # blobs pushed to "other" only
    obj = json.loads(body)
    err = await assert_refused(server, "mine", "v1", body, OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN", "upload (or mount)")
    assert err["detail"]["digest"] == obj["config"]["digest"]
    assert err["detail"]["missing"] == [obj["config"]["digest"]] + [layer["digest"] for layer in obj["layers"]]
    # One missing layer is named.
    ok, _ = await image(server, "mine")
    mine = json.loads(ok)
    missing = "sha256:" + "f" * 64
    mine["layers"].append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": missing, "size": 5})
    err = await assert_refused(server, "mine", "v1", dumps(mine), OCI_MANIFEST, 400, "MANIFEST_BLOB_UNKNOWN", missing)
    assert err["detail"]["missing"] == [missing]


@pytest_twisted.ensureDeferred
async def test_wrong_blob_size_is_refused(server: Server) -> None:
    body, _ = await image(server, "size")
    obj = json.loads(body)
    obj["layers"][0]["size"] += 1
    await assert_refused(server, "size", "v1", dumps(obj), OCI_MANIFEST, 400, "MANIFEST_INVALID", "says size")


@pytest_twisted.ensureDeferred
async def test_index_naming_a_missing_child(server: Server) -> None:
    body, desc = await image(server, "idx")
    assert (await server.put_manifest("idx", desc["digest"], body, OCI_MANIFEST)).status == 201
    missing = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "e" * 64, "size": 100}
    err = await assert_refused(server, "idx", "all", index_body([desc, missing]), OCI_INDEX, 400,
                               "MANIFEST_BLOB_UNKNOWN", "push the child manifests")
    assert err["detail"]["missing"] == [missing["digest"]]
    # A child in another repository does not count either.
    other_body, other = await image(server, "elsewhere", seed="o")
    assert (await server.put_manifest("elsewhere", other["digest"], other_body, OCI_MANIFEST)).status == 201
    await assert_refused(server, "idx", "all", index_body([desc, other]), OCI_INDEX, 400, "MANIFEST_BLOB_UNKNOWN", other["digest"])
    # Every missing child is named, in the index's order, each once.
    second = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "d" * 64, "size": 100}
    err = await assert_refused(server, "idx", "all", index_body([missing, desc, second, other, missing]), OCI_INDEX, 400,
                               "MANIFEST_BLOB_UNKNOWN", "push the child manifests")
    assert err["detail"]["missing"] == [missing["digest"], second["digest"], other["digest"]]
    assert (await server.request("GET", "/v2/idx/manifests/all")).status == 404  # nothing was stored


@pytest_twisted.ensureDeferred
async def test_digest_reference_must_match_the_body(server: Server) -> None:
    body, desc = await image(server, "dig")
    wrong = "sha256:" + "0" * 64
    err = await assert_refused(server, "dig", wrong, body, OCI_MANIFEST, 400, "DIGEST_INVALID", desc["digest"])
    assert err["detail"] == {"expected": wrong, "actual": desc["digest"]}
    await assert_refused(server, "dig", "sha512:" + "0" * 128, body, OCI_MANIFEST, 400, "DIGEST_INVALID", "sha256")


@pytest_twisted.ensureDeferred
async def test_oversize_manifest(server: Server) -> None:
    body, _ = await image(server, "big")
    obj = json.loads(body)
    limit = 4 * 1024 * 1024
    obj["annotations"] = {"pad": ""}
    obj["annotations"]["pad"] = "x" * (limit - len(dumps(obj)) - 10)
    fits = dumps(obj)
    fits = fits + b" " * (limit - len(fits))
    assert len(fits) == limit
    assert (await server.put_manifest("big", "max", fits, OCI_MANIFEST)).status == 201
    await assert_refused(server, "big", "over", fits + b" ", OCI_MANIFEST, 413, "MANIFEST_INVALID", "larger than")
    # Without a Content-Length (chunked), the limit holds as the bytes arrive.
    await assert_refused(server, "big", "over", fits + b" ", OCI_MANIFEST, 413, "MANIFEST_INVALID", "larger than", chunked=True)
    r = await server.put_manifest("big", "chunked", fits, OCI_MANIFEST, chunked=True)
    assert r.status == 201, r.body
    check_served(await server.request("GET", "/v2/big/manifests/chunked"), fits, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_read_only_registry_refuses_pushes() -> None:
    from registry.app import make_root
    from registry.http import RegistrySite
    from twisted.internet import reactor

    writer = await start_server()
    try:
        body, _ = await image(writer, "ro")
        assert (await writer.put_manifest("ro", "v1", body, OCI_MANIFEST)).status == 201
    finally:
        await writer.port.stopListening()
    site = RegistrySite(make_root(writer.driver, delete_enabled=True, readonly=True))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")  # type: ignore[attr-defined]
    srv = Server(writer.driver, f"http://127.0.0.1:{port.getHost().port}", port)
    try:
        await assert_refused(srv, "ro", "v2", body, OCI_MANIFEST, 405, "UNSUPPORTED", "read-only")
        check_served(await srv.request("GET", "/v2/ro/manifests/v1"), body, OCI_MANIFEST)
        before = await srv.snapshot()
        assert (await srv.request("DELETE", "/v2/ro/manifests/v1")).status == 405
        assert await srv.snapshot() == before
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "reference, code",
    [("-lead", "TAG_INVALID"), (".lead", "TAG_INVALID"), ("t" * 129, "TAG_INVALID"), ("a+b", "TAG_INVALID"),
     ("sha256:abc", "DIGEST_INVALID")],
)
@pytest_twisted.ensureDeferred
async def test_invalid_references(server: Server, reference: str, code: str) -> None:
    body, _ = await image(server, "ref")
    await assert_refused(server, "ref", reference, body, OCI_MANIFEST, 400, code, "")
    # A read of a reference that can never exist is simply unknown (404), as
    # the spec's pull workflow expects; only the write is a client error.
    for method in ("GET", "HEAD"):
        r = await server.request(method, f"/v2/ref/manifests/{reference}")
        assert r.status == 404, (method, r.body)
        if method == "GET":
            assert r.error()["code"] == "MANIFEST_UNKNOWN"
            assert "neither a valid tag nor a valid digest" in r.error()["message"]


@pytest_twisted.ensureDeferred
async def test_invalid_manifest_name_read_is_unknown(server: Server) -> None:
    # The OCI conformance suite's own probe.
    r = await server.request("GET", "/v2/ref/manifests/.INVALID_MANIFEST_NAME")
    assert r.status == 404 and r.error()["code"] == "MANIFEST_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_names_and_tags_at_the_grammar_edges(server: Server) -> None:
    name = "/".join(["a" * 63] * 3) + "/" + "b__c-d.e" * 7 + "f" * 7
    assert len(name) == 255
    body, desc = await image(server, name, layers=1)
    for tag in ("T" * 128, "_lead", "0", "a.b-c_d", "UPPER"):
        r = await server.put_manifest(name, tag, body, OCI_MANIFEST)
        assert r.status == 201, (tag, r.body)
        check_served(await server.request("GET", f"/v2/{name}/manifests/{tag}"), body, OCI_MANIFEST)
    r = await server.request("GET", f"/v2/{name}/tags/list")
    assert r.json() == {"name": name, "tags": sorted(["T" * 128, "_lead", "0", "a.b-c_d", "UPPER"])}
    too_long = name + "b"
    r = await server.put_manifest(too_long, "v1", body, OCI_MANIFEST)
    assert r.status == 400 and r.error()["code"] == "NAME_INVALID"


# -- Accept ------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_accept_negotiation(server: Server) -> None:
    child_body, child = await image(server, "neg", DOCKER_MANIFEST)
    assert (await server.put_manifest("neg", "single", child_body, DOCKER_MANIFEST)).status == 201
    lst = index_body([child], DOCKER_LIST)
    assert (await server.put_manifest("neg", "list", lst, DOCKER_LIST)).status == 201
    # Only schema 2: the list is not offered, with a message saying why.
    for method in ("GET", "HEAD"):
        r = await server.request(method, "/v2/neg/manifests/list", headers={"Accept": DOCKER_MANIFEST})
        assert r.status == 404
    r = await server.request("GET", "/v2/neg/manifests/list", headers={"Accept": DOCKER_MANIFEST})
    assert r.error()["code"] == "MANIFEST_UNKNOWN"
    assert DOCKER_LIST in r.error()["message"] and "Accept" in r.error()["message"]
    check_served(await server.request("GET", "/v2/neg/manifests/single", headers={"Accept": DOCKER_MANIFEST}), child_body, DOCKER_MANIFEST)
    # Several Accept lines: every line counts, not only the last.
    lines = [DOCKER_LIST, "application/vnd.docker.distribution.manifest.v1+prettyjws", DOCKER_MANIFEST]
    check_served(await server.request("GET", "/v2/neg/manifests/list", headers={"Accept": lines}), lst, DOCKER_LIST)
    for accept in (None, "*/*"):
        headers = {"Accept": accept} if accept else {}
        check_served(await server.request("GET", "/v2/neg/manifests/list", headers=headers), lst, DOCKER_LIST)
    r = await server.request("GET", "/v2/neg/manifests/single", headers={"Accept": OCI_MANIFEST})
    assert r.status == 404 and r.error()["code"] == "MANIFEST_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_unknown_manifests(server: Server) -> None:
    for ref in ("nope", "sha256:" + "a" * 64):
        r = await server.request("GET", f"/v2/none/manifests/{ref}")
        assert r.status == 404 and r.error()["code"] == "MANIFEST_UNKNOWN"
        assert repr(ref) in r.error()["message"]
        r = await server.request("HEAD", f"/v2/none/manifests/{ref}")
        assert r.status == 404 and r.body == b""


# -- deletes -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_delete_by_digest_removes_every_tag_pointing_at_it(server: Server) -> None:
    body, desc = await image(server, "del")
    other_body, other = await image(server, "del", seed="other")
    for tag in ("a", "b"):
        assert (await server.put_manifest("del", tag, body, OCI_MANIFEST)).status == 201
    assert (await server.put_manifest("del", "c", other_body, OCI_MANIFEST)).status == 201
    r = await server.request("DELETE", f"/v2/del/manifests/{desc['digest']}")
    assert r.status == 202, r.body
    for ref in ("a", "b", desc["digest"]):
        assert (await server.request("GET", f"/v2/del/manifests/{ref}")).status == 404
    assert (await server.request("GET", "/v2/del/tags/list")).json()["tags"] == ["c"]
    check_served(await server.request("GET", "/v2/del/manifests/c"), other_body, OCI_MANIFEST)
    r = await server.request("DELETE", f"/v2/del/manifests/{desc['digest']}")
    assert r.status == 404 and r.error()["code"] == "MANIFEST_UNKNOWN"
    # Pushing it again brings it back.
    assert (await server.put_manifest("del", "a", body, OCI_MANIFEST)).status == 201
    check_served(await server.request("GET", "/v2/del/manifests/a"), body, OCI_MANIFEST)


@pytest_twisted.ensureDeferred
async def test_delete_by_tag_removes_only_that_tag(server: Server) -> None:
    body, desc = await image(server, "untag")
    for tag in ("a", "b"):
        assert (await server.put_manifest("untag", tag, body, OCI_MANIFEST)).status == 201
    r = await server.request("DELETE", "/v2/untag/manifests/a")
    assert r.status == 202, r.body
    assert (await server.request("GET", "/v2/untag/manifests/a")).status == 404
    check_served(await server.request("GET", "/v2/untag/manifests/b"), body, OCI_MANIFEST)
    check_served(await server.request("GET", f"/v2/untag/manifests/{desc['digest']}"), body, OCI_MANIFEST)
    r = await server.request("DELETE", "/v2/untag/manifests/a")
    assert r.status == 404 and r.error()["code"] == "MANIFEST_UNKNOWN"


@pytest_twisted.ensureDeferred
async def test_deletes_disabled() -> None:
    srv = await start_server(delete_enabled=False)
    try:
        body, desc = await image(srv, "keep")
        assert (await srv.put_manifest("keep", "v1", body, OCI_MANIFEST)).status == 201
        before = await srv.snapshot()
        for ref in ("v1", desc["digest"]):
            r = await srv.request("DELETE", f"/v2/keep/manifests/{ref}")
            assert r.status == 405 and r.error()["code"] == "UNSUPPORTED"
            assert "storage.delete.enabled" in r.error()["message"]
        assert await srv.snapshot() == before
    finally:
        await srv.port.stopListening()


@pytest_twisted.ensureDeferred
async def test_retag_moves_current_and_keeps_the_index(server: Server) -> None:
    one, d1 = await image(server, "retag", seed="1")
    two, d2 = await image(server, "retag", seed="2")
    assert (await server.put_manifest("retag", "t", one, OCI_MANIFEST)).status == 201
    assert (await server.put_manifest("retag", "t", two, OCI_MANIFEST)).status == 201
    check_served(await server.request("GET", "/v2/retag/manifests/t"), two, OCI_MANIFEST)
    index = await server.driver.list(paths.tag_index_dir("retag", "t") + "/sha256")
    assert sorted(p.rsplit("/", 1)[1] for p in index) == sorted([d1["digest"][7:], d2["digest"][7:]])
    # Deleting the old digest leaves the tag that moved on.
    assert (await server.request("DELETE", f"/v2/retag/manifests/{d1['digest']}")).status == 202
    check_served(await server.request("GET", "/v2/retag/manifests/t"), two, OCI_MANIFEST)
