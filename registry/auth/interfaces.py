"""The access-control contract: what a request needs (``Access``), what it
presents (``Credentials``), who it turned out to be (``Identity``), the
controller that decides (``IAccessController``) and the error that carries a
refusal to the HTTP layer (``AuthChallenge``).

The HTTP layer builds ``Credentials`` from the request's headers, computes
the ``Access`` list with ``registry.auth.scopes.required_access`` and asks the
controller before the request's body is read. A refusal is an
``AuthChallenge``: a ``RegistryError`` whose ``headers`` already hold the
``WWW-Authenticate`` value, so the usual error path writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from registry import errors
from registry.errors import ErrorCode, RegistryError

# An Authorization header longer than this is refused as invalid without
# being parsed: no token or Basic credential a registry client sends is near it.
MAX_AUTHORIZATION_BYTES = 8 * 1024


@dataclass(frozen=True, order=True)
class Access:
    """One action on one resource, as in Docker's token spec scopes:
    ``Access("repository", "a/b", "pull")``,
    ``Access("registry", "catalog", "*")``."""

    type: str
    name: str
    action: str

    def detail(self) -> dict[str, str]:
        """The shape Distribution puts in an UNAUTHORIZED error's detail."""
        return {"Type": self.type, "Name": self.name, "Action": self.action}


@dataclass(frozen=True)
class Credentials:
    """What a request presents.

    ``authorization`` is the raw ``Authorization`` header value (None when
    absent); ``peer`` the client's address, for logs; ``host`` the request's
    ``Host`` header, ``scheme`` its scheme (``X-Forwarded-Proto`` if a
    proxy set it) and ``forwarded_proto`` that header alone (None when
    absent). The token controller's ``autoredirect`` uses ``host`` and
    ``forwarded_proto``.
    """

    authorization: bytes | None
    peer: str | None = None
    host: str | None = None
    scheme: str = "https"
    forwarded_proto: str | None = None


@dataclass(frozen=True)
class Identity:
    """Who the controller let in.

    ``name`` is the user (htpasswd) or the token's ``sub`` (may be empty).
    ``granted`` is None when the identity may do everything (htpasswd), or
    the token's grants (an action ``*`` grants every action on its resource).
    """

    name: str
    granted: frozenset[Access] | None = field(default=None)

    def allows(self, access: Access) -> bool:
        if self.granted is None:
            return True
        return (
            access in self.granted
            or Access(access.type, access.name, "*") in self.granted
        )


class AuthChallenge(RegistryError):
    """A refusal: HTTP ``status`` (401), OCI ``code`` (UNAUTHORIZED when
    credentials are missing or invalid, DENIED when valid credentials lack
    the needed access), a ``message`` for people and the ``WWW-Authenticate``
    value, which is also in ``headers`` so the usual error writer sends it.
    ``detail`` lists the needed access as Distribution does."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        www_authenticate: str,
        needed: Sequence[Access] = (),
        status: int = 401,
    ) -> None:
        super().__init__(
            code,
            message,
            detail=[a.detail() for a in needed],
            status=status,
            headers={"WWW-Authenticate": www_authenticate},
        )
        self.www_authenticate = www_authenticate
        self.needed = tuple(needed)


def unauthorized(message: str, www_authenticate: str, needed: Sequence[Access] = ()) -> AuthChallenge:
    return AuthChallenge(errors.UNAUTHORIZED, message, www_authenticate, needed)


def denied(message: str, www_authenticate: str, needed: Sequence[Access] = ()) -> AuthChallenge:
    return AuthChallenge(errors.DENIED, message, www_authenticate, needed)


class IAccessController(Interface):
    """Decides whether a request may do what its route needs."""

    kind = Attribute("The configuration key this controller came from: 'htpasswd' or 'token'.")

    def authorize(credentials: Credentials, needed: Sequence[Access]) -> "Deferred[Identity]":
        """Fire with the ``Identity`` when ``credentials`` allow every item
        of ``needed`` (an empty list asks only that the credentials be
        valid, as for ``GET /v2/``). Fail with ``AuthChallenge`` when they
        do not; with ``RegistryError`` (TOOMANYREQUESTS, UNAVAILABLE) when
        the controller cannot decide now. Never fails with anything else for
        bad input."""

    def challenge(needed: Sequence[Access], credentials: Credentials | None = None) -> AuthChallenge:
        """The challenge for an anonymous request needing ``needed`` (no
        ``error=`` parameter). ``credentials`` matter only for the token
        controller's ``autoredirect`` (the realm is built from the Host)."""

    def close() -> "Deferred[None]":
        """Release resources (thread pools). Fires when done."""


def header_too_large(value: bytes | None) -> bool:
    return value is not None and len(value) > MAX_AUTHORIZATION_BYTES


__all__ = [
    "Access",
    "AuthChallenge",
    "Credentials",
    "IAccessController",
    "Identity",
    "MAX_AUTHORIZATION_BYTES",
    "denied",
    "header_too_large",
    "unauthorized",
]
