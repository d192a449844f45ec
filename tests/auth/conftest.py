from __future__ import annotations

import pytest

from tests.auth.pki import CA


@pytest.fixture(scope="session")
def ec_ca() -> CA:
    return CA.make("ec", "EC")


@pytest.fixture(scope="session")
def rsa_ca() -> CA:
    return CA.make("rsa", "RSA")
