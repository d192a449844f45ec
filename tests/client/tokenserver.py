"""A tiny Docker token server (a twisted.web Resource) for the client's auth tests.

It issues RS256 JWTs that CNCF Distribution's ``auth: token`` accepts: the
signing certificate travels in the ``x5c`` header and is the registry's
``rootcertbundle``.  It grants every scope asked for to a user with the
right Basic credentials (anonymous requests are refused), counts the tokens
it issued, and gives them a configurable lifetime.
"""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from twisted.web.resource import Resource
from twisted.web.server import Request

ISSUER = "client-test-issuer"
SERVICE = "client-test-registry"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class TokenServer(Resource):
    """``GET /token?service=&scope=...`` with Basic auth -> ``{"token", "expires_in"}``."""

    isLeaf = True

    def __init__(self, users: dict[str, str], expires_in: int = 300) -> None:
        super().__init__()
        self.users = users
        self.expires_in = expires_in
        self.issued: list[list[str]] = []  # scopes of each token issued
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "client test token signer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    def write_bundle(self, path: Path) -> Path:
        path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        return path

    def _user(self, request: Request) -> str | None:
        header = request.getHeader("authorization") or ""
        if not header.startswith("Basic "):
            return None
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return None
        return user if self.users.get(user) == password else None

    def render_GET(self, request: Request) -> bytes:
        user = self._user(request)
        if user is None:
            request.setResponseCode(401)
            request.setHeader("content-type", "application/json")
            return b'{"details": "bad credentials"}'
        args = request.args or {}
        scopes = [s.decode() for s in args.get(b"scope", [])]
        service = (args.get(b"service") or [b""])[0].decode()
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": [a for a in actions.split(",") if a]})
        self.issued.append(scopes)
        token = self.sign(user, service, access)
        request.setHeader("content-type", "application/json")
        return json.dumps({"token": token, "expires_in": self.expires_in}).encode()

    def sign(self, user: str, service: str, access: list[dict[str, object]]) -> str:
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": user,
            "aud": service,
            "exp": now + self.expires_in,
            "nbf": now - 5,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{_b64(signature)}"
