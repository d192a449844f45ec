"""S3 benchmark: our registry on a throwaway Ceph RGW next to plain S3 on
the same gateway, and next to CNCF Distribution on it, in one run.

Every transfer is made ``--rounds`` times (default 3) with plain, ours and
Distribution interleaved, so a slower minute of the machine weighs on both
sides of a ratio; the figures are medians (the range is printed too). Each
upload is of new bytes (the buffer's first 8 bytes change), and the uploaded
blob is deleted from the bucket afterwards (the gateway keeps objects in
memory). Downloads, a third of a second each, are made ``--download-repeats``
times per round (default 5), plain and ours alternating. MB = 2**20 bytes.

* plain S3: a multipart PUT of N MiB (``--mib``, default 256) in 10 MiB parts
  (the driver's default ``chunksize``) with 3 parts in flight (its default
  ``uploadconcurrency``): the reference of every upload, the same requests
  the driver makes; the same in 8 MiB parts one at a time (what a client
  that sends 8 MiB PATCHes one after another could get from S3 itself); and
  a GET. Each request is a SigV4-presigned URL (botocore signs; the payload
  is not signed, ``UNSIGNED-PAYLOAD``); the bytes go over raw sockets from
  memory, the GET through curl;
* ours (``twistd registry`` with ``storage: s3``, ``signpayload: false`` as
  the reference): the bytes uploaded monolithically (POST ``?digest=``), in
  one PATCH of unknown length (chunked transfer encoding: what docker and
  containerd send), and in 8 MiB PATCH chunks; downloaded through the 307
  redirect to the presigned URL (``curl -L``); ratios against the plain PUT
  with 3 parts in flight (target >= 0.8x) and GET (target >= 0.95x); and
  monolithically with the default ``signpayload: auto``, which over this
  plain-http gateway signs every part's SHA-256;
* Distribution 2.8.2 (``docker-registry``, when installed) with the same
  ``storage.s3`` keys: the same uploads (monolithic as POST then PUT, the
  one it has) and the download, for comparison;
* manifest GET requests/s (wrk, 32 connections, 5 s) with
  ``storage.cache.blobdescriptor: redis`` (a private redis-server) and without;
* for every upload, figures load does not distort: the S3 requests it made
  (``beast:`` access lines in the gateway's log), the CPU seconds of the
  registry's processes and of the gateway's (radosgw + osd), from ``/proc``.

``--pin`` puts the gateway's processes on one CPU and the registry's and the
clients' on another: on a small machine the registry's own work (hashing each
byte, receiving and sending it again) otherwise comes out of the gateway's
CPU time, which a deployment with S3 elsewhere does not have.

The gateway comes from the tests' fixture (``tests/storage/rgw.py``), so run
from the repository root (``make bench`` does). Needs Ceph (ceph-mon,
ceph-osd, radosgw), curl, wrk and redis-server; a missing one skips the
section with the reason.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from registry.bench.servers import (
    Target, curl, finish_upload, free_port, process_cpu_seconds, push_chunked, push_streamed, raw_http, start_upload,
)
from registry.bench.servers import start as start_registry

MIB = 1 << 20
PART = 10 * MIB
CONCURRENCY = 3  # the driver's default uploadconcurrency
CHUNK = 8 * MIB
DOCKER_LAYERS = 5
DOCKER_LAYER_MIB = 45
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
_WRK_RATE = re.compile(r"Requests/sec:\s+([\d.]+)")
_WRK_NON2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")


class _Presigner:
    """SigV4 query-string presigned URLs on the gateway (botocore signs)."""

    def __init__(self, endpoint: str, access: str, secret: str, region: str) -> None:
        from botocore.auth import S3SigV4QueryAuth
        from botocore.credentials import Credentials

        self.endpoint = endpoint
        self._auth: Callable[[], Any] = lambda: S3SigV4QueryAuth(Credentials(access, secret), "s3", region, expires=3600)

    def url(self, method: str, path: str) -> str:
        from botocore.awsrequest import AWSRequest

        request = AWSRequest(method=method, url=self.endpoint + path)
        self._auth().add_auth(request)
        return str(request.url)


def _request_target(url: str) -> tuple[str, int, str]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80, parts.path + ("?" + parts.query if parts.query else "")


def _plain_multipart_put(signer: _Presigner, key: str, view: memoryview, concurrency: int = 1, part_size: int = PART) -> None:
    host, port, target = _request_target(signer.url("POST", key + "?uploads"))
    status, _, body = raw_http(host, port, f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 200, (status, body[:300])
    upload_id = next(e.text for e in ET.fromstring(body).iter() if e.tag.endswith("UploadId"))

    def put_part(number: int) -> str:
        start = (number - 1) * part_size
        part = view[start : start + part_size]
        host, port, target = _request_target(signer.url("PUT", f"{key}?partNumber={number}&uploadId={upload_id}"))
        status, headers, body = raw_http(
            host, port, f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(part)}\r\n\r\n".encode(), part
        )
        part.release()
        assert status == 200, (status, body[:300])
        return headers["etag"]

    numbers = range(1, (len(view) + part_size - 1) // part_size + 1)
    with ThreadPoolExecutor(concurrency) as pool:  # raw_http blocks in sendall/recv, the GIL released
        etags = list(pool.map(put_part, numbers))
    complete = "<CompleteMultipartUpload>" + "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in enumerate(etags, 1)
    ) + "</CompleteMultipartUpload>"
    host, port, target = _request_target(signer.url("POST", f"{key}?uploadId={upload_id}"))
    status, _, body = raw_http(
        host, port,
        f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(complete)}\r\n\r\n".encode(),
        complete.encode(),
    )
    assert status == 200 and b"Error" not in body, (status, body[:300])


class _Meter:
    """What one upload cost: S3 requests (the gateway log's ``beast:``
    access lines), CPU seconds of the registry and of the gateway."""

    def __init__(self, gateway: Any, server: Target | None) -> None:
        self._gateway = gateway
        self._server = server
        self._start = self._read()

    def _read(self) -> tuple[int, float, float]:
        requests = 0
        try:
            with open(self._gateway.directory / "log" / "client.rgw.log", "rb") as f:
                requests = sum(1 for line in f if b" beast: " in line and b'"' in line)
        except OSError:
            pass
        gateway_cpu = sum(process_cpu_seconds(p.pid) or 0.0 for n, p in self._gateway.processes.items() if n in ("radosgw", "osd"))
        return requests, self._server.cpu_seconds() if self._server is not None else 0.0, gateway_cpu

    def record(self) -> dict[str, float]:
        """What the upload cost since the meter was made: ``s3_requests``,
        ``registry_cpu_s``, ``gateway_cpu_s``."""
        time.sleep(0.2)  # the gateway writes its access line after answering
        end = self._read()
        return {
            "s3_requests": end[0] - self._start[0],
            "registry_cpu_s": round(end[1] - self._start[1], 3),
            "gateway_cpu_s": round(end[2] - self._start[2], 3),
        }


def _config(workdir: Path, port: int, s3: dict[str, object], redis_addr: str | None) -> Path:
    storage: dict[str, object] = {"s3": s3, "delete": {"enabled": True}}
    doc: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "storage": storage,
    }
    if redis_addr is not None:
        storage["cache"] = {"blobdescriptor": "redis"}
        doc["redis"] = {"addr": redis_addr}
    config = workdir / "config.yml"
    config.write_text(json.dumps(doc))  # JSON is YAML
    return config


def _ours_argv(s3: Callable[[], dict[str, object]], redis_addr: str | None = None) -> Callable[[Path, int], list[str]]:
    """The command line of ours over ``s3()`` (called per start)."""
    def argv(directory: Path, port: int) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [str(twistd) if twistd.exists() else "twistd", "-n", "--pidfile=", "registry",
                "--config", str(_config(directory, port, s3(), redis_addr))]

    return argv


def _distribution_argv(s3: Callable[[], dict[str, object]]) -> Callable[[Path, int], list[str]]:
    """The command line of CNCF Distribution (Debian's ``docker-registry``)
    over ``s3()``, the same ``storage.s3`` keys (it ignores those it lacks).
    Its AWS SDK panics when AWS_CA_BUNDLE is set (as on some machines) and
    its transport is not the default one, even over plain http: unset."""
    def argv(directory: Path, port: int) -> list[str]:
        return ["env", "-u", "AWS_CA_BUNDLE", "docker-registry", "serve", str(_config(directory, port, s3(), None))]

    return argv


def _ours(workdir: Path, s3: dict[str, object], redis_addr: str | None = None) -> Target:
    return start_registry("registry-on-s3", _ours_argv(lambda: s3, redis_addr), workdir)


def _distribution(workdir: Path, s3: dict[str, object]) -> Target:
    return start_registry("distribution-on-s3", _distribution_argv(lambda: s3), workdir)


def _docker_rounds(gateway: Any, pairs: int, layer_mib: int, figures: dict[str, Any]) -> None:
    """``docker push`` then ``docker pull`` of a 5-layer image (``layer_mib``
    MiB of random bytes a layer) through ours and Distribution on the gateway, each
    round a fresh registry over a fresh root directory (so every layer is
    uploaded), in ``pairs`` A B / B A pairs (``registry.bench.dockerpush``)."""
    from registry.bench import dockerpush
    from registry.bench.daemons import MissingTool as NoDocker

    def fresh_root() -> dict[str, object]:
        return dict(gateway.params(rootdirectory=f"bench-docker-{uuid.uuid4().hex[:12]}"))

    argv_for = {"ours": _ours_argv(fresh_root), "distribution": _distribution_argv(fresh_root)}
    order = (["ours", "distribution", "distribution", "ours"] * pairs)[: 2 * pairs]
    try:
        rounds = dockerpush.run_rounds(order, argv_for, DOCKER_LAYERS, layer_mib, lambda r: print(
            f"s3: docker round {r.label:12s} push {r.push_seconds:6.2f} s (registry CPU {r.push_cpu:5.2f} s)"
            f"  pull {r.pull_seconds:6.2f} s (registry CPU {r.pull_cpu:5.2f} s)", flush=True))
    except NoDocker as e:
        print(f"s3: docker push/pull skipped: {e}")
        figures["docker_skipped"] = str(e)
        return
    for label in ("ours", "distribution"):
        mine = [r for r in rounds if r.label == label]
        figures[f"docker_push_s_{label}"] = statistics.median([r.push_seconds for r in mine])
        figures[f"docker_pull_s_{label}"] = statistics.median([r.pull_seconds for r in mine])
        figures[f"docker_push_cpu_s_{label}"] = statistics.median([r.push_cpu for r in mine])
        figures[f"docker_pull_cpu_s_{label}"] = statistics.median([r.pull_cpu for r in mine])


def _redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir), "--loglevel", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("redis-server did not start listening within 10 s")
            time.sleep(0.05)


def _post_blob(port: int, name: str, body: memoryview | bytes, digest: str) -> None:
    """A monolithic upload as one request: POST ``?digest=`` with the bytes."""
    status, _, _ = raw_http("127.0.0.1", port, (
        f"POST /v2/{name}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(body)}\r\n\r\n").encode(), body)
    assert status == 201, status


def _push_manifest(server: Target, repo: str) -> tuple[str, str]:
    """A small image (config + one layer) and its manifest tagged ``v1``;
    returns the manifest's paths by tag and by digest."""
    blobs = []
    for content in (b'{"architecture":"amd64","os":"linux"}', os.urandom(4096)):
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        _post_blob(server.port, repo, content, digest)
        blobs.append((digest, len(content)))
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": blobs[0][0], "size": blobs[0][1]},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": blobs[1][0], "size": blobs[1][1]}],
    }).encode()
    status, _, _ = raw_http("127.0.0.1", server.port, (
        f"PUT /v2/{repo}/manifests/v1 HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\n"
        f"Content-Length: {len(manifest)}\r\n\r\n").encode(), manifest)
    assert status == 201, status
    return f"/v2/{repo}/manifests/v1", f"/v2/{repo}/manifests/sha256:{hashlib.sha256(manifest).hexdigest()}"


