"""Real docker, skopeo and podman against our registry with access control
and TLS (issue 10).

Two registries run as real ``twistd -n registry`` processes, both serving
TLS only (``http.tls``: a certificate for 127.0.0.1 issued by a test
intermediate, the chain sent, the root made here in ``tests.tlsutil``):

* htpasswd: a bcrypt htpasswd file written by the test (``alice``);
* token: ``auth.token`` trusting a test CA (``tests.auth.pki``); the token
  server is ``tests.auth.tokenserver.TokenServer`` in a process of its own
  (dockerd, skopeo and podman fetch tokens themselves) issuing JWTs signed by
  a key under that CA, with ``x5c`` chains: ``alice`` may pull and push
  ``clients/*``, ``bob`` may only pull.

Who verifies TLS: dockerd treats every 127.0.0.0/8 registry as "insecure"
(moby always adds that range to the insecure registries) and skips
certificate verification there, so the docker tests prove that docker
speaks TLS to the registry (the port serves nothing else) and authenticates,
not that it verified the chain; the root is still installed in
``/etc/docker/certs.d/<host:port>/ca.crt`` as a user would, and removed
afterwards (checked by hand: with no CA installed at all, dockerd still
reaches such a registry over TLS). skopeo and podman run with
``--tls-verify=true`` and ``--cert-dir`` holding only the test root, and the
skopeo test shows that without ``--cert-dir`` the same command fails
certificate verification. A third registry asks for client certificates
(``http.tls.clientcas``), which skopeo presents from its ``--cert-dir``.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

import bcrypt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.auth.pki import CA
from tests.clients.harness import (
    DockerDaemon,
    Podman,
    Registry,
    Skopeo,
    TokenServerProcess,
    http_request,
    make_image,
    sha256_digest,
    start_our_registry,
    start_token_server,
    write_docker_archive,
    write_oci_layout,
)
from tests.tlsutil import PKI, make_pki

pytestmark = pytest.mark.clients

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2"}
SERVICE = "client-tests"
ISSUER = "client-tests-issuer"
DOCKER_CERTS_D = Path("/etc/docker/certs.d")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pki(clients_root: Path) -> PKI:
    """Root, intermediate and a 127.0.0.1 server certificate (tests.tlsutil)."""
    return make_pki(clients_root / "auth-pki")


@pytest.fixture(scope="module")
def cert_dir(clients_root: Path, pki: PKI) -> Path:
    """A ``--cert-dir`` for skopeo/podman: only the test root, as ``ca.crt``."""
    directory = clients_root / "auth-cert-dir"
    directory.mkdir(exist_ok=True)
    shutil.copy(pki.root, directory / "ca.crt")
    return directory


def tls_config(pki: PKI) -> dict[str, object]:
    return {"http": {"tls": {"certificate": str(pki.chain), "key": str(pki.key)}}}


@pytest.fixture(scope="module")
def htpasswd_registry(clients_root: Path, pki: PKI) -> Iterator[Registry]:
    """Our registry over TLS with ``auth.htpasswd``: alice, bcrypt cost 5."""
    workdir = clients_root / "auth-htpasswd"
    workdir.mkdir(exist_ok=True)
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORDS["alice"].encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"alice:{hashed}\n")
    extra = {"auth": {"htpasswd": {"realm": "client-tests", "path": str(htpasswd)}}, **tls_config(pki)}
    registry = start_our_registry(workdir, extra_config=extra, cafile=pki.root)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="module")
def token_server(clients_root: Path) -> Iterator[TokenServerProcess]:
    """The test token server in its own process; its signing CA's root is
    written to ``auth-token/bundle.pem`` for the registry."""
    workdir = clients_root / "auth-token"
    workdir.mkdir(exist_ok=True)
    ca = CA.make("ec", name="Token")
    signer = ca.signer("ec")
    (workdir / "bundle.pem").write_bytes(ca.bundle_pem())
    (workdir / "signer.key").write_bytes(
        signer.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    (workdir / "signer-chain.pem").write_bytes(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in signer.chain)
    )
    server = start_token_server(
        workdir / "server",
        {
            "key": str(workdir / "signer.key"),
            "chain": str(workdir / "signer-chain.pem"),
            "alg": signer.alg,
            "issuer": ISSUER,
            "users": PASSWORDS,
            "grants": {
                "alice": [["repository", "clients/*", ["pull", "push"]]],
                "bob": [["repository", "clients/*", ["pull"]]],
                "": [],  # anonymous: a token granting nothing, as Docker Hub's
            },
        },
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def token_registry(clients_root: Path, pki: PKI, token_server: TokenServerProcess) -> Iterator[Registry]:
    """Our registry over TLS with ``auth.token`` pointing at ``token_server``."""
    workdir = clients_root / "auth-token"
    extra = {
        "auth": {
            "token": {
                "realm": token_server.realm,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(workdir / "bundle.pem"),
            }
        },
        **tls_config(pki),
    }
    registry = start_our_registry(workdir / "registry", extra_config=extra, cafile=pki.root)
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def docker_trusts(pki: PKI) -> Iterator[Callable[[Registry], None]]:
    """Install the test root as ``/etc/docker/certs.d/<host:port>/ca.crt``
    for a registry; everything created is removed afterwards."""
    created_root = not DOCKER_CERTS_D.exists()
    made: list[Path] = []

    def trust(registry: Registry) -> None:
        directory = DOCKER_CERTS_D / registry.host
        assert not directory.exists(), f"{directory} exists already; not touching it"
        directory.mkdir(parents=True)
        made.append(directory)
        shutil.copy(pki.root, directory / "ca.crt")

    try:
        yield trust
    finally:
        for directory in made:
            shutil.rmtree(directory, ignore_errors=True)
        if created_root:
            try:
                DOCKER_CERTS_D.rmdir()  # only if nothing else was put there meanwhile
            except OSError:
                pass


# ---------------------------------------------------------------- helpers


def basic(user: str) -> dict[str, str]:
    raw = f"{user}:{PASSWORDS[user]}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def creds(user: str) -> str:
    return f"{user}:{PASSWORDS[user]}"


def failure_text(result: object) -> str:
    """stdout + stderr of a finished command."""
    return f"{getattr(result, 'stdout', '')}\n{getattr(result, 'stderr', '')}"


def docker_load(dockerd: DockerDaemon, scratch: Path, seed: str, tag: str) -> str:
    """Generate a one-layer image, ``docker load`` it as ``tag``; its ID."""
    image = make_image(seed, layers=1, layer_size=16 * 1024)
    archive = write_docker_archive(image, scratch / f"{seed.replace('/', '-')}.tar", [tag])
    dockerd.load(archive)
    assert dockerd.image_id(tag) == image.config_digest
    return image.config_digest


# ---------------------------------------------------------------- docker


def registry_log_since(registry: Registry, offset: int) -> str:
    """What the registry logged after ``offset`` characters of its log."""
    return registry.process.output(tail=10**9)[offset:]


def test_docker_htpasswd_over_tls_login_push_pull_logout(
    dockerd: DockerDaemon, htpasswd_registry: Registry, docker_trusts: Callable[[Registry], None],
    repo: str, scratch: Path,
) -> None:
    """docker login + push + pull with a password over TLS (dockerd does not
    verify the chain on 127.0.0.1: see the module docstring). Without login
    a push is refused, a wrong password is refused at login, and after
    ``docker logout`` a pull is refused by the registry (401 in its log:
    docker then retries the loopback registry over plain HTTP, which the
    TLS port cannot answer, so docker shows that attempt's error)."""
    registry = htpasswd_registry
    docker_trusts(registry)
    remote = registry.ref(repo, "v1")
    image_id = docker_load(dockerd, scratch, repo, remote)
    try:
        anonymous = dockerd.docker("push", remote, check=False)
        assert anonymous.returncode != 0
        assert "no basic auth credentials" in anonymous.stderr, failure_text(anonymous)

        wrong = dockerd.login(registry.host, "alice", "not-her-password", check=False)
        assert wrong.returncode != 0
        assert f"login attempt to https://{registry.host}/v2/ failed with status: 401 Unauthorized" in wrong.stderr, (
            failure_text(wrong)
        )

        login = dockerd.login(registry.host, "alice", PASSWORDS["alice"])
        assert "Login Succeeded" in login.stdout, failure_text(login)
        push = dockerd.docker("push", remote)
        assert "Pushed" in push.stdout, failure_text(push)
        served = http_request(f"{registry.url}/v2/{repo}/manifests/v1", headers=basic("alice"), cafile=registry.cafile)
        assert served.status == 200, served
        assert json.loads(served.body)["config"]["digest"] == image_id
        assert registry.get(f"/v2/{repo}/manifests/v1").status == 401  # and nobody else reads it

        dockerd.docker("rmi", remote)
        dockerd.docker("pull", remote)
        assert dockerd.image_id(remote) == image_id
        dockerd.docker("rmi", remote)

        dockerd.logout(registry.host)
        offset = len(registry.process.output(tail=10**9))
        refused = dockerd.docker("pull", remote, check=False)
        assert refused.returncode != 0, failure_text(refused)
        assert dockerd.docker("image", "inspect", remote, check=False).returncode != 0
        logged = registry_log_since(registry, offset)
        assert re.search(r"GET /v2/ 401 .* error=UNAUTHORIZED", logged), logged
        assert not re.search(rf"/v2/{re.escape(repo)}/\S+ 200 ", logged), logged
    finally:
        dockerd.docker("logout", registry.host, check=False)
        dockerd.docker("rmi", "--force", image_id, check=False)


def test_docker_token_push_pull_and_a_pull_only_user_is_refused_a_push(
    dockerd: DockerDaemon, token_registry: Registry, docker_trusts: Callable[[Registry], None],
    repo: str, scratch: Path,
) -> None:
    """Token auth: dockerd fetches tokens from the token server itself.
    alice (pull, push) logs in, pushes and pulls; bob (pull only) pulls but
    is refused a push with docker's "denied: requested access to the
    resource is denied" and the registry's reason; after ``docker logout`` a
    pull is refused ("pull access denied": the anonymous token grants
    nothing). TLS is not verified by dockerd on 127.0.0.1 (module docstring)."""
    registry = token_registry
    docker_trusts(registry)
    remote = registry.ref(repo, "v1")
    image_id = docker_load(dockerd, scratch, repo, remote)
    try:
        login = dockerd.login(registry.host, "alice", PASSWORDS["alice"])
        assert "Login Succeeded" in login.stdout, failure_text(login)
        push = dockerd.docker("push", remote)
        assert "Pushed" in push.stdout, failure_text(push)
        dockerd.docker("rmi", remote)
        dockerd.docker("pull", remote)
        assert dockerd.image_id(remote) == image_id
        dockerd.logout(registry.host)

        login = dockerd.login(registry.host, "bob", PASSWORDS["bob"])
        assert "Login Succeeded" in login.stdout, failure_text(login)
        dockerd.docker("rmi", remote)
        dockerd.docker("pull", remote)
        assert dockerd.image_id(remote) == image_id
        other = registry.ref(repo, "by-bob")
        dockerd.docker("tag", remote, other)
        refused = dockerd.docker("push", other, check=False)
        assert refused.returncode != 0
        assert "denied: requested access to the resource is denied" in refused.stderr, failure_text(refused)
        assert f"the token does not grant repository:{repo}:push" in refused.stderr, failure_text(refused)
        assert registry.get(f"/v2/{repo}/manifests/by-bob").status == 401  # nothing tagged
        dockerd.logout(registry.host)

        dockerd.docker("rmi", remote, other)
        refused_pull = dockerd.docker("pull", remote, check=False)
        assert refused_pull.returncode != 0
        assert f"pull access denied for {registry.host}/{repo}" in refused_pull.stderr, failure_text(refused_pull)
        assert "may require 'docker login'" in refused_pull.stderr, failure_text(refused_pull)
        assert dockerd.docker("image", "inspect", remote, check=False).returncode != 0
    finally:
        dockerd.docker("logout", registry.host, check=False)
        dockerd.docker("rmi", "--force", image_id, check=False)


# ---------------------------------------------------------------- skopeo


def test_skopeo_htpasswd_creds_authfile_and_cert_dir(
    skopeo: Skopeo, htpasswd_registry: Registry, cert_dir: Path, repo: str, scratch: Path
) -> None:
    """skopeo verifies TLS: with ``--tls-verify=true`` and no ``--cert-dir``
    it refuses the certificate; with ``--cert-dir`` (the test root only) it
    copies with ``--dest-creds``, reads with ``--authfile`` after ``skopeo
    login``, and is refused after ``skopeo logout`` or with a wrong password."""
    registry = htpasswd_registry
    layout = write_oci_layout(scratch / "layout", [make_image(repo, layers=1, layer_size=16 * 1024)], "v1")
    target = registry.docker_ref(repo, "v1")
    verify = ("--tls-verify=true", "--cert-dir", str(cert_dir))

    no_ca = skopeo.run("inspect", "--tls-verify=true", "--creds", creds("alice"), target, check=False)
    assert no_ca.returncode != 0
    assert "x509: certificate signed by unknown authority" in no_ca.stderr, failure_text(no_ca)
    anonymous = skopeo.run("inspect", *verify, target, check=False)
    assert anonymous.returncode != 0
    assert "unauthorized: authentication required" in anonymous.stderr, failure_text(anonymous)
    wrong = skopeo.run("inspect", *verify, "--creds", "alice:wrong", target, check=False)
    assert wrong.returncode != 0
    assert "unauthorized: incorrect user name or password" in wrong.stderr, failure_text(wrong)

    skopeo.run(
        "copy", "--dest-tls-verify=true", "--dest-cert-dir", str(cert_dir), "--dest-creds", creds("alice"),
        layout.reference, target,
    )
    authfile = scratch / "auth.json"
    skopeo.run("login", *verify, "--authfile", str(authfile), "--username", "alice", "--password",
               PASSWORDS["alice"], registry.host)  # fmt: skip
    raw = skopeo.run("inspect", *verify, "--authfile", str(authfile), "--raw", target).stdout
    assert sha256_digest(raw.encode()) == layout.digest
    skopeo.run("copy", "--src-tls-verify=true", "--src-cert-dir", str(cert_dir), "--src-authfile", str(authfile),
               target, f"dir:{scratch / 'copied'}")  # fmt: skip
    assert sha256_digest((scratch / "copied" / "manifest.json").read_bytes()) == layout.digest

    skopeo.run("logout", "--authfile", str(authfile), registry.host)
    after = skopeo.run("inspect", *verify, "--authfile", str(authfile), target, check=False)
    assert after.returncode != 0
    assert "unauthorized: authentication required" in after.stderr, failure_text(after)


def test_skopeo_token_pull_only_user_is_refused_a_copy(
    skopeo: Skopeo, token_registry: Registry, cert_dir: Path, repo: str, scratch: Path
) -> None:
    """Token auth with ``--creds`` and ``--cert-dir`` (TLS verified): alice
    copies in; bob reads, is refused a copy in ("denied"), and after
    ``skopeo logout`` of his ``--authfile`` login is refused a read."""
    registry = token_registry
    layout = write_oci_layout(scratch / "layout", [make_image(repo, layers=1, layer_size=16 * 1024)], "v1")
    verify = ("--tls-verify=true", "--cert-dir", str(cert_dir))
    dest = ("--dest-tls-verify=true", "--dest-cert-dir", str(cert_dir))
    skopeo.run("copy", *dest, "--dest-creds", creds("alice"), layout.reference, registry.docker_ref(repo, "v1"))

    authfile = scratch / "auth.json"
    skopeo.run("login", *verify, "--authfile", str(authfile), "--username", "bob", "--password", PASSWORDS["bob"],
               registry.host)  # fmt: skip
    raw = skopeo.run("inspect", *verify, "--authfile", str(authfile), "--raw", registry.docker_ref(repo, "v1")).stdout
    assert sha256_digest(raw.encode()) == layout.digest
    refused = skopeo.run(
        "copy", *dest, "--dest-creds", creds("bob"), layout.reference, registry.docker_ref(repo, "by-bob"), check=False
    )
    assert refused.returncode != 0
    assert "denied: requested access to the resource is denied" in refused.stderr, failure_text(refused)
    assert f"the token does not grant repository:{repo}:push" in refused.stderr, failure_text(refused)
    tags = http_request(f"{registry.url}/v2/{repo}/tags/list", cafile=registry.cafile)
    assert tags.status == 401

    skopeo.run("logout", "--authfile", str(authfile), registry.host)
    after = skopeo.run("inspect", *verify, "--authfile", str(authfile), registry.docker_ref(repo, "v1"), check=False)
    assert after.returncode != 0
    assert "denied: requested access to the resource is denied" in after.stderr, failure_text(after)
    assert f"the token does not grant repository:{repo}:pull" in after.stderr, failure_text(after)


# ---------------------------------------------------------------- podman


@pytest.mark.parametrize("kind", ["htpasswd", "token"])
def test_podman_login_push_pull_logout(
    podman: Podman, request: pytest.FixtureRequest, cert_dir: Path, repo: str, scratch: Path, kind: str
) -> None:
    """podman with ``--tls-verify=true --cert-dir`` (TLS verified): ``podman
    login --authfile`` as alice, push, remove, pull back; with token auth,
    bob (``--creds``, pull only) pulls but is refused a push ("denied");
    after ``podman logout`` a pull is refused."""
    registry: Registry = request.getfixturevalue(f"{kind}_registry")
    image = make_image(repo, layers=1, layer_size=16 * 1024)
    remote = registry.ref(repo, "v1")
    podman.run("load", "--input", str(write_docker_archive(image, scratch / "image.tar", [remote])))
    hex_id = image.config_digest.removeprefix("sha256:")
    verify = ("--tls-verify=true", "--cert-dir", str(cert_dir))
    authfile = scratch / "auth.json"
    try:
        podman.run("login", *verify, "--authfile", str(authfile), "--username", "alice", "--password",
                   PASSWORDS["alice"], registry.host)  # fmt: skip
        podman.run("push", *verify, "--authfile", str(authfile), "--format", "v2s2", remote)
        podman.run("rmi", "--force", hex_id)
        podman.run("pull", *verify, "--authfile", str(authfile), remote)
        assert podman.image_id(remote) == hex_id

        if kind == "token":
            podman.run("rmi", "--force", hex_id)
            podman.run("pull", *verify, "--creds", creds("bob"), remote)
            assert podman.image_id(remote) == hex_id
            refused = podman.run("push", *verify, "--creds", creds("bob"), remote, registry.ref(repo, "by-bob"),
                                 check=False)  # fmt: skip
            assert refused.returncode != 0
            assert "denied: requested access to the resource is denied" in refused.stderr, failure_text(refused)

        podman.run("logout", "--authfile", str(authfile), registry.host)
        podman.run("rmi", "--force", hex_id)
        after = podman.run("pull", *verify, "--authfile", str(authfile), remote, check=False)
        assert after.returncode != 0
        if kind == "token":  # an anonymous token, granting nothing
            assert f"the token does not grant repository:{repo}:pull" in after.stderr, failure_text(after)
        else:
            assert "unauthorized: authentication required" in after.stderr, failure_text(after)
        assert podman.run("image", "exists", remote, check=False).returncode == 1
    finally:
        podman.run("rmi", "--force", hex_id, check=False)


# ---------------------------------------------------------------- mutual TLS


def test_skopeo_mutual_tls_client_certificate_from_cert_dir(
    skopeo: Skopeo, clients_root: Path, pki: PKI, cert_dir: Path, repo: str, scratch: Path
) -> None:
    """``http.tls.clientcas``: skopeo presents ``client.cert``/``client.key``
    from its ``--cert-dir`` and copies; with only ``ca.crt`` there (no client
    certificate) the handshake is refused, and a certificate from a CA the
    registry does not list is refused too."""
    extra = {"http": {"tls": {"certificate": str(pki.chain), "key": str(pki.key), "clientcas": [str(pki.client_ca)]}}}
    registry = start_our_registry(
        clients_root / "auth-mtls", extra_config=extra, cafile=pki.root, client_cert=(pki.client_cert, pki.client_key)
    )
    try:
        with_client = scratch / "with-client-cert"
        stranger = scratch / "with-stranger-cert"
        for directory, (cert, key) in ((with_client, (pki.client_cert, pki.client_key)),
                                       (stranger, (pki.stranger_cert, pki.stranger_key))):  # fmt: skip
            directory.mkdir()
            shutil.copy(pki.root, directory / "ca.crt")
            shutil.copy(cert, directory / "client.cert")
            shutil.copy(key, directory / "client.key")
        layout = write_oci_layout(scratch / "layout", [make_image(repo, layers=1, layer_size=16 * 1024)], "v1")
        target = registry.docker_ref(repo, "v1")
        skopeo.run("copy", "--dest-tls-verify=true", "--dest-cert-dir", str(with_client), layout.reference, target)
        raw = skopeo.run("inspect", "--tls-verify=true", "--cert-dir", str(with_client), "--raw", target).stdout
        assert sha256_digest(raw.encode()) == layout.digest
        for refused_dir in (cert_dir, stranger):
            refused = skopeo.run("inspect", "--tls-verify=true", "--cert-dir", str(refused_dir), target, check=False)
            assert refused.returncode != 0
            assert "remote error: tls:" in refused.stderr, failure_text(refused)
    finally:
        registry.stop()
