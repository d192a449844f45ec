"""A throwaway PKI for TLS tests: a root CA, an intermediate, a server
certificate for 127.0.0.1/localhost, and client certificates, written as PEM
files (made with ``cryptography``; nothing leaves the temp directory)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def new_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def issue(subject: str, key: Any, issuer_cert: x509.Certificate | None, issuer_key: Any, *,
          ca: bool = False, server: bool = False, client: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_cert.subject if issuer_cert is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer_cert is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server else []) + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Any) -> bytes:
    return bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


@dataclass
class PKI:
    """Paths of the PEM files of one test PKI."""

    root: Path  # the root CA certificate (what clients trust)
    chain: Path  # server certificate + intermediate (http.tls.certificate)
    leaf_only: Path  # the server certificate alone
    key: Path  # the server key (http.tls.key)
    client_ca: Path  # CA of client certificates (http.tls.clientcas)
    client_cert: Path
    client_key: Path
    stranger_cert: Path  # a client certificate from a CA nobody trusts
    stranger_key: Path


def make_pki(directory: Path) -> PKI:
    directory.mkdir(parents=True, exist_ok=True)
    root_key, inter_key, leaf_key = new_key(), new_key(), new_key()
    root = issue("Test Root CA", root_key, None, root_key, ca=True)
    inter = issue("Test Intermediate CA", inter_key, root, root_key, ca=True)
    leaf = issue("127.0.0.1", leaf_key, inter, inter_key, server=True)
    cca_key, client_key = new_key(), new_key()
    cca = issue("Test Client CA", cca_key, None, cca_key, ca=True)
    client = issue("test-client", client_key, cca, cca_key, client=True)
    other_key, stranger_key = new_key(), new_key()
    other = issue("Unknown CA", other_key, None, other_key, ca=True)
    stranger = issue("stranger", stranger_key, other, other_key, client=True)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    return PKI(
        root=write("root.crt", pem(root)),
        chain=write("server-chain.crt", pem(leaf, inter)),
        leaf_only=write("server.crt", pem(leaf)),
        key=write("server.key", key_pem(leaf_key)),
        client_ca=write("client-ca.crt", pem(cca)),
        client_cert=write("client.crt", pem(client)),
        client_key=write("client.key", key_pem(client_key)),
        stranger_cert=write("stranger.crt", pem(stranger)),
        stranger_key=write("stranger.key", key_pem(stranger_key)),
    )