def _wrk(url: str, workdir: Path) -> float:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", "-d5s", "-H", f"Accept: {OCI_MANIFEST}", url],
        capture_output=True, text=True, check=True, cwd=workdir,
    ).stdout
    rate = _WRK_RATE.search(out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    bad = _WRK_NON2XX.search(out)
    if bad is not None:
        raise RuntimeError(f"wrk saw {bad.group(1)} non-2xx answers:\n{out}")
    return float(rate.group(1))


def _options(args: argparse.Namespace) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m registry.bench s3", add_help=False)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of every transfer, plain and ours interleaved (figures are medians)")
    parser.add_argument("--pin", action="store_true",
                        help="run the gateway (radosgw, OSD, monitor) on CPU 0 and the registry and the clients on "
                             "CPU 1: S3 on a machine of its own, as in a deployment, instead of the two sharing CPUs")
    parser.add_argument("--download-repeats", type=int, default=5,
                        help="downloads of each kind per round (they are short: more samples for their medians)")
    parser.add_argument("--docker-pairs", type=int, default=1,
                        help="pairs of docker push+pull rounds, ours and Distribution (0: none)")
    parser.add_argument("--docker-layer-mib", type=int, default=DOCKER_LAYER_MIB,
                        help=f"MiB of each of the image's {DOCKER_LAYERS} layers (default {DOCKER_LAYER_MIB})")
    known, _ = parser.parse_known_args(getattr(args, "extra", None) or [])
    if known.rounds < 1:
        raise SystemExit("s3: --rounds must be at least 1")
    if known.download_repeats < 1:
        raise SystemExit("s3: --download-repeats must be at least 1")
    return known


