"""``auth.token``: Docker's token authentication (the distribution "token"
spec). Clients get a JWT from the token server named in the challenge's
``realm`` and present it as ``Authorization: Bearer <jwt>``.

A token is accepted when, in this order:

1. its header names an asymmetric algorithm this controller allows
   (RS*/PS*/ES*/EdDSA; never ``none`` or HMAC) matching its key's type;
2. its signing key is trusted: the ``x5c`` chain (leaf first, intermediates
   after) verifies up to a certificate of ``rootcertbundle``, or its ``kid``
   names a bundle certificate's key (by libtrust key ID or RFC 7638
   thumbprint) or a ``jwks`` key;
3. the signature verifies (PyJWT), ``iss`` is ``issuer``, ``aud`` contains
   ``service``, and ``exp``/``nbf``/``iat`` hold within ``leeway`` seconds;
4. its ``access`` claim is a list of ``{type, name, actions}``.

Any failure is 401 ``error="invalid_token"``. A valid token lacking a needed
action is 401 ``error="insufficient_scope"`` (code DENIED) with the needed
scope, so the client asks its token server again. No Authorization header,
or another scheme, gets the plain challenge without ``error``.

Verification is a few signature checks (well under a millisecond) and runs
on the calling thread; it does no I/O after start-up.

Limitation: CA certificates (root, intermediates) must be RSA or ECDSA:
``cryptography``'s chain verifier follows Web PKI rules and refuses Ed25519
CA signatures. Leaf certificates and ``kid``/``jwks`` keys may be Ed25519.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from typing import Any, Callable, Iterable, Mapping, Sequence

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.x509 import verification
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from registry.auth.basic import MalformedCredentials, split_authorization
from registry.auth.interfaces import Access, AuthChallenge, Credentials, IAccessController, Identity, denied, unauthorized
from registry.auth.keys import PublicKey, as_public_key, jwk_thumbprint, libtrust_key_id, load_cert_bundle, load_jwks
from registry.auth.scopes import quote_param, scope_param

log = Logger(namespace="registry.auth.token")

DEFAULT_LEEWAY = 60
DEFAULT_AUTOREDIRECT_PATH = "/auth/token"
MAX_X5C_CERTS = 8

# Allowed algorithms and the key each needs.
_RSA_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
_EC_ALGS = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}
SUPPORTED_ALGORITHMS = _RSA_ALGS + tuple(_EC_ALGS) + ("EdDSA",)

_HOST_RE = re.compile(r"^[A-Za-z0-9.\-]+(:\d{1,5})?$|^\[[0-9A-Fa-f:.]+\](:\d{1,5})?$")


class InvalidToken(Exception):
    """The token cannot be accepted; the message says why, for the client."""


def _key_fits(alg: str, key: PublicKey) -> bool:
    if alg in _RSA_ALGS:
        return isinstance(key, rsa.RSAPublicKey)
    if alg in _EC_ALGS:
        return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == _EC_ALGS[alg]
    if alg == "EdDSA":
        return isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey))
    return False


def _ca_has_basic_constraints(policy: Any, cert: x509.Certificate, ext: x509.BasicConstraints | None) -> None:
    if ext is None or not ext.ca:
        raise ValueError("an issuing certificate is not a CA (basicConstraints CA:TRUE missing)")


def parse_access_claim(value: Any) -> frozenset[Access]:
    """The grants of a token's ``access`` claim. Raises ``InvalidToken``
    when it is not a list of ``{"type": str, "name": str, "actions": [str]}``."""
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise InvalidToken("the token's 'access' claim is not a list")
    granted: set[Access] = set()
    for item in value:
        if not isinstance(item, dict):
            raise InvalidToken("an entry of the token's 'access' claim is not an object")
        rtype, name, actions = item.get("type"), item.get("name"), item.get("actions") or []
        if not isinstance(rtype, str) or not isinstance(name, str) or not isinstance(actions, list):
            raise InvalidToken("an entry of the token's 'access' claim lacks type, name or actions")
        for action in actions:
            if not isinstance(action, str):
                raise InvalidToken("an action in the token's 'access' claim is not a string")
            granted.add(Access(rtype, name, action))
    return frozenset(granted)


@implementer(IAccessController)
class TokenAccessController:
    """See the module docstring. Options are Distribution's ``auth.token``
    keys; keys are loaded now, and a problem raises ``ValueError`` naming
    the ``auth.token.<key>``."""

    kind = "token"

    def __init__(
        self,
        realm: str,
        service: str,
        issuer: str,
        rootcertbundle: str | None = None,
        jwks: str | None = None,
        autoredirect: bool = False,
        autoredirectpath: str = DEFAULT_AUTOREDIRECT_PATH,
        signingalgorithms: Sequence[str] | None = None,
        leeway: int = DEFAULT_LEEWAY,
        now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
    ) -> None:
        self.realm = realm
        self.service = service
        self.issuer = issuer
        self.autoredirect = autoredirect
        self.autoredirectpath = autoredirectpath if autoredirectpath.startswith("/") else "/" + autoredirectpath
        self.leeway = leeway
        self._now = now
        algorithms = list(signingalgorithms) if signingalgorithms else list(SUPPORTED_ALGORITHMS)
        for alg in algorithms:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"auth.token.signingalgorithms: {alg!r} is not accepted; choose from {', '.join(SUPPORTED_ALGORITHMS)}"
                    " (HMAC and 'none' are never accepted: anyone holding the verification key could mint tokens)"
                )
        self.algorithms = frozenset(algorithms)
        self.roots: list[x509.Certificate] = load_cert_bundle(rootcertbundle) if rootcertbundle else []
        self.trusted_keys: dict[str, PublicKey] = {}
        for cert in self.roots:
            key = as_public_key(cert.public_key(), "auth.token.rootcertbundle")
            self.trusted_keys[libtrust_key_id(key)] = key
            thumbprint = jwk_thumbprint(key)
            if thumbprint is not None:
                self.trusted_keys[thumbprint] = key
        if jwks:
            self.trusted_keys.update(load_jwks(jwks))
        if not self.roots and not self.trusted_keys:
            raise ValueError(
                "auth.token: no token signing key; set auth.token.rootcertbundle (PEM certificates) or auth.token.jwks"
            )
        self._store = verification.Store(self.roots) if self.roots else None

    # -- challenges ----------------------------------------------------------

    def _realm_for(self, credentials: Credentials | None) -> str:
        """``realm``, or with ``autoredirect`` (Distribution's): this
        request's ``Host`` and ``autoredirectpath`` under ``https``, or the
        scheme ``X-Forwarded-Proto`` names (never the scheme the connection
        came in with: behind a TLS-terminating proxy that is plain HTTP, and
        clients send their password to the realm). A ``Host`` that is not a
        plain host[:port] gets the configured realm."""
        if self.autoredirect and credentials is not None and credentials.host and _HOST_RE.match(credentials.host):
            proto = credentials.forwarded_proto
            scheme = proto if proto in ("http", "https") else "https"
            return f"{scheme}://{credentials.host}{self.autoredirectpath}"
        return self.realm

    def www_authenticate(self, needed: Iterable[Access], error: str | None = None, credentials: Credentials | None = None) -> str:
        """The ``WWW-Authenticate`` value: ``Bearer realm=...,service=...``,
        then ``scope`` when ``needed`` is not empty, then ``error``."""
        parts = [f"Bearer realm={quote_param(self._realm_for(credentials))}", f"service={quote_param(self.service)}"]
        scope = scope_param(needed)
        if scope:
            parts.append(f"scope={quote_param(scope)}")
        if error:
            parts.append(f"error={quote_param(error)}")
        return ",".join(parts)

    def challenge(self, needed: Sequence[Access], credentials: Credentials | None = None) -> AuthChallenge:
        return unauthorized("authentication required", self.www_authenticate(needed, None, credentials), needed)

    # -- IAccessController ---------------------------------------------------

    def authorize(self, credentials: Credentials, needed: Sequence[Access]) -> Deferred[Identity]:
        try:
            return succeed(self.authorize_now(credentials, needed))
        except AuthChallenge as e:
            return fail(e)

    def authorize_now(self, credentials: Credentials, needed: Sequence[Access]) -> Identity:
        """``authorize`` without the Deferred: returns the ``Identity`` or
        raises ``AuthChallenge``."""
        if credentials.authorization is None:
            raise self.challenge(needed, credentials)
        try:
            scheme, raw = split_authorization(credentials.authorization)
        except MalformedCredentials as e:
            raise unauthorized(str(e), self.www_authenticate(needed, "invalid_token", credentials), needed) from None
        if scheme != "bearer" or not raw:
            raise self.challenge(needed, credentials)
        try:
            identity = self.verify(raw.decode("ascii"))
        except InvalidToken as e:
            log.info("refused a token from {peer}: {why}", peer=credentials.peer, why=str(e))
            raise unauthorized(str(e), self.www_authenticate(needed, "invalid_token", credentials), needed) from None
        missing = [a for a in needed if not identity.allows(a)]
        if missing:
            raise denied(
                f"the token does not grant {scope_param(missing)}",
                self.www_authenticate(needed, "insufficient_scope", credentials),
                needed,
            )
        return identity

    def close(self) -> Deferred[None]:
        return succeed(None)

    # -- verification --------------------------------------------------------

    def verify(self, token: str) -> Identity:
        """The ``Identity`` a raw JWT carries; ``InvalidToken`` saying why
        it cannot be accepted."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise InvalidToken("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise InvalidToken(f"the token's algorithm {alg!r} is not accepted; use one of {', '.join(sorted(self.algorithms))}")
        key = self._signing_key(header)
        if not _key_fits(alg, key):
            raise InvalidToken(f"the token's algorithm {alg} does not match its signing key's type")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.service,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the token is not valid yet (nbf or iat in the future)") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken(f"the token is not for this service (its 'aud' does not include {self.service!r})") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken(f"the token was not issued by {self.issuer!r}") from None
        except jwt.MissingRequiredClaimError as e:
            raise InvalidToken(f"the token lacks the {e.claim!r} claim") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("the token's signature does not verify") from None
        except jwt.PyJWTError as e:
            raise InvalidToken(f"the token is invalid: {e}") from None
        subject = claims.get("sub", "")
        return Identity(subject if isinstance(subject, str) else "", parse_access_claim(claims.get("access")))

    def _signing_key(self, header: Mapping[str, Any]) -> PublicKey:
        x5c = header.get("x5c")
        if x5c is not None:
            return self._verify_chain(x5c)
        kid = header.get("kid")
        if kid is None and isinstance(header.get("jwk"), dict):
            kid = header["jwk"].get("kid")
        if isinstance(kid, str) and kid:
            key = self.trusted_keys.get(kid)
            if key is None:
                raise InvalidToken(f"the token was signed by a key this registry does not trust (kid {kid[:100]!r})")
            return key
        raise InvalidToken("the token names no signing key (no 'x5c' chain or 'kid')")

    def _verify_chain(self, x5c: Any) -> PublicKey:
        if not isinstance(x5c, list) or not x5c or len(x5c) > MAX_X5C_CERTS:
            raise InvalidToken(f"the token's 'x5c' header is not a list of 1 to {MAX_X5C_CERTS} certificates")
        certs: list[x509.Certificate] = []
        for item in x5c:
            if not isinstance(item, str):
                raise InvalidToken("a certificate in the token's 'x5c' header is not a string")
            try:
                certs.append(x509.load_der_x509_certificate(base64.b64decode(item, validate=True)))
            except (binascii.Error, ValueError):
                raise InvalidToken("a certificate in the token's 'x5c' header is not base64 DER") from None
        if self._store is None:
            raise InvalidToken("the token carries a certificate chain but this registry has no root certificates")
        ca_policy = verification.ExtensionPolicy.permit_all().require_present(
            x509.BasicConstraints, verification.Criticality.AGNOSTIC, _ca_has_basic_constraints
        )
        verifier = (
            verification.PolicyBuilder()
            .store(self._store)
            .time(self._now())
            .extension_policies(ca_policy=ca_policy, ee_policy=verification.ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            verifier.verify(certs[0], certs[1:])
        except verification.VerificationError as e:
            raise InvalidToken(f"the token's certificate chain does not lead to a trusted root: {e}") from None
        try:
            return as_public_key(certs[0].public_key(), "x5c")
        except ValueError as e:
            raise InvalidToken(str(e)) from None


__all__ = ["InvalidToken", "SUPPORTED_ALGORITHMS", "TokenAccessController", "parse_access_claim"]
