"""CNCF Distribution 2.8.2 (Debian ``docker-registry``) as the oracle for
which tokens a registry with the same ``auth.token`` settings accepts: the
same JWTs are sent to it and to ours, and both must agree. This is what
shows that our libtrust key IDs are Distribution's (its 2.x trusted-key map
is keyed by them) and that an ``x5c`` chain through an intermediate is
followed the same way. Runs under ``-m clients`` (real processes)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
from cryptography.hazmat.primitives import serialization

from registry.auth.keys import libtrust_key_id
from tests.auth.pki import CA, claims, grant, mint, root_signer
from tests.clients.harness import (
    MissingTool,
    Registry,
    _start_registry,
    http_request,
    missing_tool,
    require,
    start_our_registry,
)

pytestmark = pytest.mark.clients

SERVICE, ISSUER = "test-registry", "test-issuer"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Two self-signed signers named by ``kid`` (EC, RSA), a CA whose
    intermediate issues an x5c signer, and a stranger; the bundle holds the
    two self-signed certificates and the CA's root."""
    directory = tmp_path_factory.mktemp("oracle")
    ec_signer, ec_cert = root_signer("ec", "oracle ec")
    rsa_signer, rsa_cert = root_signer("rsa", "oracle rsa")
    ca = CA.make("ec", "Oracle")
    stranger, _ = root_signer("ec", "stranger")
    bundle = directory / "bundle.pem"
    bundle.write_bytes(
        ec_cert.public_bytes(serialization.Encoding.PEM)
        + rsa_cert.public_bytes(serialization.Encoding.PEM)
        + ca.bundle_pem()
    )
    return {"ec": ec_signer, "rsa": rsa_signer, "ca": ca, "stranger": stranger, "bundle": bundle}


def _auth(bundle: Path) -> dict[str, object]:
    return {"auth": {"token": {
        "realm": "http://127.0.0.1:9/token", "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(bundle),
    }}}


@pytest.fixture(scope="module")
def registries(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, object]) -> Iterator[list[Registry]]:
    extra = _auth(keys["bundle"])  # type: ignore[arg-type]
    try:
        binary = require("docker-registry", "docker-registry")
    except MissingTool as error:
        missing_tool(error)
    reference = _start_registry(
        "reference", lambda config: [binary, "serve", str(config)], "reference registry with token auth",
        tmp_path_factory.mktemp("reference"), 30, None, extra,
    )
    try:
        ours = start_our_registry(tmp_path_factory.mktemp("ours"), extra_config=extra)
        try:
            yield [reference, ours]
        finally:
            ours.stop()
    finally:
        reference.stop()


def _token(kind: str, keys: dict[str, object]) -> str:
    access = [grant("team/app", "pull")]
    ec, rsa, ca, stranger = keys["ec"], keys["rsa"], keys["ca"], keys["stranger"]
    if kind == "libtrust-kid-ec":
        return mint(ec, claims(access=access), use="kid", kid=libtrust_key_id(ec.key.public_key()))  # type: ignore[attr-defined]
    if kind == "libtrust-kid-rsa":
        return mint(rsa, claims(access=access), use="kid", kid=libtrust_key_id(rsa.key.public_key()))  # type: ignore[attr-defined]
    if kind == "x5c-through-intermediate":
        return mint(ca.signer("ec"), claims(access=access))  # type: ignore[attr-defined]
    if kind == "kid-of-an-untrusted-key":
        return mint(stranger, claims(access=access), use="kid", kid=libtrust_key_id(stranger.key.public_key()))  # type: ignore[attr-defined]
    if kind == "trusted-kid-signed-by-another-key":
        return mint(stranger, claims(access=access), use="kid", kid=libtrust_key_id(ec.key.public_key()))  # type: ignore[attr-defined]
    if kind == "kid-off-by-one-group":
        kid = libtrust_key_id(ec.key.public_key())  # type: ignore[attr-defined]
        return mint(ec, claims(access=access), use="kid", kid=kid[:-4] + ("AAAA" if not kid.endswith("AAAA") else "BBBB"))
    if kind == "x5c-without-its-intermediate":
        signer = ca.signer("ec")  # type: ignore[attr-defined]
        signer.chain = signer.chain[:1]
        return mint(signer, claims(access=access))
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind, accepted",
    [
        ("libtrust-kid-ec", True),
        ("libtrust-kid-rsa", True),
        ("x5c-through-intermediate", True),
        ("kid-of-an-untrusted-key", False),
        ("trusted-kid-signed-by-another-key", False),
        ("kid-off-by-one-group", False),
        ("x5c-without-its-intermediate", False),
    ],
)
def test_distribution_and_ours_agree(registries: list[Registry], keys: dict[str, object], kind: str, accepted: bool) -> None:
    token = _token(kind, keys)
    statuses = {
        r.kind: http_request(f"{r.url}/v2/team/app/tags/list", headers={"Authorization": f"Bearer {token}"}).status
        for r in registries
    }
    if accepted:
        assert statuses == {"reference": 404, "ours": 404}, statuses  # let in; the repository does not exist
    else:
        assert statuses == {"reference": 401, "ours": 401}, statuses
