"""TLS (CA file, cert dir, unverified with http fallback) against our registry
serving https, and retries with backoff of idempotent requests only."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from registry.client import BytesSource, RegistryClient, RetryPolicy, TLSConfig, TransportError
from registry.client.errors import Unavailable
from registry.digest import sha256_digest
from tests.client.clitool import cli
from tests.clients.harness import ManagedProcess, Registry, free_port, twistd_path, wait_until
from tests.tlsutil import make_pki


@pytest.fixture(scope="module")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Registry, Path]]:
    """Our registry over https with a certificate from a private root CA."""
    workdir = tmp_path_factory.mktemp("tls")
    pki = make_pki(workdir / "pki")
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}, tls: {{certificate: {pki.chain}, key: {pki.key}}}}}\n"
    )
    process = ManagedProcess(
        [twistd_path(), "-n", "--pidfile=", "registry", "--config", str(config)], workdir / "registry.log"
    )

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        wait_until(listening, timeout=30, what="our registry over TLS", process=process)
    except BaseException:
        process.stop()
        raise
    try:
        yield Registry("ours", port, workdir / "storage", process), pki.root
    finally:
        process.stop()


@pytest_twisted.ensureDeferred
async def test_https_with_a_ca_file(tls_registry: tuple[Registry, Path]) -> None:
    registry, root = tls_registry
    client = RegistryClient(registry.host, scheme="https", tls=TLSConfig(ca_files=(root,)))
    try:
        assert await client.ping() == "registry/2.0"
        data = b"over tls"
        await client.push_blob("tls/repo", sha256_digest(data), BytesSource(data))
        assert await client.read_blob("tls/repo", sha256_digest(data)) == data
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_https_untrusted_certificate_fails(tls_registry: tuple[Registry, Path]) -> None:
    registry, _ = tls_registry
    client = RegistryClient(registry.host, scheme="https", retry=RetryPolicy(attempts=1))
    try:
        with pytest.raises(TransportError):
            await client.ping()
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_unverified_tls_and_http_fallback(tls_registry: tuple[Registry, Path], ours: Registry) -> None:
    registry, _ = tls_registry
    over_tls = RegistryClient(registry.host, tls=TLSConfig(verify=False))
    plain = RegistryClient(ours.host, tls=TLSConfig(verify=False), retry=RetryPolicy(attempts=1))
    try:
        assert await over_tls.ping() == "registry/2.0"
        assert await over_tls.base_url() == f"https://{registry.host}"
        assert await plain.ping() == "registry/2.0"
        assert await plain.base_url() == f"http://{ours.host}"
    finally:
        await over_tls.close()
        await plain.close()


@pytest_twisted.ensureDeferred
async def test_cli_cert_dir(tls_registry: tuple[Registry, Path], tmp_path: Path) -> None:
    registry, root = tls_registry
    certs = tmp_path / "certs"
    certs.mkdir()
    (certs / "ca.crt").write_bytes(root.read_bytes())
    ok = await cli("tags", "--cert-dir", str(certs), f"docker://{registry.host}/tls/none")
    # reached over verified TLS: the registry answers that the repository is unknown
    assert ok.returncode == 1 and "NAME_UNKNOWN" in ok.stderr, ok.stderr
    insecure = await cli("tags", "--tls-verify=false", f"docker://{registry.host}/tls/none")
    assert "NAME_UNKNOWN" in insecure.stderr, insecure.stderr


class Flaky(Resource):
    """Answers 503 to the first ``failures`` requests, then 200 (a registry's /v2/)."""

    isLeaf = True

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.requests: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.requests.append(request.method)
        if len(self.requests) <= self.failures:
            request.setResponseCode(503)
            request.setHeader("retry-after", "0")
            return b'{"errors": [{"code": "UNAVAILABLE", "message": "busy"}]}'
        request.setHeader("docker-distribution-api-version", "registry/2.0")
        return b"{}"


@pytest_twisted.async_yield_fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    resource = Flaky(failures=2)
    port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
    try:
        yield resource, f"127.0.0.1:{port.getHost().port}"
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_idempotent_requests_are_retried(flaky: tuple[Flaky, str]) -> None:
    resource, host = flaky
    client = RegistryClient(host, retry=RetryPolicy(attempts=3, base_delay=0.01))
    try:
        assert await client.ping() == "registry/2.0"
        assert resource.requests == [b"GET", b"GET", b"GET"]
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_retries_end_with_the_typed_error(flaky: tuple[Flaky, str]) -> None:
    resource, host = flaky
    client = RegistryClient(host, retry=RetryPolicy(attempts=2, base_delay=0.01))
    try:
        with pytest.raises(Unavailable, match="busy"):
            await client.ping()
        assert len(resource.requests) == 2
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_uploads_are_not_blindly_retried(flaky: tuple[Flaky, str]) -> None:
    """A PATCH (not idempotent) is sent once; the upload then asks the server
    for its status instead of sending the chunk again."""
    resource, host = flaky
    resource.failures = 100
    client = RegistryClient(host, retry=RetryPolicy(attempts=3, base_delay=0.01))
    try:
        with pytest.raises(Unavailable):
            await client.push_blob("a/b", sha256_digest(b"x"), BytesSource(b"x"), check_exists=False)
        # POST to start the upload is retried (it only creates an upload session)
        assert resource.requests == [b"POST", b"POST", b"POST"]
    finally:
        await client.close()
