"""A small Docker token server for tests (the distribution "token" spec).

``TokenServer`` is a ``twisted.web`` resource answering
``GET ?service=<service>&scope=<scope>[&scope=...]`` with Basic
authentication: it checks the user's password, grants the intersection of
the requested scopes with the user's grants, and returns
``{"token", "access_token", "expires_in", "issued_at"}``. Wrong credentials
get 401 with a Basic challenge; no credentials get the anonymous user's
grants if ``anonymous`` grants exist, else 401. Real docker/skopeo tests can
serve it on 127.0.0.1 and point ``auth.token.realm`` at it.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import fnmatch
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import jwt
from twisted.web.resource import Resource
from twisted.web.server import Request

from registry.auth.scopes import parse_scope
from tests.auth.pki import Signer

ANONYMOUS = ""


@dataclass(frozen=True)
class Grant:
    """``actions`` on resources of ``type`` whose names match the
    shell-style ``pattern`` (``"*"`` for all). An action ``*`` grants any."""

    type: str
    pattern: str
    actions: tuple[str, ...]


def grant(pattern: str, *actions: str, rtype: str = "repository") -> Grant:
    return Grant(rtype, pattern, tuple(actions))


class TokenServer(Resource):
    isLeaf = True

    def __init__(
        self,
        signer: Signer,
        users: Mapping[str, str],
        grants: Mapping[str, Sequence[Grant]],
        issuer: str = "test-issuer",
        lifetime: int = 300,
        key_by: str = "x5c",
        kid: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.signer = signer
        self.users = dict(users)
        self.grants = {u: list(g) for u, g in grants.items()}
        self.issuer = issuer
        self.lifetime = lifetime
        self.key_by = key_by
        self.kid = kid
        self.clock = clock
        self.issued: list[dict[str, Any]] = []  # the claims of every token issued

    def _user(self, request: Request) -> str | None:
        header = request.getHeader(b"authorization")
        if header is None:
            return ANONYMOUS if ANONYMOUS in self.grants else None
        scheme, _, rest = header.partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            user_b, _, password_b = base64.b64decode(rest.strip(), validate=True).partition(b":")
            user = user_b.decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        expected = self.users.get(user)
        if expected is None or not hmac.compare_digest(expected.encode("utf-8"), password_b):
            return None
        return user

    def _granted(self, user: str, rtype: str, name: str, wanted: Iterable[str]) -> list[str]:
        allowed: set[str] = set()
        for g in self.grants.get(user, []):
            if g.type == rtype and fnmatch.fnmatchcase(name, g.pattern):
                allowed.update(g.actions)
        return [a for a in wanted if a in allowed or "*" in allowed]

    def render_GET(self, request: Request) -> bytes:
        user = self._user(request)
        request.setHeader(b"content-type", b"application/json")
        if user is None:
            request.setResponseCode(401)
            request.setHeader(b"www-authenticate", b'Basic realm="test token server"')
            return json.dumps({"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]}).encode()
        args = request.args or {}
        service = (args.get(b"service") or [b""])[0].decode("utf-8")
        access: list[dict[str, Any]] = []
        for raw in args.get(b"scope", []):
            # One scope parameter may hold several space-separated scopes.
            for scope in raw.decode("utf-8").split():
                try:
                    items = parse_scope(scope)
                except ValueError:
                    request.setResponseCode(400)
                    return json.dumps({"errors": [{"code": "INVALID_SCOPE", "message": scope}]}).encode()
                if not items:
                    continue
                rtype, name = items[0].type, items[0].name
                actions = self._granted(user, rtype, name, [i.action for i in items])
                access.append({"type": rtype, "name": name, "actions": actions})
        now = int(self.clock())
        claims = {
            "iss": self.issuer,
            "sub": user,
            "aud": service,
            "exp": now + self.lifetime,
            "nbf": now - 1,
            "iat": now,
            "jti": secrets.token_hex(16),
            "access": access,
        }
        headers: dict[str, Any] = {}
        if self.key_by == "x5c":
            headers["x5c"] = self.signer.x5c()
        if self.kid is not None:
            headers["kid"] = self.kid
        token = jwt.encode(claims, self.signer.key, algorithm=self.signer.alg, headers=headers)
        self.issued.append(claims)
        issued_at = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps(
            {"token": token, "access_token": token, "expires_in": self.lifetime, "issued_at": issued_at}
        ).encode()


async def serve(server: TokenServer, reactor: Any = None) -> tuple[Any, str]:
    """Listen on a free port of 127.0.0.1; (listening port, token URL).
    Stop with ``await port.stopListening()``."""
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.server import Site

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Site(server))
    return port, f"http://127.0.0.1:{port.getHost().port}/token"
