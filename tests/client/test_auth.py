"""Authentication against our registry and CNCF Distribution 2.8.2 (the latter
under ``-m clients``): Basic (htpasswd) and Bearer tokens from a token
server, through the library and the command."""

from __future__ import annotations

import base64
import json
import tempfile
from pathlib import Path
from typing import AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.web.server import Site

from registry.client import AuthenticationError, BytesSource, Credentials, RegistryClient
from registry.client.errors import Unauthorized
from registry.client.images import push_image
from registry.client.layout import OCILayout
from registry.digest import sha256_digest
from tests.client.clitool import cli
from tests.client.tokenserver import ISSUER, SERVICE, TokenServer
from tests.clients.harness import (
    ManagedProcess,
    MissingTool,
    Registry,
    free_port,
    http_request,
    make_image,
    missing_tool,
    require,
    twistd_path,
    wait_until,
    write_oci_layout,
)

KINDS = ["ours", pytest.param("reference", marks=pytest.mark.clients)]

USER, PASSWORD = "alice", "s3cret:with-colon"


def start_with_auth(kind: str, workdir: Path, auth_yaml: str) -> Registry:
    """A registry of ``kind`` with an ``auth:`` section; ready when ``/v2/`` answers 401."""
    if kind == "ours":
        argv = [twistd_path(), "-n", "--pidfile=", "registry", "--config"]
    else:
        try:
            argv = [require("docker-registry", "docker-registry"), "serve"]
        except MissingTool as error:
            missing_tool(error)
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log: {level: info}\n"
        f"storage: {{filesystem: {{rootdirectory: {workdir / 'storage'}}}, delete: {{enabled: true}}}}\n"
        f"http: {{addr: 127.0.0.1:{port}, secret: client-auth-tests}}\n"
        f"auth:\n{auth_yaml}"
    )
    process = ManagedProcess([*argv, str(config)], workdir / "registry.log")
    registry = Registry(kind, port, workdir / "storage", process)

    def answers() -> bool:
        try:
            return http_request(registry.url + "/v2/", timeout=2).status == 401
        except OSError:
            return False

    try:
        wait_until(answers, timeout=30, what=f"{kind} registry with auth", process=process)
    except BaseException:
        process.stop()
        raise
    return registry


@pytest.fixture(scope="module", params=KINDS)
def basic_registry(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import bcrypt

    workdir = tmp_path_factory.mktemp("basic")
    htpasswd = workdir / "htpasswd"
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=5)).decode()
    htpasswd.write_text(f"{USER}:{hashed}\n")
    registry = start_with_auth(request.param, workdir, f"  htpasswd: {{realm: client-tests, path: {htpasswd}}}\n")
    try:
        yield registry
    finally:
        registry.stop()


@pytest_twisted.async_yield_fixture(scope="module", params=KINDS)
async def token_setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Registry, TokenServer]]:
    workdir = tmp_path_factory.mktemp("token")
    server = TokenServer({USER: PASSWORD}, expires_in=300)
    port = reactor.listenTCP(0, Site(server), interface="127.0.0.1")
    bundle = server.write_bundle(workdir / "signer.pem")
    realm = f"http://127.0.0.1:{port.getHost().port}/token"
    registry = start_with_auth(
        request.param,
        workdir,
        f"  token: {{realm: '{realm}', service: {SERVICE}, issuer: {ISSUER}, rootcertbundle: {bundle}}}\n",
    )
    try:
        yield registry, server
    finally:
        registry.stop()
        await port.stopListening()


async def round_trip(client: RegistryClient, repo: str) -> None:
    data = b"authenticated blob " + repo.encode()
    digest = sha256_digest(data)
    await client.push_blob(repo, digest, BytesSource(data))
    assert await client.read_blob(repo, digest) == data


@pytest_twisted.ensureDeferred
async def test_basic_auth(basic_registry: Registry) -> None:
    anonymous = RegistryClient(basic_registry.host)
    wrong = RegistryClient(basic_registry.host, credentials=Credentials(USER, "nope"))
    right = RegistryClient(basic_registry.host, credentials=Credentials(USER, PASSWORD))
    try:
        with pytest.raises(Unauthorized, match="no credentials given"):
            await anonymous.ping()
        with pytest.raises(Unauthorized, match="refused the credentials"):
            await wrong.ping()
        assert await right.ping() == "registry/2.0"
        await round_trip(right, "basic/repo")
        config = b"{}"
        await right.push_blob("basic/repo", sha256_digest(config), BytesSource(config))
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": str(sha256_digest(config)), "size": 2},
            "layers": [],
        }).encode()
        await right.put_manifest("basic/repo", "v1", manifest, "application/vnd.oci.image.manifest.v1+json")
        assert await right.tags("basic/repo") == ["v1"]
    finally:
        for c in (anonymous, wrong, right):
            await c.close()


