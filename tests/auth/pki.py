"""A test PKI made on the spot with ``cryptography``: a root CA, an
intermediate CA and token-signing leaves (RSA, ECDSA P-256, Ed25519), and
helpers to write bundles and mint JWTs (PyJWT), including hostile ones PyJWT
refuses to make (``alg: none``, HMAC keyed with a public key)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

ALG_FOR = {"rsa": "RS256", "ec": "ES256", "ed25519": "EdDSA"}


def new_key(kind: str) -> Any:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kind)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_cert(subject_key: Any, subject: str, issuer_key: Any, issuer: str, ca: bool, days: int = 1) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(issuer_key, algorithm)


@dataclass
class Signer:
    """A signing key, its algorithm and its certificate chain (leaf first,
    the root excluded)."""

    key: Any
    alg: str
    chain: list[x509.Certificate]

    def x5c(self) -> list[str]:
        return [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode("ascii") for c in self.chain]


@dataclass
class CA:
    root_key: Any
    root: x509.Certificate
    inter_key: Any
    inter: x509.Certificate

    @classmethod
    def make(cls, kind: str = "ec", name: str = "Test") -> "CA":
        root_key, inter_key = new_key(kind), new_key(kind)
        root = make_cert(root_key, f"{name} Root CA", root_key, f"{name} Root CA", ca=True)
        inter = make_cert(inter_key, f"{name} Intermediate CA", root_key, f"{name} Root CA", ca=True)
        return cls(root_key, root, inter_key, inter)

    def signer(self, kind: str) -> Signer:
        key = new_key(kind)
        leaf = make_cert(key, f"token signer {kind}", self.inter_key, self.inter.subject.rfc4514_string()[3:], ca=False)
        return Signer(key, ALG_FOR[kind], [leaf, self.inter])

    def bundle_pem(self) -> bytes:
        return self.root.public_bytes(serialization.Encoding.PEM)


def root_signer(kind: str, name: str = "Self-signed") -> tuple[Signer, x509.Certificate]:
    """A key whose self-signed certificate goes straight in the bundle (the
    Distribution 2.x set-up, tokens naming it by ``kid``)."""
    key = new_key(kind)
    cert = make_cert(key, name, key, name, ca=True)
    return Signer(key, ALG_FOR[kind], [cert]), cert


def claims(
    issuer: str = "test-issuer",
    audience: Any = "test-registry",
    subject: str = "alice",
    access: Any = None,
    lifetime: int = 300,
    **extra: Any,
) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "exp": now + lifetime,
        "nbf": now - 5,
        "iat": now - 5,
        "jti": base64.b16encode(hashlib.sha256(str(time.time_ns()).encode()).digest()[:8]).decode(),
        "access": access if access is not None else [],
    }
    out.update(extra)
    return out


def grant(name: str, *actions: str, rtype: str = "repository") -> dict[str, Any]:
    return {"type": rtype, "name": name, "actions": list(actions)}


def mint(signer: Signer, payload: dict[str, Any], use: str = "x5c", kid: str | None = None) -> str:
    """A JWT signed by ``signer``, naming its key by ``x5c`` chain or ``kid``."""
    headers: dict[str, Any] = {}
    if use == "x5c":
        headers["x5c"] = signer.x5c()
    if kid is not None:
        headers["kid"] = kid
    return jwt.encode(payload, signer.key, algorithm=signer.alg, headers=headers)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def raw_jwt(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A JWT put together by hand; ``sign(signing_input) -> bytes`` or no
    signature at all (``alg: none``)."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    signature = sign(signing_input.encode("ascii")) if sign is not None else b""
    return signing_input + "." + b64url(signature)


def hs256_with(secret: bytes) -> Any:
    return lambda data: hmac.new(secret, data, hashlib.sha256).digest()


def public_pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
