"""Key IDs: Docker libtrust's (Distribution 2.x) and RFC 7638 thumbprints,
each checked against a computation done another way."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from registry.auth.keys import jwk_thumbprint, libtrust_key_id
from tests.auth.pki import b64url, new_key

B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def libtrust_by_bits(public: Any) -> str:
    """libtrust's ID computed bit by bit: 240 bits of SHA-256(SPKI DER) in
    5-bit base32 digits (48), grouped by 4."""
    digest = hashlib.sha256(public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).digest()
    bits = int.from_bytes(digest, "big") >> (256 - 240)
    digits = [B32[(bits >> (240 - 5 * (i + 1))) & 31] for i in range(48)]
    return ":".join("".join(digits[i : i + 4]) for i in range(0, 48, 4))


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_libtrust_key_id(kind: str) -> None:
    public = new_key(kind).public_key()
    kid = libtrust_key_id(public)
    assert re.fullmatch(r"([A-Z2-7]{4}:){11}[A-Z2-7]{4}", kid)
    assert kid == libtrust_by_bits(public)


def thumbprint_via_pyjwt(public: Any) -> str:
    if isinstance(public, rsa.RSAPublicKey):
        doc = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        required = ("e", "kty", "n")
    elif isinstance(public, ec.EllipticCurvePublicKey):
        doc = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        required = ("crv", "kty", "x", "y")
    else:
        doc = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
        required = ("crv", "kty", "x")
    canonical = json.dumps({k: doc[k] for k in required}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_rfc7638_thumbprint(kind: str) -> None:
    public = new_key(kind).public_key()
    assert jwk_thumbprint(public) == thumbprint_via_pyjwt(public)


def test_rfc7638_example() -> None:
    # RFC 7638 section 3.1: the example RSA key's thumbprint.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n"
        "91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    e = "AQAB"

    def b64int(s: str) -> int:
        import base64

        return int.from_bytes(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)), "big")

    public = rsa.RSAPublicNumbers(b64int(e), b64int(n)).public_key()
    assert jwk_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
