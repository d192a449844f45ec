"""TLS listener (``registry.tls``) over real sockets, with Python's own
``ssl`` module as the client (a different TLS stack from the server's
pyOpenSSL): the whole chain is sent, mutual TLS refuses strangers during the
handshake, ``minimumtls`` and ``ciphersuites`` are honoured, and every
configuration mistake names its key."""

from __future__ import annotations

import http.client
import ssl
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor, threads

from registry.app import make_root
from registry.http import RegistrySite
from registry.storage.factory import create_driver
from registry.tls import TLSConfigError, TLSSettings, server_endpoint, server_options
from tests.tlsutil import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def listen(settings: TLSSettings) -> Any:
    site = RegistrySite(make_root(create_driver("inmemory", {})))
    return await server_endpoint(reactor, 0, settings, interface="127.0.0.1").listen(site)


def get_v2(port: int, pki: PKI, cert: tuple[Path, Path] | None = None,
           max_version: ssl.TLSVersion | None = None, ciphers: str | None = None) -> int:
    """GET /v2/ over TLS with the stdlib client trusting only the root CA;
    returns the status (raises on a failed handshake)."""
    ctx = ssl.create_default_context(cafile=str(pki.root))
    if cert is not None:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=20)
    try:
        conn.request("GET", "/v2/")
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


async def status(port: int, pki: PKI, **kw: Any) -> int:
    result: int = await threads.deferToThread(get_v2, port, pki, **kw)
    return result


@pytest_twisted.async_yield_fixture
async def tls_port(pki: PKI) -> AsyncIterator[int]:
    port = await listen(TLSSettings(str(pki.chain), str(pki.key)))
    try:
        yield port.getHost().port
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_whole_chain_is_sent_and_verifies_against_the_root(pki: PKI, tls_port: int) -> None:
    assert await status(tls_port, pki) == 200


@pytest_twisted.ensureDeferred
async def test_leaf_without_intermediate_does_not_verify(pki: PKI) -> None:
    # The control: the same client fails when the file lacks the intermediate.
    port = await listen(TLSSettings(str(pki.leaf_only), str(pki.key)))
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            await status(port.getHost().port, pki)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_tls12_is_the_default_minimum_and_tls13_works(pki: PKI, tls_port: int) -> None:
    assert await status(tls_port, pki, max_version=ssl.TLSVersion.TLSv1_2) == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await status(tls_port, pki, max_version=ssl.TLSVersion.TLSv1_1)


@pytest_twisted.ensureDeferred
async def test_minimumtls_tls13_refuses_tls12_clients(pki: PKI) -> None:
    port = await listen(TLSSettings(str(pki.chain), str(pki.key), minimumtls="tls1.3"))
    try:
        n = port.getHost().port
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await status(n, pki, max_version=ssl.TLSVersion.TLSv1_2)
        assert await status(n, pki) == 200
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_mutual_tls(pki: PKI) -> None:
    port = await listen(TLSSettings(str(pki.chain), str(pki.key), clientcas=(str(pki.client_ca),)))
    try:
        n = port.getHost().port
        assert await status(n, pki, cert=(pki.client_cert, pki.client_key)) == 200
        for cert in (None, (pki.stranger_cert, pki.stranger_key)):
            # Refused in the handshake: TLS 1.3 clients learn it on their first read.
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                await status(n, pki, cert=cert)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_ciphersuites_limit_tls12(pki: PKI) -> None:
    settings = TLSSettings(str(pki.chain), str(pki.key), ciphersuites=("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",))
    port = await listen(settings)
    try:
        n = port.getHost().port
        twelve = ssl.TLSVersion.TLSv1_2
        assert await status(n, pki, max_version=twelve, ciphers="ECDHE-ECDSA-AES256-GCM-SHA384") == 200
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await status(n, pki, max_version=twelve, ciphers="ECDHE-ECDSA-AES128-GCM-SHA256")
    finally:
        await port.stopListening()


@pytest.mark.parametrize(
    "change, key, message",
    [
        ({"certificate": "/nonexistent/cert.pem"}, "http.tls.certificate", "cannot read"),
        ({"key": "/nonexistent/key.pem"}, "http.tls.key", "cannot read"),
        ({"certificate": "@garbage"}, "http.tls.certificate", "not a PEM certificate"),
        ({"key": "@garbage"}, "http.tls.key", "not a PEM private key"),
        ({"key": "@client_key"}, "http.tls.key", "does not belong to the first certificate"),
        ({"clientcas": ("@garbage",)}, "http.tls.clientcas", "not a PEM certificate"),
        ({"minimumtls": "ssl3"}, "http.tls.minimumtls", "must be one of"),
        ({"ciphersuites": ("TLS_RSA_WITH_RC4_128_SHA",)}, "http.tls.ciphersuites", "unknown or unsupported"),
    ],
)
def test_configuration_errors_name_the_key(pki: PKI, tmp_path: Path, change: dict[str, Any], key: str, message: str) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    files = {"@garbage": str(garbage), "@client_key": str(pki.client_key)}

    def resolve(value: Any) -> Any:
        if isinstance(value, tuple):
            return tuple(files.get(v, v) for v in value)
        return files.get(value, value)

    fields: dict[str, Any] = {"certificate": str(pki.chain), "key": str(pki.key)}
    fields.update({k: resolve(v) for k, v in change.items()})
    with pytest.raises(TLSConfigError) as info:
        server_options(TLSSettings(**fields))
    assert info.value.key == key
    assert message in str(info.value)
    assert str(info.value).startswith(f"invalid configuration: {key} = ")


def test_tls13_suite_names_are_accepted(pki: PKI) -> None:
    server_options(TLSSettings(str(pki.chain), str(pki.key), ciphersuites=("TLS_AES_128_GCM_SHA256",)))
