"""Many instances: three ``twistd registry`` processes on one filesystem
storage, sharing Redis (upload locks, blob-descriptor cache), behind nginx
(round robin, no stickiness), configured here.

No ``http.secret`` is configured: an upload's state (its data, hash states
and start time) lives in the shared storage and the ``Location`` names the
upload by repository and id, so any request of an upload may go to any
instance; nothing is signed or kept in an instance's memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

from tests.redis.cluster import Balancer, Instance, kill_instance, path_of, request, running_cluster, upload
from tests.redis.server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(params=["filesystem", "s3"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[list[Instance], Balancer, RedisServer]]:
    """Three instances on one storage: a filesystem directory, or a bucket
    of a throwaway Ceph RGW (skipped without Ceph)."""
    with running_cluster(tmp_path, request.param) as parts:
        yield parts


def push_image(port: int, name: str, seed: int) -> str:
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    layer = os.urandom(64 * 1024 + seed)
    config_digest = upload(port, name, config)
    layer_digest = upload(port, name, layer, chunk=20000)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": len(layer)}],
        }
    ).encode()
    status, _, body = request(port, "PUT", f"/v2/{name}/manifests/v{seed}", manifest, {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201, body
    # Pull it back through the balancer (any instance), blobs verified.
    status, _, got = request(port, "GET", f"/v2/{name}/manifests/v{seed}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 200 and got == manifest
    for d, want in ((config_digest, config), (layer_digest, layer)):
        status, _, got = request(port, "GET", f"/v2/{name}/blobs/{d}")
        assert status == 200 and got == want
    return layer_digest


def test_concurrent_pushes_and_a_chunked_upload_across_instances(cluster: tuple[list[Instance], Balancer, RedisServer]) -> None:
    instances, balancer, _ = cluster
    with ThreadPoolExecutor(20) as pool:
        layers = list(pool.map(lambda i: push_image(balancer.port, f"team{i % 4}/app{i}", i), range(20)))
    assert len(set(layers)) == 20
    served = set(balancer.served("PATCH", "/blobs/uploads/"))
    assert served == {inst.upstream for inst in instances}

    # One chunked upload, its PATCHes sent one after another: round robin
    # puts consecutive requests on different instances.
    data = os.urandom(9 * 100_000 + 7)
    digest = upload(balancer.port, "chunked/one", data, chunk=100_000)
    status, _, got = request(balancer.port, "GET", f"/v2/chunked/one/blobs/{digest}")
    assert status == 200 and hashlib.sha256(got).hexdigest() == digest.split(":")[1]
    status, _, _ = request(balancer.port, "HEAD", f"/v2/chunked/one/blobs/{digest}")
    assert status == 200
    patch_upstreams = balancer.served("PATCH", "/v2/chunked/one/blobs/uploads/")
    assert len(patch_upstreams) == 10 and len(set(patch_upstreams)) == 3
    assert all(patch_upstreams[i] != patch_upstreams[i + 1] for i in range(9))


def test_instance_killed_mid_upload_client_resumes_through_the_others(cluster: tuple[list[Instance], Balancer, RedisServer]) -> None:
    instances, balancer, redis = cluster
    data = os.urandom(8 * 1024 * 1024 + 123)
    step = 1024 * 1024
    name = "big/upload"
    status, headers, body = request(balancer.port, "POST", f"/v2/{name}/blobs/uploads/")
    assert status == 202, body
    location = path_of(headers["location"])
    offset = 0
    for _ in range(3):
        part = data[offset : offset + step]
        status, headers, body = request(balancer.port, "PATCH", location, part, {"Content-Range": f"{offset}-{offset + len(part) - 1}"})
        assert status == 202, body
        location = path_of(headers["location"])
        offset += len(part)

    # The next PATCH goes to the victim; it has the upload's lock and half
    # the body when it is SIGKILLed.
    victim = instances[1]
    sock = socket.create_connection(("127.0.0.1", victim.port), timeout=30)
    part = data[offset : offset + 2 * step]
    sock.sendall(
        (
            f"PATCH {location} HTTP/1.1\r\nHost: 127.0.0.1:{victim.port}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(part)}\r\n"
            f"Content-Range: {offset}-{offset + len(part) - 1}\r\n\r\n"
        ).encode()
        + part[: len(part) // 2]
    )
    time.sleep(1.0)
    # The victim holds the upload's shared lock right now.
    upload_id = location.split("?")[0].rsplit("/", 1)[1]
    key = f"registry:upload-lock:{name}:{upload_id}"
    pttl = subprocess.run(["redis-cli", "-p", str(redis.port), "PTTL", key], capture_output=True, text=True, check=True)
    assert 0 < int(pttl.stdout.strip()) <= 5000, pttl.stdout
    kill_instance(victim)
    sock.close()

    # The client asks where the upload stands (any instance; the victim's
    # lock lasts one lease at most) and continues from the Range returned.
    started = time.monotonic()
    status, headers, body = request(balancer.port, "GET", location)
    assert status == 204, body
    waited = time.monotonic() - started
    assert waited < 8, f"the dead instance's lock blocked the status for {waited:.1f}s"
    offset = int(headers["range"].split("-")[1]) + 1
    assert 3 * step <= offset <= 3 * step + step  # some of the half-sent body may have been kept
    location = path_of(headers["location"])
    while offset < len(data):
        part = data[offset : offset + step]
        status, headers, body = request(balancer.port, "PATCH", location, part, {"Content-Range": f"{offset}-{offset + len(part) - 1}"})
        assert status == 202, body
        location = path_of(headers["location"])
        offset += len(part)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    sep = "&" if "?" in location else "?"
    status, _, body = request(balancer.port, "PUT", f"{location}{sep}digest={digest}")
    assert status == 201, body
    status, _, got = request(balancer.port, "GET", f"/v2/{name}/blobs/{digest}")
    assert status == 200 and got == data
    survivors = {instances[0].upstream, instances[2].upstream}
    after_kill = balancer.served("PATCH", f"/v2/{name}/blobs/uploads/")[3:]
    assert set(u.split(", ")[-1] for u in after_kill) <= survivors