#: (figure, label, reference figure, target ratio) of every transfer through the registry.
RATIOS = (
    ("upload_monolithic", "upload, monolithic POST", "plain_multipart_put", 0.8),
    ("upload_streamed", "upload, one streamed PATCH (as docker)", "plain_multipart_put", 0.8),
    ("upload_chunked_8mib", "upload, 8 MiB PATCH chunks", "plain_multipart_put", 0.8),
    ("upload_monolithic_signed", "upload, monolithic, payload signed", "plain_multipart_put", 0.8),
    ("download_redirect", "download via 307 redirect", "plain_get", 0.95),
)
#: The same transfers through Distribution on the same gateway (no target: for comparison).
DISTRIBUTION = (
    ("distribution_upload_monolithic", "upload, monolithic (POST, PUT)", "plain_multipart_put"),
    ("distribution_upload_streamed", "upload, one streamed PATCH (as docker)", "plain_multipart_put"),
    ("distribution_upload_chunked_8mib", "upload, 8 MiB PATCH chunks", "plain_multipart_put"),
    ("distribution_download_redirect", "download via 307 redirect", "plain_get"),
)


def _pin(pids: "list[int]", cpu: int) -> None:
    """Every thread of ``pids`` onto CPU ``cpu`` (threads made later inherit it)."""
    for pid in pids:
        subprocess.run(["taskset", "-a", "-p", "-c", str(cpu), str(pid)], check=True, stdout=subprocess.DEVNULL)


