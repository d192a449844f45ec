"""The controller factory: one of htpasswd or token, errors naming the key."""

from __future__ import annotations

from pathlib import Path

import bcrypt
import pytest
from twisted.internet import reactor

from registry.auth import access_controller_from_config
from registry.auth.htpasswd import HtpasswdAccessController
from registry.auth.token import TokenAccessController
from tests.auth.pki import CA


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + bcrypt.hashpw(b"x", bcrypt.gensalt(4)) + b"\n")
    return path


@pytest.fixture
def bundle(tmp_path: Path, ec_ca: CA) -> Path:
    path = tmp_path / "roots.pem"
    path.write_bytes(ec_ca.bundle_pem())
    return path


def test_none_for_no_section() -> None:
    assert access_controller_from_config(None) is None
    assert access_controller_from_config({}) is None


def test_htpasswd(htpasswd: Path) -> None:
    c = access_controller_from_config({"htpasswd": {"realm": "R", "path": str(htpasswd)}}, reactor=reactor)
    assert isinstance(c, HtpasswdAccessController)
    assert c.kind == "htpasswd"
    c.close()


def test_token(bundle: Path) -> None:
    c = access_controller_from_config(
        {"token": {"realm": "https://a/t", "service": "s", "issuer": "i", "rootcertbundle": str(bundle), "autoredirect": False}}
    )
    assert isinstance(c, TokenAccessController)
    assert c.kind == "token"


@pytest.mark.parametrize(
    "config, message",
    [
        ({"htpasswd": {"realm": "R"}}, r"^auth\.htpasswd\.path is required"),
        ({"htpasswd": {"path": "/x"}}, r"^auth\.htpasswd\.realm is required"),
        ({"htpasswd": {"realm": "R", "path": 5}}, r"^auth\.htpasswd\.path must be a string"),
        ({"htpasswd": {"realm": "R", "path": "/nonexistent/htpasswd"}}, r"^auth\.htpasswd\.path: /nonexistent/htpasswd"),
        ({"htpasswd": {"realm": "R", "path": "/x", "extra": 1}}, r"^auth\.htpasswd: unknown key\(s\) extra"),
        ({"htpasswd": "yes"}, r"^auth\.htpasswd must be a mapping"),
        ({"silly": {}}, r"^auth\.silly: unsupported access controller"),
        ({"htpasswd": {}, "token": {}}, r"^auth: configure exactly one of htpasswd, token"),
        ({"token": {"service": "s", "issuer": "i"}}, r"^auth\.token\.realm is required"),
        ({"token": {"realm": "r", "issuer": "i"}}, r"^auth\.token\.service is required"),
        ({"token": {"realm": "r", "service": "s"}}, r"^auth\.token\.issuer is required"),
        ({"token": {"realm": "r", "service": "s", "issuer": "i"}}, r"^auth\.token: no token signing key"),
        ({"token": {"realm": "r", "service": "s", "issuer": "i", "autoredirect": "yes"}}, r"^auth\.token\.autoredirect"),
        ({"token": {"realm": "r", "service": "s", "issuer": "i", "signingalgorithms": "RS256"}}, r"^auth\.token\.signingalgorithms"),
        ({"token": {"realm": "r", "service": "s", "issuer": "i", "jwks": "/nonexistent.json"}}, r"^auth\.token\.jwks: cannot read"),
    ],
)
def test_errors_name_the_key(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        access_controller_from_config(config, reactor=reactor)
