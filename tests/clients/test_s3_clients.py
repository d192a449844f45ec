"""Real clients against our registry on S3 (a throwaway Ceph RGW bucket).

The registry runs as ``twistd -n registry`` with ``storage: s3`` on the
session's RGW (tests/storage/rgw.py). Blob GETs answer 307 with a presigned
URL on the gateway (127.0.0.1), so docker and skopeo really follow the
redirect: a pull that gets the right image ID, and a ``skopeo copy --all``
out of the registry that gives back the same bytes, show they did.

Skipped without Ceph (or docker/skopeo); under ``CI=true`` a missing tool
fails instead, as everywhere in the client tests.
"""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import yaml

from tests.clients.harness import (
    DockerDaemon,
    ManagedProcess,
    Registry,
    Skopeo,
    free_port,
    http_request,
    make_image,
    twistd_path,
    wait_until,
)
from tests.clients.test_docker import push_new_image, rmi_and_pull_back
from tests.clients.test_skopeo import copy_index_in_and_out

pytestmark = pytest.mark.clients


def s3_config(port: int, s3: dict[str, object]) -> str:
    """A registry configuration with ``storage.s3`` (redirects on, the default)."""
    return yaml.safe_dump(
        {
            "version": 0.1,
            "log": {"level": "info"},
            "storage": {"s3": s3, "delete": {"enabled": True}},
            "http": {"addr": f"127.0.0.1:{port}", "secret": "registry-client-tests"},
        },
        sort_keys=False,
    )


@pytest.fixture(scope="module")
def s3_registry(clients_root: Path) -> Iterator[tuple[Registry, str]]:
    """Our registry on a fresh root directory of the session's RGW bucket;
    yields it and the gateway's endpoint."""
    from tests.storage.rgw import shared_gateway

    gateway = shared_gateway()  # skips without Ceph (fails under CI=true)
    workdir = clients_root / "s3-registry"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "config.yml"
    config.write_text(s3_config(port, gateway.params(rootdirectory=f"clients-{uuid.uuid4().hex[:12]}")))
    process = ManagedProcess(
        [twistd_path(), "-n", "--pidfile=", "registry", "--config", str(config)],
        workdir / "registry.log",
        cwd=workdir,
    )
    registry = Registry("ours", port, workdir, process)

    def answers() -> bool:
        try:
            return http_request(registry.url + "/v2/", timeout=2).status == 200
        except OSError:
            return False

    try:
        wait_until(answers, timeout=30, what="our registry on S3", process=process)
        yield registry, gateway.endpoint
    finally:
        process.stop()


def assert_blob_redirects_to_gateway(registry: Registry, repo: str, digest: str, endpoint: str) -> None:
    """``GET`` of the blob answers 307 to a presigned URL on the gateway."""
    connection = http.client.HTTPConnection("127.0.0.1", registry.port, timeout=10)
    try:
        connection.request("GET", f"/v2/{repo}/blobs/{digest}")
        response = connection.getresponse()
        response.read()
        location = response.getheader("Location", "")
    finally:
        connection.close()
    assert response.status == 307, (response.status, location)
    target, gateway = urlsplit(location), urlsplit(endpoint)
    assert (target.hostname, target.port) == (gateway.hostname, gateway.port), location
    assert "X-Amz-Signature=" in target.query, location


def test_docker_push_rmi_pull_on_s3(
    dockerd: DockerDaemon, s3_registry: tuple[Registry, str], repo: str, scratch: Path
) -> None:
    registry, endpoint = s3_registry
    image = make_image(repo, layers=4, layer_size=512 * 1024)
    digest, local, remote = push_new_image(dockerd, registry, repo, scratch, image)  # blob reads follow the redirect
    # docker recompresses the layers it pushes: take their digests from the manifest.
    pushed_layers = json.loads(registry.manifest(repo, digest).body)["layers"]
    for descriptor in pushed_layers:
        assert_blob_redirects_to_gateway(registry, repo, descriptor["digest"], endpoint)
    rmi_and_pull_back(dockerd, image, digest, local, remote)


def test_skopeo_copy_all_index_in_and_out_on_s3(
    skopeo: Skopeo, s3_registry: tuple[Registry, str], repo: str, scratch: Path
) -> None:
    registry, endpoint = s3_registry
    _, images = copy_index_in_and_out(skopeo, registry, repo, scratch, layer_size=256 * 1024)
    for image in images:
        assert_blob_redirects_to_gateway(registry, repo, image.config_digest, endpoint)