@pytest_twisted.ensureDeferred
async def test_bearer_tokens_cached_per_scope_and_refreshed(token_setup: tuple[Registry, TokenServer]) -> None:
    registry, server = token_setup
    client = RegistryClient(registry.host, credentials=Credentials(USER, PASSWORD))
    try:
        server.issued.clear()
        await round_trip(client, "token/one")
        # push scope and pull scope: one token each, then reused
        first = len(server.issued)
        assert first == 2
        assert ["repository:token/one:pull,push"] in server.issued
        await round_trip(client, "token/one")
        assert len(server.issued) == first
        # another repository needs its own tokens
        await round_trip(client, "token/two")
        assert len(server.issued) == first + 2
        # parallel blob pushes that all meet a 401 share one token per scope
        layout = write_oci_layout(
            Path(tempfile.mkdtemp(dir=registry.storage.parent)),
            [make_image("tokens", layers=4, layer_size=4096)], "t",
        )
        before = len(server.issued)
        await push_image(client, OCILayout(layout.path), "t", "token/parallel", "t", concurrency=5)
        assert sorted(map(tuple, server.issued[before:])) == [
            ("repository:token/parallel:pull",), ("repository:token/parallel:pull,push",)
        ]
        # near expiry a token is fetched anew (expires_in 6 s, 5 s margin)
        server.expires_in = 6
        client.session.tokens._tokens.clear()
        await client.blob_size("token/one", sha256_digest(b"x"))
        count = len(server.issued)
        await client.blob_size("token/one", sha256_digest(b"x"))
        assert len(server.issued) == count
        await client.session.sleep(1.2)
        await client.blob_size("token/one", sha256_digest(b"x"))
        assert len(server.issued) == count + 1
    finally:
        server.expires_in = 300
        await client.close()


@pytest_twisted.ensureDeferred
async def test_token_server_refusal_is_an_authentication_error(token_setup: tuple[Registry, TokenServer]) -> None:
    registry, _ = token_setup
    client = RegistryClient(registry.host, credentials=Credentials(USER, "wrong"))
    try:
        with pytest.raises(AuthenticationError, match="refused user 'alice'"):
            await client.tags("token/one")
    finally:
        await client.close()


@pytest_twisted.ensureDeferred
async def test_cli_authfile_and_creds(basic_registry: Registry, tmp_path: Path) -> None:
    authfile = tmp_path / "config.json"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {basic_registry.host: {"auth": token}}}))
    ref = f"docker://{basic_registry.host}/basic/repo"
    ok = await cli("tags", "--authfile", str(authfile), ref)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["Repository"] == f"{basic_registry.host}/basic/repo"
    ok = await cli("tags", "--creds", f"{USER}:{PASSWORD}", ref)
    assert ok.returncode == 0, ok.stderr
    refused = await cli("tags", "--creds", f"{USER}:bad", ref)
    assert refused.returncode == 1
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert "refused the credentials" in refused.stderr


@pytest_twisted.ensureDeferred
async def test_cli_copy_skopeo_spelling(basic_registry: Registry, tmp_path: Path) -> None:
    """``registry-client copy --creds U:P --tls-verify=false SRC DST``, as the
    issue spells it: options after the subcommand; an http registry with
    ``--tls-verify=false`` (https tried unverified, then http)."""
    image = make_image("skopeo-spelling", layers=1, layer_size=8 * 1024)
    layout = write_oci_layout(tmp_path / "src", [image], "v1")
    target = f"docker://{basic_registry.host}/spelling/repo:v1"
    pushed = await cli("copy", "--creds", f"{USER}:{PASSWORD}", "--tls-verify=false", f"oci:{layout.path}:v1", target)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == layout.digest
    pulled = await cli("copy", f"--creds={USER}:{PASSWORD}", "--tls-verify=false", target, f"oci:{tmp_path / 'dst'}:v1")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads((tmp_path / "dst" / "index.json").read_text())["manifests"][0]["digest"] == layout.digest
    empty = tmp_path / "empty-auth.json"
    empty.write_text("{}")  # not the tester's ~/.docker/config.json
    anonymous = await cli("copy", "--authfile", str(empty), "--tls-verify=false", target, f"oci:{tmp_path / 'anon'}:v1")
    assert anonymous.returncode == 1 and anonymous.stderr.count("\n") == 1
    assert "no credentials given" in anonymous.stderr
