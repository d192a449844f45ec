"""TLS for the registry's listener: ``http.tls`` as Distribution configures it.

``http.tls.certificate`` names a PEM file holding the server certificate
followed by its intermediates (the whole chain is sent, so a client that
trusts only the root verifies), ``http.tls.key`` its private key,
``http.tls.clientcas`` PEM files of the CAs whose client certificates are
accepted (mutual TLS: a client without a valid certificate is refused during
the handshake), ``http.tls.minimumtls`` the lowest protocol version
(``tls1.2`` unless set) and ``http.tls.ciphersuites`` Go's names of the TLS
1.2 cipher suites to offer (TLS 1.3's suites are not configurable, as in Go).

Everything is checked when the options are built, before anything listens,
and a problem raises :class:`TLSConfigError` naming the key, the file and
what is wrong.  The result is a Twisted ``CertificateOptions``; the listener
(:func:`server_endpoint`, or :func:`tls_factory` around a worker's adopted
socket) speaks TLS through ``TLSMemoryBIOFactory``.

A plain HTTP request sent to the TLS port (``http://`` where ``https://`` was
meant) is answered ``400`` with a sentence saying so, as Go's servers do,
instead of a connection closed by a failed handshake that tells the person
nothing: the first byte of a connection is a handshake record (``0x16``) for
TLS and a method's capital letter for HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.internet.ssl import CertificateOptions
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from zope.interface import implementer

__all__ = [
    "GO_CIPHER_SUITES",
    "TLS_VERSIONS",
    "TLSConfigError",
    "TLSSettings",
    "server_endpoint",
    "server_options",
    "tls_factory",
]

#: ``http.tls.minimumtls`` values (Distribution's) to Twisted's TLSVersion names.
TLS_VERSIONS = {"tls1.0": "TLSv1_0", "tls1.1": "TLSv1_1", "tls1.2": "TLSv1_2", "tls1.3": "TLSv1_3"}

#: Go's cipher suite names (``crypto/tls``) to OpenSSL's, for TLS 1.2 and below.
GO_CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
}
#: TLS 1.3 suites: always on when TLS 1.3 is; naming them is accepted.
TLS13_SUITES = frozenset({"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"})


class TLSConfigError(ValueError):
    """A TLS setting that stops start-up; ``str()`` names key, value and reason."""

    def __init__(self, key: str, value: object, message: str) -> None:
        super().__init__(key, value, message)
        self.key = key
        self.value = value
        self.message = message

    def __str__(self) -> str:
        return f"invalid configuration: {self.key} = {self.value!r}: {self.message}"


@dataclass(frozen=True)
class TLSSettings:
    """``http.tls``: paths and policy, as configured (nothing loaded yet)."""

    certificate: str
    key: str
    clientcas: tuple[str, ...] = ()
    minimumtls: str = "tls1.2"
    ciphersuites: tuple[str, ...] = field(default_factory=tuple)


def _read(key: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise TLSConfigError(key, path, f"cannot read: {e.strerror or e}") from None


def _certificates(key: str, path: str) -> list[Any]:
    """Every certificate in the PEM file ``path`` (cryptography objects)."""
    from cryptography import x509

    data = _read(key, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TLSConfigError(key, path, f"not a PEM certificate file: {e}") from None
    if not certs:
        raise TLSConfigError(key, path, "holds no certificate")
    return certs


def _private_key(key: str, path: str) -> Any:
    from cryptography.hazmat.primitives import serialization

    data = _read(key, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(key, path, "the private key is encrypted; give an unencrypted PEM key") from None
    except (ValueError, Exception) as e:  # cryptography raises ValueError or UnsupportedAlgorithm
        raise TLSConfigError(key, path, f"not a PEM private key: {e}") from None


def _spki(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(
        public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _min_version(value: str) -> Any:
    from twisted.internet.ssl import TLSVersion

    name = TLS_VERSIONS.get(value.strip().lower())
    if name is None:
        raise TLSConfigError(
            "http.tls.minimumtls", value, f"must be one of {', '.join(TLS_VERSIONS)}"
        )
    return getattr(TLSVersion, name)


def _ciphers(names: Sequence[str]) -> Any:
    from twisted.internet.ssl import AcceptableCiphers

    if not names:
        return None
    openssl: list[str] = []
    for name in names:
        if name in TLS13_SUITES:
            continue
        mapped = GO_CIPHER_SUITES.get(name)
        if mapped is None:
            raise TLSConfigError(
                "http.tls.ciphersuites", name,
                "unknown or unsupported cipher suite; use Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            )
        openssl.append(mapped)
    if not openssl:
        return None
    return AcceptableCiphers.fromOpenSSLCipherString(":".join(openssl))


def server_options(settings: TLSSettings) -> Any:
    """Twisted ``CertificateOptions`` for ``settings``; raises TLSConfigError."""
    from OpenSSL import SSL, crypto
    from twisted.internet import ssl

    chain = _certificates("http.tls.certificate", settings.certificate)
    key = _private_key("http.tls.key", settings.key)
    if _spki(key.public_key()) != _spki(chain[0].public_key()):
        raise TLSConfigError(
            "http.tls.key", settings.key,
            f"this key does not belong to the first certificate in {settings.certificate} "
            "(the file must start with the server certificate, then its intermediates)",
        )
    minimum = _min_version(settings.minimumtls or "tls1.2")
    ciphers = _ciphers(settings.ciphersuites)

    client_cas: list[Any] = []
    for path in settings.clientcas:
        client_cas.extend(crypto.X509.from_cryptography(c) for c in _certificates("http.tls.clientcas", path))

    kwargs: dict[str, Any] = {
        "privateKey": crypto.PKey.from_cryptography_key(key),
        "certificate": crypto.X509.from_cryptography(chain[0]),
        "extraCertChain": [crypto.X509.from_cryptography(c) for c in chain[1:]],
        "enableSessions": False,
    }
    if ciphers is not None:
        kwargs["acceptableCiphers"] = ciphers
    if minimum >= ssl.TLSVersion.TLSv1_2:
        kwargs["raiseMinimumTo"] = minimum
    else:
        kwargs["insecurelyLowerMinimumTo"] = minimum
    if client_cas:
        kwargs["trustRoot"] = ssl.trustRootFromCertificates([ssl.Certificate(c) for c in client_cas])

    try:
        options = _ServerOptions(**kwargs)
        options.client_ca_names = [c.get_subject() for c in client_cas]
        options.getContext()  # build once now: a bad combination fails at start-up
    except SSL.Error as e:
        raise TLSConfigError("http.tls", settings.certificate, f"OpenSSL refused the configuration: {e}") from None
    return options


class _ServerOptions(CertificateOptions):
    """CertificateOptions that also tell clients which CAs' client
    certificates are accepted (OpenSSL's client CA list), so a client holding
    several certificates picks the right one."""

    client_ca_names: list[Any] = []
    _ca_names_set = False

    def getContext(self) -> Any:
        ctx = super().getContext()
        if self.client_ca_names and not self._ca_names_set:
            ctx.set_client_ca_list(self.client_ca_names)
            self._ca_names_set = True
        return ctx


#: The answer to a plain HTTP request on the TLS port (what Go's
#: ``net/http`` says, plus what to do about it).
PLAIN_HTTP_ANSWER_BODY = (
    b"Client sent an HTTP request to an HTTPS server: this registry speaks TLS on this port; use https://.\n"
)
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
    b"Content-Length: " + str(len(PLAIN_HTTP_ANSWER_BODY)).encode() + b"\r\n\r\n" + PLAIN_HTTP_ANSWER_BODY
)


class _PlainHTTPAwareTLS(TLSMemoryBIOProtocol):
    """TLS that answers a plain HTTP request (first byte a capital letter,
    which no TLS record starts with) with ``PLAIN_HTTP_ANSWER``."""

    _first = True

    def dataReceived(self, data: bytes) -> None:
        if self._first and data:
            self._first = False
            if 0x41 <= data[0] <= 0x5A:  # "A".."Z": GET, HEAD, PUT, POST, ...
                transport = self.transport
                assert transport is not None
                transport.write(PLAIN_HTTP_ANSWER)
                transport.loseConnection()
                return
        super().dataReceived(data)


class _PlainHTTPAwareTLSFactory(TLSMemoryBIOFactory):
    protocol = _PlainHTTPAwareTLS


def tls_factory(options: CertificateOptions, wrapped: IProtocolFactory) -> IProtocolFactory:
    """``wrapped`` (the HTTP site) behind TLS with ``options``, answering
    plain HTTP on the port with a 400 that says to use https://."""
    return _PlainHTTPAwareTLSFactory(options, False, wrapped)


@implementer(IStreamServerEndpoint)
class _TLSServerEndpoint:
    """A TCP server endpoint whose listening factory is wrapped by :func:`tls_factory`."""

    def __init__(self, tcp: IStreamServerEndpoint, options: CertificateOptions) -> None:
        self._tcp = tcp
        self._options = options

    def listen(self, factory: IProtocolFactory) -> Any:
        return self._tcp.listen(tls_factory(self._options, factory))


def server_endpoint(reactor: Any, port: int, settings: TLSSettings, interface: str = "", backlog: int = 50) -> Any:
    """A TCP endpoint on ``interface:port`` speaking TLS with ``settings``
    (``listenTCP`` listens on IPv6 when ``interface`` is an IPv6 address,
    as ``SSL4ServerEndpoint`` did)."""
    from twisted.internet.endpoints import TCP4ServerEndpoint

    tcp = TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=interface)
    return _TLSServerEndpoint(tcp, server_options(settings))
