"""``registry.manifest_types``: media-type detection, shape validation and
Accept negotiation, tested directly (pure functions)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from registry.manifest_types import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    OCI_EMPTY_DIGEST,
    OCI_INDEX,
    OCI_MANIFEST,
    ManifestError,
    Schema1Error,
    is_acceptable,
    media_type_of,
    parse_manifest,
)
from registry.digest import sha256_digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def desc(mt: str = "application/vnd.oci.image.layer.v1.tar+gzip", digest: str = D1, size: int = 10, **kw: Any) -> dict[str, Any]:
    return {"mediaType": mt, "digest": digest, "size": size, **kw}


def body(**fields: Any) -> bytes:
    return json.dumps({"schemaVersion": 2, **fields}).encode()


def image(mt: str | None = OCI_MANIFEST, **kw: Any) -> bytes:
    fields: dict[str, Any] = {"config": desc("application/vnd.oci.image.config.v1+json", D2), "layers": [desc()]}
    if mt is not None:
        fields["mediaType"] = mt
    fields.update(kw)
    return body(**fields)


def test_the_empty_digest_is_the_digest_of_two_braces() -> None:
    assert sha256_digest(b"{}") == OCI_EMPTY_DIGEST


@pytest.mark.parametrize("mt", [DOCKER_MANIFEST, OCI_MANIFEST])
def test_image_manifests(mt: str) -> None:
    m = parse_manifest(image(mt), mt)
    assert m.media_type == mt
    assert [str(d.digest) for d in m.blobs] == [D2, D1]
    assert not m.is_index
    assert media_type_of(image(mt)) == mt


@pytest.mark.parametrize("mt", [DOCKER_LIST, OCI_INDEX])
def test_indexes(mt: str) -> None:
    raw = body(mediaType=mt, manifests=[desc(OCI_MANIFEST, D1, platform={"os": "linux", "architecture": "amd64"})])
    m = parse_manifest(raw, mt)
    assert m.is_index and [str(c.digest) for c in m.children] == [D1] and m.blobs == ()


def test_oci_types_without_media_type_take_the_content_type_or_the_shape() -> None:
    raw = image(None)
    assert parse_manifest(raw, OCI_MANIFEST).media_type == OCI_MANIFEST
    assert parse_manifest(raw, None).media_type == OCI_MANIFEST
    assert parse_manifest(raw, "application/json").media_type == OCI_MANIFEST
    assert media_type_of(raw) == OCI_MANIFEST
    idx = body(manifests=[desc(OCI_MANIFEST)])
    assert parse_manifest(idx, OCI_INDEX).media_type == OCI_INDEX
    assert media_type_of(idx) == OCI_INDEX
    # The pushed Content-Type must agree with the shape served later.
    with pytest.raises(ManifestError, match="index"):
        parse_manifest(idx, OCI_MANIFEST)
    with pytest.raises(ManifestError, match="image manifest"):
        parse_manifest(raw, OCI_INDEX)


def test_docker_types_must_carry_their_media_type() -> None:
    with pytest.raises(ManifestError, match="mediaType"):
        parse_manifest(image(None), DOCKER_MANIFEST)


def test_content_type_must_match_media_type() -> None:
    with pytest.raises(ManifestError, match="does not match"):
        parse_manifest(image(OCI_MANIFEST), DOCKER_MANIFEST)
    # Parameters and case are ignored.
    assert parse_manifest(image(OCI_MANIFEST), OCI_MANIFEST.upper() + "; charset=utf-8").media_type == OCI_MANIFEST


def test_artifacts() -> None:
    empty = desc("application/vnd.oci.empty.v1+json", str(OCI_EMPTY_DIGEST), 2)
    raw = body(mediaType=OCI_MANIFEST, artifactType="application/vnd.example.sbom", config=empty, layers=[empty],
               subject=desc(OCI_MANIFEST, D1), annotations={"a": "b"})
    m = parse_manifest(raw, OCI_MANIFEST)
    assert m.effective_artifact_type == "application/vnd.example.sbom"
    assert m.subject is not None and str(m.subject.digest) == D1
    assert m.annotations == {"a": "b"}
    custom = body(mediaType=OCI_MANIFEST, config=desc("application/vnd.example.config+json", D2), layers=[])
    assert parse_manifest(custom, OCI_MANIFEST).effective_artifact_type == "application/vnd.example.config+json"


@pytest.mark.parametrize(
    "raw, ct",
    [
        (body(mediaType=DOCKER_SCHEMA1, fsLayers=[]), None),
        (json.dumps({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}).encode(), "application/json"),
        (json.dumps({"schemaVersion": 1, "signatures": []}).encode(), DOCKER_SCHEMA1_SIGNED),
        (b"not even json", DOCKER_SCHEMA1_SIGNED),
        (image(OCI_MANIFEST), DOCKER_SCHEMA1),
    ],
)
def test_schema1_is_refused(raw: bytes, ct: str | None) -> None:
    with pytest.raises(Schema1Error, match="schema 1 is not supported"):
        parse_manifest(raw, ct)


@pytest.mark.parametrize(
    "raw, ct, message",
    [
        (b"{", OCI_MANIFEST, "not valid JSON"),
        (b"\xff\xfe", OCI_MANIFEST, "UTF-8"),
        (b"[1, 2]", OCI_MANIFEST, "JSON object"),
        (b"{}", OCI_MANIFEST, "schemaVersion must be 2"),
        (body(), None, "cannot tell"),
        (json.dumps({"schemaVersion": True, "config": desc()}).encode(), None, "schemaVersion"),
        (body(mediaType="application/vnd.example.thing+json", config=desc(), layers=[]), None, "unsupported manifest media type.*artifactType"),
        (body(mediaType="application/vnd.example.thing+json"), None, "unsupported manifest media type"),
        (body(config=desc(), layers=[]), "application/vnd.example.thing+json", "unsupported manifest media type"),
        (image(OCI_MANIFEST, config=None), OCI_MANIFEST, "config"),
        (image(OCI_MANIFEST, layers="x"), OCI_MANIFEST, "layers must be an array"),
        (body(mediaType=OCI_MANIFEST, config=desc()), OCI_MANIFEST, "no 'layers'"),
        (image(OCI_MANIFEST, layers=[{"digest": D1, "size": 1}]), OCI_MANIFEST, r"layers\[0\].mediaType"),
        (image(OCI_MANIFEST, layers=[desc(digest="sha256:abc")]), OCI_MANIFEST, r"layers\[0\].digest"),
        (image(OCI_MANIFEST, layers=[desc(digest="md5:" + "a" * 32)]), OCI_MANIFEST, r"layers\[0\].digest"),
        (image(OCI_MANIFEST, layers=[desc(size=-1)]), OCI_MANIFEST, r"layers\[0\].size"),
        (image(OCI_MANIFEST, layers=[desc(size="10")]), OCI_MANIFEST, r"layers\[0\].size"),
        (image(OCI_MANIFEST, annotations={"a": 1}), OCI_MANIFEST, "annotations"),
        (image(OCI_MANIFEST, manifests=[]), OCI_MANIFEST, "must not have a 'manifests'"),
        (body(mediaType=OCI_INDEX, manifests=[], config=desc()), OCI_INDEX, "must not have 'config'"),
        (body(mediaType=OCI_INDEX, manifests={}), OCI_INDEX, "manifests must be an array"),
        (body(mediaType=DOCKER_LIST, manifests=[desc()]), DOCKER_LIST, "may only list image manifests"),
        (image(DOCKER_MANIFEST, subject=desc(OCI_MANIFEST)), DOCKER_MANIFEST, "subject"),
        (image(OCI_MANIFEST, subject="sha256:x"), OCI_MANIFEST, "subject must be a descriptor"),
        (image(OCI_MANIFEST, artifactType=""), OCI_MANIFEST, "artifactType"),
    ],
)
def test_invalid_manifests(raw: bytes, ct: str | None, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_manifest(raw, ct)


def test_foreign_layers_with_urls_are_not_required_blobs() -> None:
    foreign = desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", urls=["https://example.com/l"])
    m = parse_manifest(image(DOCKER_MANIFEST, layers=[foreign, desc()]), DOCKER_MANIFEST)
    assert [str(d.digest) for d in m.blobs] == [D2, D1] and len(m.layers) == 2
    no_urls = desc("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", D2)
    assert len(parse_manifest(image(DOCKER_MANIFEST, layers=[no_urls]), DOCKER_MANIFEST).blobs) == 2


@pytest.mark.parametrize(
    "accept, mt, ok",
    [
        ([], OCI_INDEX, True),
        (["*/*"], DOCKER_LIST, True),
        ([DOCKER_MANIFEST], DOCKER_LIST, False),
        ([DOCKER_MANIFEST], DOCKER_MANIFEST, True),
        ([f"{DOCKER_MANIFEST}; q=0.9", f"{OCI_INDEX};q=0.5"], OCI_INDEX, True),
        (["application/*"], OCI_MANIFEST, True),
        (["text/*"], OCI_MANIFEST, False),
        ([OCI_MANIFEST], OCI_INDEX, False),
    ],
)
def test_accept(accept: list[str], mt: str, ok: bool) -> None:
    assert is_acceptable(mt, accept) is ok