def run(args: argparse.Namespace) -> dict[str, Any]:
    size_mib = getattr(args, "mib", None) or 256
    options = _options(args)
    rounds = options.rounds
    if options.pin and (len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None):
        print("s3: --pin needs two CPUs and taskset; skipped")
        return {"skipped": "--pin needs two CPUs and taskset"}
    missing = [c for c in ("ceph-mon", "ceph-osd", "radosgw", "curl", "wrk", "redis-server") if shutil.which(c) is None]
    if missing:
        print(f"s3: {', '.join(missing)} not installed (scripts/install-system-deps.sh installs them); skipped")
        return {"skipped": f"not installed: {', '.join(missing)}"}
    try:
        from tests.clients.harness import MissingTool
        from tests.storage.rgw import RGWStartupFailed, start_rgw
    except ImportError as e:
        print(f"s3: cannot import the RGW fixture (run from the repository root): {e}; skipped")
        return {"skipped": f"tests.storage.rgw not importable: {e}"}
    try:
        gateway = start_rgw()
    except MissingTool as e:
        print(f"s3: {e}; skipped")
        return {"skipped": str(e)}
    except RGWStartupFailed as e:
        print(f"s3: Ceph RGW did not start: {e}; skipped")
        return {"skipped": f"RGW did not start: {e}"}
    figures: dict[str, Any] = {"size_mib": size_mib, "rounds": rounds, "pinned": options.pin, "rgw_startup_s": gateway.startup_seconds}
    affinity = os.sched_getaffinity(0)
    if options.pin:
        cpus = sorted(affinity)
        _pin([p.pid for p in gateway.processes.values()], cpus[0])
        os.sched_setaffinity(0, {cpus[1]})
    samples: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="registry-bench-s3-") as tmp:
            work = Path(tmp)
            signer = _Presigner(gateway.endpoint, gateway.access_key, gateway.secret_key, gateway.region)
            plain_key = f"/{gateway.bucket}/plain/{uuid.uuid4().hex}"
            # One buffer; every upload first changes its first 8 bytes, so each
            # is a new blob (no upload finds its blob already there).
            data = bytearray(os.urandom(size_mib * MIB))
            view = memoryview(data)
            serial = iter(range(1, 1 << 62))

            def fresh() -> str:
                data[:8] = next(serial).to_bytes(8, "big")
                return "sha256:" + hashlib.sha256(view).hexdigest()

            def timed(figure: str, transfer: Callable[[], object], server: Target | None = None) -> None:
                meter = _Meter(gateway, server) if "upload" in figure or figure.startswith("plain_multipart_put") else None
                t = time.perf_counter()
                transfer()
                samples.setdefault(figure, []).append(size_mib / (time.perf_counter() - t))
                if meter is not None:
                    for what, value in meter.record().items():
                        samples.setdefault(f"{figure}_{what}", []).append(value)

            def forget(server: Target, digest: str) -> None:
                """Delete an uploaded blob's bytes from the bucket behind the
                registry's back: the gateway (memstore) holds a few GiB."""
                hexpart = digest.split(":", 1)[1]
                root = server.workdir.name
                key = f"/{gateway.bucket}/{roots[root]}/docker/registry/v2/blobs/sha256/{hexpart[:2]}/{hexpart}/data"
                host, port, target = _request_target(signer.url("DELETE", key))
                status, _, body = raw_http(host, port, f"DELETE {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
                assert status == 204, (status, body[:300])

            def manifest_gets(target: Target, cache: str) -> None:
                by_tag, by_digest = _push_manifest(target, "bench/manifest")
                figures[f"manifest_get_rps_{cache}"] = _wrk(target.url + by_tag, work)
                figures[f"manifest_get_digest_rps_{cache}"] = _wrk(target.url + by_digest, work)

            roots = {name: f"bench-{uuid.uuid4().hex[:12]}" for name in ("server", "server-signed", "distribution")}
            started: list[Target] = []  # stopped at the end, whatever fails
            try:
                server = _ours(work / "server", gateway.params(rootdirectory=roots["server"], signpayload=False))
                started.append(server)
                signed = _ours(work / "server-signed", gateway.params(rootdirectory=roots["server-signed"]))
                started.append(signed)
                distribution: Target | None = None
                if shutil.which("docker-registry") is not None:
                    distribution = _distribution(work / "distribution", gateway.params(rootdirectory=roots["distribution"]))
                    started.append(distribution)
                else:
                    print("s3: docker-registry (Distribution) not installed: its figures are left out")
                if options.pin:
                    _pin([pid for running in started for pid in running.processes()], cpus[1])
                # The blob the downloads fetch, and the plain object: once.
                get_digest = fresh()
                _post_blob(server.port, "bench/get", view, get_digest)
                _plain_multipart_put(signer, plain_key + "-get", view, CONCURRENCY)
                status, _, _ = raw_http("127.0.0.1", server.port, f"GET /v2/bench/get/blobs/{get_digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if status != 307:
                    raise RuntimeError(f"blob GET answered {status}, not a 307 redirect to the gateway")

                def post_then_put(target: Target, name: str, digest: str) -> None:
                    """The monolithic upload Distribution 2.8 has: POST, then one PUT ``?digest=`` with the bytes
                    (it answers a POST ``?digest=`` with a body by starting an empty upload)."""
                    finish_upload(target.port, start_upload(target.port, name), digest, view)

                if distribution is not None:
                    post_then_put(distribution, "bench/get", get_digest)
                failed: dict[str, str] = {}

                def measure_distribution(figure: str, step: Callable[[], None]) -> None:
                    """Distribution's figure, or why it has none (it fails some of these on S3)."""
                    if figure in failed:
                        return
                    try:
                        step()
                    except Exception as e:
                        failed[figure] = repr(e)[:300]
                        figures[figure + "_failed"] = failed[figure]

                def monolithic(target: Target, digest: str) -> None:
                    _post_blob(target.port, "bench/mono", view, digest)

                Step = tuple[str, Callable[[], None]]  # a figure and what measures it once

                def plain_put(figure: str, key: str, concurrency: int, part_size: int) -> Step:
                    def step() -> None:
                        fresh()
                        timed(figure, lambda: _plain_multipart_put(signer, key, view, concurrency, part_size))
                    return figure, step

                def upload(figure: str, target: Target, send: Callable[[Target, str], object]) -> Step:
                    def step() -> None:
                        digest = fresh()
                        timed(figure, lambda: send(target, digest), target)
                        forget(target, digest)
                    return figure, step

                def download(*pairs: tuple[str, str]) -> Step:
                    """Downloads take a third of a second: ``--download-repeats``
                    of each per round, the figures alternating, so the
                    medians are not two single noisy samples."""
                    def step() -> None:
                        for i in range(options.download_repeats):
                            for figure, url in pairs if i % 2 == 0 else pairs[::-1]:
                                timed(figure, lambda: curl("-L", url))
                    return pairs[0][0], step

                steps = [
                    plain_put("plain_multipart_put", plain_key, CONCURRENCY, PART),
                    upload("upload_monolithic", server, monolithic),
                    upload("upload_streamed", server, lambda t, d: push_streamed(t.port, "bench/streamed", view, d)),
                    plain_put("plain_multipart_put_8mib_sequential", plain_key + "-8", 1, CHUNK),
                    upload("upload_chunked_8mib", server, lambda t, d: push_chunked(t.port, "bench/chunked", view, d, CHUNK)),
                    upload("upload_monolithic_signed", signed, monolithic),
                    download(("plain_get", signer.url("GET", plain_key + "-get")),
                             ("download_redirect", f"{server.url}/v2/bench/get/blobs/{get_digest}")),
                ]
                if distribution is not None:
                    dist = distribution
                    for figure, step in (
                        upload("distribution_upload_monolithic", dist, lambda t, d: post_then_put(t, "bench/mono", d)),
                        upload("distribution_upload_streamed", dist, lambda t, d: push_streamed(t.port, "bench/streamed", view, d)),
                        upload("distribution_upload_chunked_8mib", dist,
                               lambda t, d: push_chunked(t.port, "bench/chunked", view, d, CHUNK)),
                        download(("distribution_download_redirect", f"{dist.url}/v2/bench/get/blobs/{get_digest}")),
                    ):
                        steps.append((figure, functools.partial(measure_distribution, figure, step)))
                for n in range(rounds):
                    # Plain, ours and Distribution alternate, forwards then
                    # backwards, so a slower minute of the machine weighs on
                    # both sides of a ratio alike. The gateway's garbage
                    # collection (of what the last transfer deleted or
                    # replaced) runs between transfers, not during the next.
                    for _, step in steps if n % 2 == 0 else steps[::-1]:
                        step()
                        gateway.admin("gc", "process", "--include-all")
                manifest_gets(server, "no_cache")
            finally:
                for running in started:
                    running.stop()

            if options.docker_pairs > 0:
                _docker_rounds(gateway, options.docker_pairs, options.docker_layer_mib, figures)
                figures["docker_layer_mib"] = options.docker_layer_mib

            redis_proc, redis_addr = _redis(work)
            try:
                server = _ours(work / "server-redis", gateway.params(rootdirectory=f"bench-{uuid.uuid4().hex[:12]}"), redis_addr)
                try:
                    manifest_gets(server, "redis_cache")
                finally:
                    server.stop()
            finally:
                redis_proc.terminate()
                redis_proc.wait(10)
    finally:
        gateway.stop()
        os.sched_setaffinity(0, affinity)

    for figure, values in samples.items():
        key = figure if figure.endswith(("_s3_requests", "_cpu_s")) else figure + "_mbps"
        figures[key] = statistics.median(values)
        if not figure.endswith(("_s3_requests", "_cpu_s")):
            figures[figure + "_mbps_all"] = [round(v, 1) for v in values]

    def line(label: str, figure: str) -> str:
        values = samples[figure]
        return f"s3: {label:46s} {figures[figure + '_mbps']:6.0f} MB/s  ({min(values):.0f}-{max(values):.0f})"

    print(f"s3: {size_mib} MiB per transfer, {rounds} rounds, plain and ours interleaved; median (range) MB/s"
          + ("; gateway on one CPU, registry and clients on the other" if options.pin else ""))
    print(line(f"plain multipart PUT (10 MiB parts, {CONCURRENCY} in flight)", "plain_multipart_put"))
    print(line("plain multipart PUT (8 MiB parts, one at a time)", "plain_multipart_put_8mib_sequential"))
    print(line("plain GET", "plain_get"))
    for figure, label, reference, goal in RATIOS:
        ratio = figures[figure + "_mbps"] / figures[reference + "_mbps"]
        figures[figure + "_ratio"] = ratio
        print(f"{line('ours ' + label, figure)}  {ratio:5.2f}x plain (target >= {goal}x)")
    for figure, label, reference in DISTRIBUTION:
        if figure in samples:
            ratio = figures[figure + "_mbps"] / figures[reference + "_mbps"]
            figures[figure + "_ratio"] = ratio
            print(f"{line('Distribution ' + label, figure)}  {ratio:5.2f}x plain")
        elif figure + "_failed" in figures:
            print(f"s3: Distribution {label}: failed: {figures[figure + '_failed']}")
    chunked = figures["upload_chunked_8mib_mbps"] / figures["plain_multipart_put_8mib_sequential_mbps"]
    figures["upload_chunked_8mib_vs_sequential_ratio"] = chunked
    print(f"s3:   8 MiB PATCH chunks against plain 8 MiB parts one at a time (the client's own pattern): {chunked:5.2f}x")
    print("s3: per upload (median): S3 requests, registry CPU s, gateway (radosgw+osd) CPU s")
    for label in ("plain_multipart_put", "plain_multipart_put_8mib_sequential", "upload_monolithic", "upload_streamed",
                  "upload_chunked_8mib", "upload_monolithic_signed", "distribution_upload_monolithic",
                  "distribution_upload_streamed", "distribution_upload_chunked_8mib"):
        if label + "_s3_requests" not in figures:
            continue
        print(f"s3:   {label:36s} {figures[label + '_s3_requests']:6.0f} {figures[label + '_registry_cpu_s']:8.2f} "
              f"{figures[label + '_gateway_cpu_s']:8.2f}")
    if "docker_push_s_ours" in figures:
        what = f"{DOCKER_LAYERS}-layer {DOCKER_LAYERS * figures['docker_layer_mib']} MiB image"
        for verb in ("push", "pull"):
            ours, theirs = figures[f"docker_{verb}_s_ours"], figures[f"docker_{verb}_s_distribution"]
            figures[f"docker_{verb}_speed_ratio"] = theirs / ours
            print(f"s3: docker {verb} of a {what}: ours {ours:6.2f} s (CPU {figures[f'docker_{verb}_cpu_s_ours']:5.2f} s), "
                  f"Distribution {theirs:6.2f} s (CPU {figures[f'docker_{verb}_cpu_s_distribution']:5.2f} s): "
                  f"{theirs / ours:4.2f}x as fast")
    print("s3: manifest GET req/s (wrk, 32 connections, 5 s)     by tag  by digest")
    for cache, label in (("no_cache", "no cache"), ("redis_cache", "blobdescriptor cache: redis")):
        print(f"s3:   {label:46s} {figures[f'manifest_get_rps_{cache}']:8.0f} {figures[f'manifest_get_digest_rps_{cache}']:8.0f}")
    return figures
