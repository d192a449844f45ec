"""TLS listener (``registry.tls``) over real sockets, with Python's own
``ssl`` module as the client (a different TLS stack from the server's
pyOpenSSL): the whole chain is sent, mutual TLS refuses strangers during the
handshake, ``minimumtls`` and ``ciphersuites`` are honoured, and every
configuration mistake names its key."""

from __future__ import annotations

import http.client
import socket
import ssl
import time
import warnings
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.logger import LogEvent, globalLogPublisher

from registry.app import make_root
from registry.http import TLS_PROBE_RESPONSE, RegistrySite
from registry.logs import ACCESS_NAMESPACE
from registry.storage.factory import create_driver
from registry.tls import TLSConfigError, TLSSettings, server_endpoint, server_options
from tests.tlsutil import PKI, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def access_events() -> Any:
    """Access-log events emitted while the test runs."""
    events: list[LogEvent] = []

    def observer(event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


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


# -- the handshake itself, a plain port's answer to TLS, and --listen ssl: ------


def _handshake(port: int, pki: PKI, max_version: ssl.TLSVersion) -> str:
    """Connect with TLS up to ``max_version``, trusting the root, presenting
    no client certificate; returns what happened: 'handshake: <error>' when
    the handshake fails, 'read: <error>' when it completes on the client's
    side but the first read fails (TLS 1.3 learns of a refused client
    certificate there), or 'served' when a request is answered."""
    ctx = ssl.create_default_context(cafile=str(pki.root))
    ctx.maximum_version = max_version
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        try:
            conn = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except ssl.SSLError as e:
            return f"handshake: {e.reason}"
        try:
            conn.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = conn.recv(65536)
        except (ssl.SSLError, ConnectionError) as e:
            return f"read: {getattr(e, 'reason', None) or e}"
        return "served" if data.startswith(b"HTTP/1.1 ") else f"read: {data[:40]!r}"
    finally:
        raw.close()


@pytest_twisted.ensureDeferred
async def test_mutual_tls_refuses_a_client_without_certificate_in_the_handshake(
    pki: PKI, access_events: list[Any]
) -> None:
    port = await listen(TLSSettings(str(pki.chain), str(pki.key), clientcas=(str(pki.client_ca),)))
    try:
        n = port.getHost().port
        # TLS 1.2: the server's refusal ends the handshake itself.
        twelve = await threads.deferToThread(_handshake, n, pki, ssl.TLSVersion.TLSv1_2)
        assert twelve.startswith("handshake: "), twelve
        # TLS 1.3: the client finishes first; the server's alert is the first thing it reads.
        thirteen = await threads.deferToThread(_handshake, n, pki, ssl.TLSVersion.TLSv1_3)
        assert thirteen == "read: TLSV13_ALERT_CERTIFICATE_REQUIRED", thirteen
        assert access_events == []  # no request reached the registry
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_mutual_tls_control_a_server_without_clientcas_serves_the_same_client(pki: PKI) -> None:
    port = await listen(TLSSettings(str(pki.chain), str(pki.key)))
    try:
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            assert await threads.deferToThread(_handshake, port.getHost().port, pki, version) == "served"
    finally:
        await port.stopListening()


def _old_protocol_client(port: int, pki: PKI) -> str:
    """A client able to speak TLS 1.0 and 1.1 only (OpenSSL security level
    0, so its own library does not forbid them)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(pki.root))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    raw = socket.create_connection(("127.0.0.1", port), timeout=20)
    try:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn:
            return f"connected with {conn.version()}"
    except ssl.SSLError as e:
        return f"refused: {e.reason}"
    finally:
        raw.close()


def _old_protocol_server(pki: PKI) -> tuple[socket.socket, Any]:
    """A stdlib TLS server that allows TLS 1.0 (the control): accepts one
    connection in a thread, handshakes, closes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki.chain), str(pki.key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


@pytest_twisted.ensureDeferred
async def test_a_client_offering_only_tls10_and_tls11_is_refused(pki: PKI, tls_port: int) -> None:
    # The control: this client does connect to a server that allows TLS 1.1.
    listener, thread = _old_protocol_server(pki)
    try:
        control = await threads.deferToThread(_old_protocol_client, listener.getsockname()[1], pki)
        assert control == "connected with TLSv1.1", control
    finally:
        thread.join(20)
        listener.close()
    outcome = await threads.deferToThread(_old_protocol_client, tls_port, pki)
    assert outcome.startswith("refused: "), outcome


def _client_hello() -> bytes:
    """The first flight of a real TLS client (Python's ssl), as bytes."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a TLS handshake record
    return hello


def _send_and_read_all(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(data)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest_twisted.ensureDeferred
async def test_plain_port_answers_a_tls_client_hello_with_http_400() -> None:
    # docker, skopeo and podman try TLS first on a registry they are told is
    # insecure; Go's client reads this answer as "server gave HTTP response
    # to HTTPS client" and falls back to plain HTTP at once.
    site = RegistrySite(make_root(create_driver("inmemory", {})))
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        n = port.getHost().port
        answer = await threads.deferToThread(_send_and_read_all, n, _client_hello())
        assert answer == TLS_PROBE_RESPONSE
        # The same port still serves plain HTTP.
        answer = await threads.deferToThread(
            _send_and_read_all, n, b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        assert answer.startswith(b"HTTP/1.1 200 ")
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_plain_http_on_the_tls_port_is_told_to_use_https(pki: PKI, tls_port: int) -> None:
    # Go's servers answer so; without it the person sees only a closed
    # connection (curl: "Empty reply from server").
    for method in (b"GET", b"HEAD", b"PUT", b"POST", b"PATCH", b"DELETE"):
        answer = await threads.deferToThread(
            _send_and_read_all, tls_port, method + b" /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        )
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
        assert b"content-length: %d" % len(body) in head.lower()
        assert body == b"Client sent an HTTP request to an HTTPS server: this registry speaks TLS on this port; use https://.\n"
    # TLS on the same port is unaffected.
    assert await status(tls_port, pki) == 200


@pytest_twisted.ensureDeferred
async def test_a_tls_client_sending_its_hello_in_pieces_is_served(pki: PKI, tls_port: int) -> None:
    # Only the first byte decides; a ClientHello split across reads is still TLS.
    hello = _client_hello()

    def handshake_in_pieces() -> bytes:
        with socket.create_connection(("127.0.0.1", tls_port), timeout=20) as s:
            s.sendall(hello[:1])
            time.sleep(0.2)
            s.sendall(hello[1:5])
            time.sleep(0.2)
            s.sendall(hello[5:])
            return s.recv(5)

    first = await threads.deferToThread(handshake_in_pieces)
    assert first[:1] == b"\x16", first  # the server's handshake record, not an HTTP answer


@pytest_twisted.ensureDeferred
async def test_listen_ssl_endpoint_serves_the_registry_with_its_chain(pki: PKI, tmp_path: Path) -> None:
    # twistd registry --listen ssl:...: Twisted's own TLS endpoint string
    # (http.tls is not used then); extraCertChain sends the intermediate.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from registry.tap import Options, makeService

    leaf, intermediate = x509.load_pem_x509_certificates(pki.chain.read_bytes())
    inter_file = tmp_path / "intermediate.pem"
    inter_file.write_bytes(intermediate.public_bytes(serialization.Encoding.PEM))
    options = Options(environ={"REGISTRY_STORAGE": "inmemory"})
    options.parseOptions([
        "--listen",
        f"ssl:0:interface=127.0.0.1:privateKey={pki.key}:certKey={pki.leaf_only}:extraCertChain={inter_file}",
    ])
    service = makeService(options)
    service.startService()
    try:
        listening = await service.when_listening()
        assert await status(listening.getHost().port, pki) == 200
    finally:
        await service.stopService()
