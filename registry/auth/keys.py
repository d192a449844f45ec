"""Trusted token-signing keys: the root certificate bundle, a JWKS file,
and the two key IDs a token's ``kid`` may use to name a bundle key.

- ``libtrust_key_id``: Distribution 2.x (docker/libtrust ``keyIDFromCryptoKey``):
  SHA-256 of the DER SubjectPublicKeyInfo, first 240 bits, base32 without
  padding (48 characters), in 12 groups of 4 joined by ``:``.
- ``jwk_thumbprint``: RFC 7638, SHA-256, base64url without padding, as
  Distribution 3 (``GetJWKThumbprint``), Ed25519 included.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, Union

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PublicKey = Union[rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey]

_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def libtrust_key_id(key: PublicKey) -> str:
    """Docker libtrust's key ID of ``key``
    (``ABCD:EFGH:...:MNOP``, 12 groups)."""
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode("ascii").rstrip("=")
    return ":".join(b32[i : i + 4] for i in range(0, len(b32), 4))


def _b64url_uint(n: int) -> str:
    raw = n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def jwk_thumbprint(key: PublicKey) -> str | None:
    """RFC 7638 SHA-256 thumbprint of ``key``, or None for a key type
    without one here (EC curves other than P-256/384/521)."""
    members: dict[str, str]
    if isinstance(key, rsa.RSAPublicKey):
        numbers = key.public_numbers()
        members = {"e": _b64url_uint(numbers.e), "kty": "RSA", "n": _b64url_uint(numbers.n)}
    elif isinstance(key, ec.EllipticCurvePublicKey):
        crv = _CURVE_NAMES.get(key.curve.name)
        if crv is None:
            return None
        size = (key.curve.key_size + 7) // 8
        pn = key.public_numbers()
        members = {
            "crv": crv,
            "kty": "EC",
            "x": _b64url(pn.x.to_bytes(size, "big")),
            "y": _b64url(pn.y.to_bytes(size, "big")),
        }
    elif isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        crv = "Ed25519" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448"
        members = {"crv": crv, "kty": "OKP", "x": _b64url(key.public_bytes(Encoding.Raw, PublicFormat.Raw))}
    else:
        return None
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode("ascii")
    return _b64url(hashlib.sha256(canonical).digest())


def as_public_key(key: Any, where: str) -> PublicKey:
    """``key`` (a public or private key object) as a supported public key;
    ``ValueError`` naming ``where`` otherwise."""
    private = (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)
    if isinstance(key, private):
        key = key.public_key()
    if isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key
    raise ValueError(f"{where}: unsupported key type {type(key).__name__}; use RSA, ECDSA or Ed25519")


def load_cert_bundle(path: str, setting: str = "auth.token.rootcertbundle") -> list[x509.Certificate]:
    """The certificates in a PEM bundle. ``ValueError`` naming ``setting``
    when the file is unreadable, has a bad certificate or has none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{setting}: cannot read {path}: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ValueError(f"{setting}: {path} is not a PEM certificate bundle: {e}") from None
    for i, cert in enumerate(certs, start=1):
        as_public_key(cert.public_key(), f"{setting}: {path} certificate {i} ({cert.subject.rfc4514_string()})")
    return certs


def load_jwks(path: str, setting: str = "auth.token.jwks") -> dict[str, PublicKey]:
    """``{kid: public key}`` from a JWK Set file (``{"keys": [...]}``). A key
    without ``kid`` is known by its RFC 7638 thumbprint. ``ValueError``
    naming ``setting`` for an unreadable file, a symmetric or unsupported
    key, or a duplicate ``kid``."""
    import jwt

    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as e:
        raise ValueError(f"{setting}: cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise ValueError(f"{setting}: {path} is not JSON: {e}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"{setting}: {path} is not a JWK Set (an object with a 'keys' list)")
    keys: dict[str, PublicKey] = {}
    for i, jwk in enumerate(doc["keys"], start=1):
        where = f"{setting}: {path} key {i}"
        if not isinstance(jwk, dict):
            raise ValueError(f"{where} is not an object")
        if jwk.get("kty") == "oct":
            raise ValueError(f"{where} is a symmetric (kty 'oct') key; only public keys sign registry tokens")
        try:
            parsed = jwt.PyJWK(jwk)
        except jwt.PyJWTError as e:
            raise ValueError(f"{where}: {e}") from None
        public = as_public_key(parsed.key, where)
        kid = jwk.get("kid")
        if kid is None:
            kid = jwk_thumbprint(public)
        if not isinstance(kid, str) or not kid:
            raise ValueError(f"{where} has no usable 'kid'")
        if kid in keys:
            raise ValueError(f"{where}: kid {kid!r} appears twice")
        keys[kid] = public
    return keys


__all__ = ["PublicKey", "as_public_key", "jwk_thumbprint", "libtrust_key_id", "load_cert_bundle", "load_jwks"]
