"""``GET /v2/<name>/referrers/<digest>`` over real HTTP: the OCI index of
manifests whose subject is the digest, ``artifactType`` filtering with
``OCI-Filters-Applied``, deletes dropping out, and never a 404."""

from __future__ import annotations

from typing import Any

import pytest_twisted

from registry.digest import sha256_digest
from registry.manifest_types import OCI_EMPTY_DIGEST
from tests.manifest_fixtures import OCI_INDEX, OCI_MANIFEST, Server, dumps, image, server

__all__ = ["server"]

EMPTY = {"mediaType": "application/vnd.oci.empty.v1+json", "digest": str(OCI_EMPTY_DIGEST), "size": 2}


def artifact(subject: dict[str, Any], artifact_type: str | None, **extra: Any) -> bytes:
    m: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": EMPTY, "layers": [EMPTY], "subject": subject}
    if artifact_type:
        m["artifactType"] = artifact_type
    m.update(extra)
    return dumps(m)


async def referrers(srv: Server, name: str, digest: str, query: str = "") -> tuple[list[dict[str, Any]], str | None]:
    r = await srv.request("GET", f"/v2/{name}/referrers/{digest}{query}")
    assert r.status == 200, r.body
    assert r.header("content-type") == OCI_INDEX
    body = r.json()
    assert body["schemaVersion"] == 2 and body["mediaType"] == OCI_INDEX
    return body["manifests"], r.header("oci-filters-applied")


@pytest_twisted.ensureDeferred
async def test_referrers_listing_filtering_and_deletes(server: Server) -> None:
    subject_body, subject = await image(server, "ref")
    assert (await server.put_manifest("ref", "v1", subject_body, OCI_MANIFEST)).status == 201
    assert await referrers(server, "ref", subject["digest"]) == ([], None)

    sig = artifact(subject, "application/vnd.example.sig", annotations={"org.example.signer": "me"})
    sbom = artifact(subject, "application/vnd.example.sbom")
    # No artifactType: the config's media type is reported.
    cfg = await server.put_blob("ref", b'{"kind": "attestation"}')
    attestation = dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "subject": subject,
                         "config": {"mediaType": "application/vnd.example.attestation.config+json", **cfg}, "layers": []})
    # An index can refer to a subject too.
    idx = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.example.bundle",
                 "manifests": [], "subject": subject})
    pushed = {}
    for body, mt in ((sig, OCI_MANIFEST), (sbom, OCI_MANIFEST), (attestation, OCI_MANIFEST), (idx, OCI_INDEX)):
        d = str(sha256_digest(body))
        r = await server.put_manifest("ref", d, body, mt)
        assert r.status == 201, r.body
        assert r.header("oci-subject") == subject["digest"]
        pushed[d] = (body, mt)

    listed, filters = await referrers(server, "ref", subject["digest"])
    assert filters is None
    assert [m["digest"] for m in listed] == sorted(pushed)
    by_digest = {m["digest"]: m for m in listed}
    for d, (body, mt) in pushed.items():
        assert by_digest[d]["mediaType"] == mt and by_digest[d]["size"] == len(body)
    assert by_digest[str(sha256_digest(sig))]["artifactType"] == "application/vnd.example.sig"
    assert by_digest[str(sha256_digest(sig))]["annotations"] == {"org.example.signer": "me"}
    assert "annotations" not in by_digest[str(sha256_digest(sbom))]
    assert by_digest[str(sha256_digest(attestation))]["artifactType"] == "application/vnd.example.attestation.config+json"
    assert by_digest[str(sha256_digest(idx))]["artifactType"] == "application/vnd.example.bundle"

    listed, filters = await referrers(server, "ref", subject["digest"], "?artifactType=application/vnd.example.sbom")
    assert filters == "artifactType"
    assert [m["digest"] for m in listed] == [str(sha256_digest(sbom))]
    listed, filters = await referrers(server, "ref", subject["digest"], "?artifactType=application/vnd.none")
    assert listed == [] and filters == "artifactType"

    # A deleted referrer drops out; the subject's deletion does not remove referrers.
    assert (await server.request("DELETE", f"/v2/ref/manifests/{sha256_digest(sbom)}")).status == 202
    listed, _ = await referrers(server, "ref", subject["digest"])
    assert str(sha256_digest(sbom)) not in [m["digest"] for m in listed] and len(listed) == 3
    assert (await server.request("DELETE", f"/v2/ref/manifests/{subject['digest']}")).status == 202
    listed, _ = await referrers(server, "ref", subject["digest"])
    assert len(listed) == 3


@pytest_twisted.ensureDeferred
async def test_subject_need_not_exist_and_repositories_are_separate(server: Server) -> None:
    absent = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "5" * 64, "size": 123}
    body = artifact(absent, "application/vnd.example.sig")
    r = await server.put_manifest("early", "sig", body, OCI_MANIFEST)
    assert r.status == 201 and r.header("oci-subject") == absent["digest"]
    listed, _ = await referrers(server, "early", absent["digest"])
    assert [m["digest"] for m in listed] == [str(sha256_digest(body))]
    # Other repositories, even unknown ones, answer 200 with an empty index.
    assert await referrers(server, "other", absent["digest"]) == ([], None)


@pytest_twisted.ensureDeferred
async def test_invalid_digest(server: Server) -> None:
    r = await server.request("GET", "/v2/x/referrers/sha256:nothex")
    assert r.status == 400 and r.error()["code"] == "DIGEST_INVALID"
