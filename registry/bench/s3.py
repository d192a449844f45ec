"""S3 benchmark: our registry on a throwaway Ceph RGW next to plain S3 on
the same gateway, in one run.

* plain S3: a multipart PUT of N MiB (``--mib``, default 256) in 10 MiB parts
  (the driver's default ``chunksize``) with 3 parts in flight (its default
  ``uploadconcurrency``): the fair reference, the same requests the driver
  makes; the same one part at a time (the figure earlier runs reported);
  and a GET of it. Each request is a SigV4-presigned URL (botocore signs;
  the payload is not signed, ``UNSIGNED-PAYLOAD``; the bytes go over raw
  sockets from a memory map, the GET through curl);
* ours (``twistd registry`` with ``storage: s3`` on the same bucket, with
  ``signpayload: false`` as the reference): the same bytes uploaded
  monolithically (curl ``-T``) and in 8 MiB PATCH chunks, and downloaded
  through the 307 redirect to the presigned URL (``curl -L``); ratios
  against the plain PUT with 3 parts in flight (target >= 0.8x) and GET
  (target >= 0.95x); and once more monolithically with the default
  ``signpayload: auto``, which over this plain-http gateway signs every
  part's SHA-256 (the cost of that integrity check);
* manifest GET requests/s (wrk, 32 connections, 5 s) with
  ``storage.cache.blobdescriptor: redis`` (a private redis-server) and without;
* for every upload, figures load does not distort: the S3 requests it made
  (``beast:`` access lines in the gateway's log), the CPU seconds of the
  registry's processes and of the gateway's (radosgw + osd), from ``/proc``.

The gateway comes from the tests' fixture (``tests/storage/rgw.py``), so run
from the repository root (``make bench`` does). Needs Ceph (ceph-mon,
ceph-osd, radosgw), curl, wrk and redis-server; a missing one skips the
section with the reason. MB = 2**20 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import mmap
import os
import re
import shutil
import socket
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

from registry.bench.servers import Target, curl, free_port, process_cpu_seconds, push_chunked, raw_http
from registry.bench.servers import start as start_registry

MIB = 1 << 20
PART = 10 * MIB
CONCURRENCY = 3  # the driver's default uploadconcurrency
CHUNK = 8 * MIB
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


def _plain_multipart_put(signer: _Presigner, key: str, view: memoryview, concurrency: int = 1) -> None:
    host, port, target = _request_target(signer.url("POST", key + "?uploads"))
    status, _, body = raw_http(host, port, f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 200, (status, body[:300])
    upload_id = next(e.text for e in ET.fromstring(body).iter() if e.tag.endswith("UploadId"))

    def put_part(number: int) -> str:
        start = (number - 1) * PART
        part = view[start : start + PART]
        host, port, target = _request_target(signer.url("PUT", f"{key}?partNumber={number}&uploadId={upload_id}"))
        status, headers, body = raw_http(
            host, port, f"PUT {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {len(part)}\r\n\r\n".encode(), part
        )
        part.release()
        assert status == 200, (status, body[:300])
        return headers["etag"]

    numbers = range(1, (len(view) + PART - 1) // PART + 1)
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

    def record(self, figures: dict[str, Any], label: str) -> None:
        time.sleep(0.2)  # the gateway writes its access line after answering
        end = self._read()
        figures[f"{label}_s3_requests"] = end[0] - self._start[0]
        figures[f"{label}_registry_cpu_s"] = round(end[1] - self._start[1], 3)
        figures[f"{label}_gateway_cpu_s"] = round(end[2] - self._start[2], 3)


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


def _ours(workdir: Path, s3: dict[str, object], redis_addr: str | None = None) -> Target:
    def argv(directory: Path, port: int) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [str(twistd) if twistd.exists() else "twistd", "-n", "--pidfile=", "registry",
                "--config", str(_config(directory, port, s3, redis_addr))]

    return start_registry("registry-on-s3", argv, workdir)


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


def _push_manifest(server: Target, repo: str) -> str:
    """A small image (config + one layer) and its manifest; returns the manifest path."""
    blobs = []
    for content in (b'{"architecture":"amd64","os":"linux"}', os.urandom(4096)):
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        status, _, _ = raw_http("127.0.0.1", server.port, (
            f"POST /v2/{repo}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(content)}\r\n\r\n").encode(), content)
        assert status == 201, status
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
    return f"/v2/{repo}/manifests/v1"


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


def run(args: argparse.Namespace) -> dict[str, Any]:
    size_mib = getattr(args, "mib", None) or 256
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
    figures: dict[str, Any] = {"size_mib": size_mib, "rgw_startup_s": gateway.startup_seconds}
    try:
        with tempfile.TemporaryDirectory(prefix="registry-bench-s3-") as tmp:
            work = Path(tmp)
            src = work / "blob.bin"
            with open(src, "wb") as f:
                for _ in range(size_mib):
                    f.write(os.urandom(MIB))
            digest = "sha256:" + hashlib.file_digest(open(src, "rb"), "sha256").hexdigest()
            signer = _Presigner(gateway.endpoint, gateway.access_key, gateway.secret_key, gateway.region)
            key = f"/{gateway.bucket}/plain/{uuid.uuid4().hex}"

            with open(src, "rb") as src_file, mmap.mmap(src_file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                meter = _Meter(gateway, None)
                t = time.perf_counter()
                _plain_multipart_put(signer, key, view, CONCURRENCY)
                figures["plain_multipart_put_mbps"] = size_mib / (time.perf_counter() - t)
                meter.record(figures, "plain_multipart_put")
                t = time.perf_counter()
                _plain_multipart_put(signer, key + "-sequential", view)
                figures["plain_multipart_put_sequential_mbps"] = size_mib / (time.perf_counter() - t)
                view.release()
            t = time.perf_counter()
            curl(signer.url("GET", key))
            figures["plain_get_mbps"] = size_mib / (time.perf_counter() - t)

            def upload_monolithic(server: Target, figure: str) -> None:
                """POST ``src`` with its digest; ``figure``'s MB/s, requests and CPU."""
                meter = _Meter(gateway, server)
                t = time.perf_counter()
                curl("-X", "POST", "-T", str(src), "-H", "Content-Type: application/octet-stream",
                     f"{server.url}/v2/bench/mono/blobs/uploads?digest={digest}")
                figures[f"{figure}_mbps"] = size_mib / (time.perf_counter() - t)
                meter.record(figures, figure)

            s3 = gateway.params(rootdirectory=f"bench-{uuid.uuid4().hex[:12]}", signpayload=False)
            server = _ours(work / "server", s3)
            try:
                upload_monolithic(server, "upload_monolithic")

                with open(src, "rb") as src_file, mmap.mmap(src_file.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                    view = memoryview(mm)
                    meter = _Meter(gateway, server)
                    t = time.perf_counter()
                    push_chunked(server.port, "bench/chunked", view, digest, CHUNK)
                    figures["upload_chunked_8mib_mbps"] = size_mib / (time.perf_counter() - t)
                    meter.record(figures, "upload_chunked_8mib")
                    view.release()

                status, hdrs, _ = raw_http("127.0.0.1", server.port, f"GET /v2/bench/mono/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                if status != 307:
                    raise RuntimeError(f"blob GET answered {status}, not a 307 redirect to the gateway")
                t = time.perf_counter()
                curl("-L", f"{server.url}/v2/bench/mono/blobs/{digest}")
                figures["download_redirect_mbps"] = size_mib / (time.perf_counter() - t)
                figures["manifest_get_rps_no_cache"] = _wrk(server.url + _push_manifest(server, "bench/manifest"), work)
            finally:
                server.stop()

            server = _ours(work / "server-signed", gateway.params(rootdirectory=f"bench-{uuid.uuid4().hex[:12]}"))
            try:
                upload_monolithic(server, "upload_monolithic_signed")
            finally:
                server.stop()

            redis_proc, redis_addr = _redis(work)
            try:
                server = _ours(work / "server-redis", gateway.params(rootdirectory=f"bench-{uuid.uuid4().hex[:12]}"), redis_addr)
                try:
                    figures["manifest_get_rps_redis_cache"] = _wrk(server.url + _push_manifest(server, "bench/manifest"), work)
                finally:
                    server.stop()
            finally:
                redis_proc.terminate()
                redis_proc.wait(10)
    finally:
        gateway.stop()

    put, get = figures["plain_multipart_put_mbps"], figures["plain_get_mbps"]
    print(f"s3: plain multipart PUT (10 MiB parts, {CONCURRENCY} in flight) {put:8.0f} MB/s")
    print(f"s3: plain multipart PUT (one part at a time)   {figures['plain_multipart_put_sequential_mbps']:8.0f} MB/s")
    print(f"s3: plain GET                                  {get:8.0f} MB/s")
    for key, label, ref, target in (
        ("upload_monolithic_mbps", "upload, monolithic POST", put, 0.8),
        ("upload_chunked_8mib_mbps", "upload, 8 MiB PATCH chunks", put, 0.8),
        ("upload_monolithic_signed_mbps", "upload, monolithic, payload signed", put, 0.8),
        ("download_redirect_mbps", "download via 307 redirect", get, 0.95),
    ):
        ratio = figures[key] / ref
        figures[key.replace("_mbps", "_ratio")] = ratio
        print(f"s3: ours {label:37s} {figures[key]:8.0f} MB/s  {ratio:5.2f}x plain (target >= {target}x)")
    print("s3: per upload: S3 requests, registry CPU s, gateway (radosgw+osd) CPU s")
    for label in ("plain_multipart_put", "upload_monolithic", "upload_chunked_8mib", "upload_monolithic_signed"):
        print(f"s3:   {label:28s} {figures[label + '_s3_requests']:6d} {figures[label + '_registry_cpu_s']:8.2f} "
              f"{figures[label + '_gateway_cpu_s']:8.2f}")
    print(f"s3: manifest GET, no cache                     {figures['manifest_get_rps_no_cache']:8.0f} req/s (wrk, 32 conns, 5 s)")
    print(f"s3: manifest GET, blobdescriptor cache: redis  {figures['manifest_get_rps_redis_cache']:8.0f} req/s")
    return figures
