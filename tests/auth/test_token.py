"""The token access controller against a test PKI made here: valid tokens
by x5c chain, libtrust kid, RFC 7638 thumbprint and JWKS; every hostile
token refused with 401 ``invalid_token``; missing scope with
``insufficient_scope`` and the needed scope."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from zope.interface.verify import verifyObject

from registry import errors
from registry.auth import Access, AuthChallenge, Credentials, IAccessController, Identity
from registry.auth.interfaces import MAX_AUTHORIZATION_BYTES
from registry.auth.keys import jwk_thumbprint, libtrust_key_id
from registry.auth.token import TokenAccessController
from tests.auth.pki import CA, b64url, claims, grant, hs256_with, mint, public_pem, raw_jwt, root_signer

SERVICE = "test-registry"
ISSUER = "test-issuer"
PULL_AB = [Access("repository", "a/b", "pull")]
PUSH_AB = [Access("repository", "a/b", "pull"), Access("repository", "a/b", "push")]


def bearer(token: str) -> Credentials:
    return Credentials(authorization=b"Bearer " + token.encode("ascii"), peer="127.0.0.1")


@pytest.fixture(scope="module")
def selfsigned() -> Any:
    return root_signer("ec", "kid signer")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, ec_ca: CA, rsa_ca: CA, selfsigned: Any) -> Path:
    path = tmp_path_factory.mktemp("token") / "roots.pem"
    _, cert = selfsigned
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(ec_ca.bundle_pem() + rsa_ca.bundle_pem() + cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def controller(bundle: Path) -> TokenAccessController:
    return TokenAccessController(realm="https://auth.example/token", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle))


def refused(controller: TokenAccessController, credentials: Credentials, needed: list[Access]) -> AuthChallenge:
    with pytest.raises(AuthChallenge) as info:
        controller.authorize_now(credentials, needed)
    assert info.value.status == 401
    return info.value


def assert_invalid(challenge: AuthChallenge, scope: str = "repository:a/b:pull") -> None:
    assert challenge.code is errors.UNAUTHORIZED
    assert challenge.www_authenticate == (
        f'Bearer realm="https://auth.example/token",service="{SERVICE}",scope="{scope}",error="invalid_token"'
    )
    assert challenge.headers == {"WWW-Authenticate": challenge.www_authenticate}


def test_provides_interface(controller: TokenAccessController) -> None:
    assert verifyObject(IAccessController, controller)


# -- valid tokens -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
@pytest.mark.parametrize("ca_name", ["ec_ca", "rsa_ca"])
def test_valid_token_by_x5c_chain(controller: TokenAccessController, request: pytest.FixtureRequest, kind: str, ca_name: str) -> None:
    ca: CA = request.getfixturevalue(ca_name)
    signer = ca.signer(kind)
    token = mint(signer, claims(access=[grant("a/b", "pull", "push")]))
    identity = controller.authorize_now(bearer(token), PUSH_AB)
    assert identity == Identity("alice", frozenset({Access("repository", "a/b", "pull"), Access("repository", "a/b", "push")}))


def test_authorize_returns_deferred(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")]))
    results: list[Any] = []
    controller.authorize(bearer(token), PULL_AB).addBoth(results.append)
    assert results == [Identity("alice", frozenset(PULL_AB))]
    controller.authorize(Credentials(None), PULL_AB).addBoth(results.append)
    assert isinstance(results[1].value, AuthChallenge)


def test_audience_list_containing_service(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(audience=["other", SERVICE], access=[grant("a/b", "pull")]))
    assert controller.authorize_now(bearer(token), PULL_AB).name == "alice"


def test_wildcard_action_grants_all(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "*")]))
    controller.authorize_now(bearer(token), PUSH_AB + [Access("repository", "a/b", "delete")])


def test_base_route_needs_only_a_valid_token(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims())
    assert controller.authorize_now(bearer(token), []).granted == frozenset()


def test_catalog_scope(controller: TokenAccessController, ec_ca: CA) -> None:
    catalog = [Access("registry", "catalog", "*")]
    token = mint(ec_ca.signer("ec"), claims(access=[grant("catalog", "*", rtype="registry")]))
    controller.authorize_now(bearer(token), catalog)
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")]))
    challenge = refused(controller, bearer(token), catalog)
    assert 'scope="registry:catalog:*",error="insufficient_scope"' in challenge.www_authenticate


# -- scopes -------------------------------------------------------------------


def test_valid_token_without_needed_action_is_insufficient_scope(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")]))
    challenge = refused(controller, bearer(token), PUSH_AB)
    assert challenge.code is errors.DENIED
    assert challenge.www_authenticate == (
        f'Bearer realm="https://auth.example/token",service="{SERVICE}",'
        'scope="repository:a/b:pull,push",error="insufficient_scope"'
    )
    assert "repository:a/b:push" in challenge.message
    assert challenge.envelope()["errors"][0]["detail"] == [
        {"Type": "repository", "Name": "a/b", "Action": "pull"},
        {"Type": "repository", "Name": "a/b", "Action": "push"},
    ]


def test_grant_for_another_repository_is_insufficient(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/c", "pull", "push")]))
    assert "insufficient_scope" in refused(controller, bearer(token), PULL_AB).www_authenticate


def test_mount_needs_pull_on_source(controller: TokenAccessController, ec_ca: CA) -> None:
    needed = PUSH_AB + [Access("repository", "src", "pull")]
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull", "push")]))
    challenge = refused(controller, bearer(token), needed)
    assert 'scope="repository:a/b:pull,push repository:src:pull"' in challenge.www_authenticate
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull", "push"), grant("src", "pull")]))
    controller.authorize_now(bearer(token), needed)


# -- anonymous ----------------------------------------------------------------


def test_anonymous_challenge_has_scope_and_no_error(controller: TokenAccessController) -> None:
    challenge = refused(controller, Credentials(None), PULL_AB)
    assert challenge.code is errors.UNAUTHORIZED
    assert challenge.www_authenticate == (
        f'Bearer realm="https://auth.example/token",service="{SERVICE}",scope="repository:a/b:pull"'
    )


def test_anonymous_base_challenge_has_no_scope(controller: TokenAccessController) -> None:
    challenge = refused(controller, Credentials(None), [])
    assert challenge.www_authenticate == f'Bearer realm="https://auth.example/token",service="{SERVICE}"'


def test_basic_credentials_get_the_plain_challenge(controller: TokenAccessController) -> None:
    challenge = refused(controller, Credentials(b"Basic " + base64.b64encode(b"u:p")), PULL_AB)
    assert "error=" not in challenge.www_authenticate


def test_autoredirect_realm_from_host(bundle: Path) -> None:
    c = TokenAccessController(
        realm="ignored", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle), autoredirect=True
    )
    challenge = refused(c, Credentials(None, host="registry.local:5000", forwarded_proto="http"), PULL_AB)  # type: ignore[arg-type]
    assert challenge.www_authenticate.startswith('Bearer realm="http://registry.local:5000/auth/token",')
    challenge = refused(c, Credentials(None, host='evil"host', scheme="http"), PULL_AB)  # type: ignore[arg-type]
    assert challenge.www_authenticate.startswith('Bearer realm="ignored",')


def test_autoredirect_is_https_unless_a_proxy_says_otherwise(bundle: Path) -> None:
    # Distribution: the realm's scheme is https, or X-Forwarded-Proto when a
    # proxy set it; never the scheme of the connection the registry saw (a
    # TLS-terminating proxy hands it plain HTTP, and an http realm would send
    # the user's password to the token server unencrypted).
    c = TokenAccessController(
        realm="ignored", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle), autoredirect=True,
        autoredirectpath="registry/token",
    )
    for scheme in ("http", "https"):
        challenge = refused(c, Credentials(None, host="registry.local", scheme=scheme), PULL_AB)
        assert challenge.www_authenticate.startswith('Bearer realm="https://registry.local/registry/token",')
    challenge = refused(c, Credentials(None, host="registry.local", forwarded_proto="gopher"), PULL_AB)
    assert challenge.www_authenticate.startswith('Bearer realm="https://registry.local/registry/token",')
    # Without autoredirect the configured realm is used whatever the Host.
    plain = TokenAccessController(realm="https://auth.example/token", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle))
    challenge = refused(plain, Credentials(None, host="registry.local", forwarded_proto="http"), PULL_AB)
    assert challenge.www_authenticate.startswith('Bearer realm="https://auth.example/token",')


# -- hostile tokens -----------------------------------------------------------


def test_alg_none(controller: TokenAccessController, selfsigned: Any) -> None:
    signer, cert = selfsigned
    token = raw_jwt({"alg": "none", "typ": "JWT", "kid": libtrust_key_id(cert.public_key())}, claims(access=[grant("a/b", "pull")]))
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_hs256_keyed_with_the_public_key(controller: TokenAccessController, selfsigned: Any) -> None:
    signer, cert = selfsigned
    kid = libtrust_key_id(cert.public_key())
    payload = claims(access=[grant("a/b", "pull")])
    for secret in (public_pem(signer.key), cert.public_bytes(__import__("cryptography").hazmat.primitives.serialization.Encoding.DER)):
        token = raw_jwt({"alg": "HS256", "typ": "JWT", "kid": kid}, payload, hs256_with(secret))
        assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_unknown_kid(controller: TokenAccessController) -> None:
    stranger, _ = root_signer("ec", "stranger")
    token = mint(stranger, claims(access=[grant("a/b", "pull")]), use="kid", kid=libtrust_key_id(stranger.key.public_key()))
    challenge = refused(controller, bearer(token), PULL_AB)
    assert_invalid(challenge)
    assert "does not trust" in challenge.message


def test_trusted_kid_but_signed_by_another_key(controller: TokenAccessController, selfsigned: Any) -> None:
    _, cert = selfsigned
    stranger, _ = root_signer("ec", "stranger")
    token = mint(stranger, claims(access=[grant("a/b", "pull")]), use="kid", kid=libtrust_key_id(cert.public_key()))
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_no_key_named(controller: TokenAccessController, selfsigned: Any) -> None:
    signer, _ = selfsigned
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="none")
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_wrong_audience(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(audience="another-registry", access=[grant("a/b", "pull")]))
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_missing_audience(controller: TokenAccessController, ec_ca: CA) -> None:
    payload = claims(access=[grant("a/b", "pull")])
    del payload["aud"]
    assert_invalid(refused(controller, bearer(mint(ec_ca.signer("ec"), payload)), PULL_AB))


def test_wrong_issuer(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(issuer="someone-else", access=[grant("a/b", "pull")]))
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_expired(controller: TokenAccessController, ec_ca: CA) -> None:
    payload = claims(access=[grant("a/b", "pull")])
    payload.update(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200)
    challenge = refused(controller, bearer(mint(ec_ca.signer("ec"), payload)), PULL_AB)
    assert_invalid(challenge)
    assert "expired" in challenge.message


def test_missing_expiry(controller: TokenAccessController, ec_ca: CA) -> None:
    payload = claims(access=[grant("a/b", "pull")])
    del payload["exp"]
    assert_invalid(refused(controller, bearer(mint(ec_ca.signer("ec"), payload)), PULL_AB))


def test_within_leeway_is_accepted(controller: TokenAccessController, ec_ca: CA) -> None:
    payload = claims(access=[grant("a/b", "pull")])
    payload.update(exp=int(time.time()) - 10)
    controller.authorize_now(bearer(mint(ec_ca.signer("ec"), payload)), PULL_AB)


def test_not_before_in_future(controller: TokenAccessController, ec_ca: CA) -> None:
    payload = claims(access=[grant("a/b", "pull")], lifetime=7200)
    payload.update(nbf=int(time.time()) + 3600)
    assert_invalid(refused(controller, bearer(mint(ec_ca.signer("ec"), payload)), PULL_AB))


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_tampered_signature(controller: TokenAccessController, ec_ca: CA, kind: str) -> None:
    token = mint(ec_ca.signer(kind), claims(access=[grant("a/b", "pull")]))
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    assert_invalid(refused(controller, bearer(f"{head}.{payload}.{b64url(bytes(raw))}"), PULL_AB))


def test_tampered_payload(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")]))
    head, _, sig = token.split(".")
    forged = b64url(json.dumps(claims(access=[grant("a/b", "pull", "push")])).encode())
    assert_invalid(refused(controller, bearer(f"{head}.{forged}.{sig}"), PUSH_AB), "repository:a/b:pull,push")


def test_x5c_chain_not_leading_to_bundle(controller: TokenAccessController) -> None:
    other = CA.make("ec", "Other")
    token = mint(other.signer("ec"), claims(access=[grant("a/b", "pull")]))
    challenge = refused(controller, bearer(token), PULL_AB)
    assert_invalid(challenge)
    assert "trusted root" in challenge.message


def test_x5c_without_intermediate(controller: TokenAccessController, ec_ca: CA) -> None:
    signer = ec_ca.signer("ec")
    signer.chain = signer.chain[:1]
    assert_invalid(refused(controller, bearer(mint(signer, claims(access=[grant("a/b", "pull")]))), PULL_AB))


def test_x5c_leaf_is_not_the_signing_key(controller: TokenAccessController, ec_ca: CA) -> None:
    good = ec_ca.signer("ec")
    stranger, _ = root_signer("ec", "stranger")
    token = jwt.encode(claims(access=[grant("a/b", "pull")]), stranger.key, algorithm="ES256", headers={"x5c": good.x5c()})
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_x5c_garbage(controller: TokenAccessController, ec_ca: CA) -> None:
    signer = ec_ca.signer("ec")
    for x5c in (["not base64!"], [base64.b64encode(b"not DER").decode()], "a string", [], [1]):
        token = jwt.encode(claims(access=[grant("a/b", "pull")]), signer.key, algorithm="ES256", headers={"x5c": x5c})
        assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_intermediate_that_is_not_a_ca(controller: TokenAccessController, ec_ca: CA) -> None:
    from tests.auth.pki import Signer, make_cert, new_key

    # The leaf of ec_ca "issues" a certificate: it is not a CA, so the chain fails.
    middle = ec_ca.signer("ec")
    key = new_key("ec")
    leaf = make_cert(key, "sub-leaf", middle.key, "token signer ec", ca=False)
    signer = Signer(key, "ES256", [leaf] + middle.chain)
    assert_invalid(refused(controller, bearer(mint(signer, claims(access=[grant("a/b", "pull")]))), PULL_AB))


def test_ed25519_ca_is_refused_cleanly(tmp_path: Path) -> None:
    ca = CA.make("ed25519", "Ed")
    bundle = tmp_path / "ed.pem"
    bundle.write_bytes(ca.bundle_pem())
    c = TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle))
    token = mint(ca.signer("ed25519"), claims(access=[grant("a/b", "pull")]))
    with pytest.raises(AuthChallenge) as info:
        c.authorize_now(bearer(token), PULL_AB)
    assert "invalid_token" in info.value.www_authenticate


def test_algorithm_not_matching_key_type(controller: TokenAccessController, rsa_ca: CA, selfsigned: Any) -> None:
    # An RSA-signed token naming the trusted EC key by kid.
    _, cert = selfsigned
    token = mint(rsa_ca.signer("rsa"), claims(access=[grant("a/b", "pull")]), use="kid", kid=libtrust_key_id(cert.public_key()))
    assert_invalid(refused(controller, bearer(token), PULL_AB))


def test_oversized_header(controller: TokenAccessController, ec_ca: CA) -> None:
    token = mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")], padding="x" * MAX_AUTHORIZATION_BYTES))
    challenge = refused(controller, bearer(token), PULL_AB)
    assert_invalid(challenge)
    assert str(MAX_AUTHORIZATION_BYTES) in challenge.message


@pytest.mark.parametrize(
    "raw",
    [b"Bearer !!!.###.$$$", b"Bearer abc", b"Bearer a.b.c", b"Bearer " + b64url(b'{"alg":').encode() + b".e30.", b"Bearer \xff\xfe"],
)
def test_garbage(controller: TokenAccessController, raw: bytes) -> None:
    assert_invalid(refused(controller, Credentials(raw), PULL_AB))


def test_malformed_access_claim(controller: TokenAccessController, ec_ca: CA) -> None:
    for access in ({"type": "repository"}, ["x"], [{"type": "repository", "name": "a/b", "actions": "pull"}]):
        token = mint(ec_ca.signer("ec"), claims(access=access))
        assert_invalid(refused(controller, bearer(token), PULL_AB))


# -- key IDs and JWKS -----------------------------------------------------------


def test_libtrust_kid(controller: TokenAccessController, selfsigned: Any) -> None:
    signer, cert = selfsigned
    kid = libtrust_key_id(cert.public_key())
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="kid", kid=kid)
    assert controller.authorize_now(bearer(token), PULL_AB).name == "alice"


def test_rfc7638_thumbprint_kid(controller: TokenAccessController, selfsigned: Any) -> None:
    signer, cert = selfsigned
    kid = jwk_thumbprint(cert.public_key())
    assert kid is not None
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="kid", kid=kid)
    assert controller.authorize_now(bearer(token), PULL_AB).name == "alice"


def test_kid_of_a_bundle_root_signs_directly(controller: TokenAccessController, rsa_ca: CA) -> None:
    from tests.auth.pki import Signer

    signer = Signer(rsa_ca.root_key, "RS256", [rsa_ca.root])
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="kid", kid=libtrust_key_id(rsa_ca.root.public_key()))
    controller.authorize_now(bearer(token), PULL_AB)


def _jwk(key: Any, kid: str | None) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        doc = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        doc = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        doc = jwt.algorithms.OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        doc["kid"] = kid
    return doc


@pytest.mark.parametrize("kind", ["rsa", "ec", "ed25519"])
def test_jwks_file(tmp_path: Path, kind: str) -> None:
    signer, _ = root_signer(kind, "jwks")
    anonymous_kid_signer, _ = root_signer(kind, "jwks2")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(signer.key, "key-1"), _jwk(anonymous_kid_signer.key, None)]}))
    c = TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, jwks=str(path))
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="kid", kid="key-1")
    assert c.authorize_now(bearer(token), PULL_AB).name == "alice"
    thumb = jwk_thumbprint(anonymous_kid_signer.key.public_key())
    assert thumb is not None
    token = mint(anonymous_kid_signer, claims(access=[grant("a/b", "pull")]), use="kid", kid=thumb)
    assert c.authorize_now(bearer(token), PULL_AB).name == "alice"
    token = mint(signer, claims(access=[grant("a/b", "pull")]), use="kid", kid="key-2")
    with pytest.raises(AuthChallenge):
        c.authorize_now(bearer(token), PULL_AB)
    # No root bundle: an x5c chain cannot be trusted.
    with pytest.raises(AuthChallenge):
        c.authorize_now(bearer(mint(CA.make("ec").signer("ec"), claims(access=[grant("a/b", "pull")]))), PULL_AB)


def test_jwks_with_symmetric_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "s"}]}))
    with pytest.raises(ValueError, match=r"auth\.token\.jwks: .* key 1 is a symmetric"):
        TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, jwks=str(path))


@pytest.mark.parametrize("alg", ["HS256", "none", "XX1"])
def test_hmac_and_none_cannot_be_configured(bundle: Path, alg: str) -> None:
    with pytest.raises(ValueError, match=r"auth\.token\.signingalgorithms"):
        TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle), signingalgorithms=[alg])


def test_configured_algorithms_restrict(bundle: Path, ec_ca: CA) -> None:
    c = TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, rootcertbundle=str(bundle), signingalgorithms=["RS256"])
    with pytest.raises(AuthChallenge):
        c.authorize_now(bearer(mint(ec_ca.signer("ec"), claims(access=[grant("a/b", "pull")]))), PULL_AB)


def test_no_keys_configured_is_refused() -> None:
    with pytest.raises(ValueError, match=r"auth\.token: no token signing key"):
        TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER)


def test_bad_bundle_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "bad.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(ValueError, match=r"auth\.token\.rootcertbundle"):
        TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, rootcertbundle=str(path))
    with pytest.raises(ValueError, match=r"auth\.token\.rootcertbundle: cannot read"):
        TokenAccessController(realm="r", service=SERVICE, issuer=ISSUER, rootcertbundle=str(tmp_path / "missing.pem"))
