"""Many instances on one storage, sharing Redis, behind nginx (round robin,
no stickiness): the pieces the scale-out tests start.

No ``http.secret`` is configured: an upload's state (its data, hash states
and start time) lives in the shared storage and the ``Location`` names the
upload by repository and id, so any request of an upload may go to any
instance; nothing is signed or kept in an instance's memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import time
import uuid
from pathlib import Path
from typing import Iterator

from registry.bench.servers import process_tree
from tests.clients.harness import ManagedProcess, MissingTool, _wait_for_v2, free_port, missing_tool, twistd_path
from tests.redis.server import RedisServer, require_redis_server

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


class Instance:
    def __init__(self, workdir: Path, storage: dict[str, object], redis: RedisServer) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = workdir / "config.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: info}\n"
            "storage:\n"
            f"  {json.dumps(storage)[1:-1]}\n"
            "  redirect: {disable: true}\n"
            "  delete: {enabled: true}\n"
            "  cache: {blobdescriptor: redis}\n"
            "  maintenance: {uploadpurging: {enabled: false}}\n"
            f"redis: {{addr: '{redis.addr}', dialtimeout: 2s, readtimeout: 2s, writetimeout: 2s}}\n"
            f"http: {{addr: '127.0.0.1:{self.port}'}}\n"
        )
        self.process = ManagedProcess(
            [twistd_path(), "-n", "--pidfile=", "registry", "--config", str(config)], workdir / "registry.log", cwd=workdir
        )
        try:
            _wait_for_v2(self.process, f"http://127.0.0.1:{self.port}", "registry instance", 30)
        except BaseException:
            self.process.stop()
            raise

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"


class Balancer:
    """nginx, round robin over the instances; its access log names the
    instance that served each request."""

    def __init__(self, workdir: Path, upstreams: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.access_log = workdir / "access.log"
        servers = "\n".join(f"    server {u} max_fails=1 fail_timeout=30s;" for u in upstreams)
        temp = "\n".join(f"  {kind}_temp_path {workdir}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (workdir / "nginx.conf").write_text(
            f"""daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 512; }}
http {{
{temp}
  log_format upstream '$request_method $uri $status $upstream_addr';
  access_log {self.access_log} upstream;
  upstream registry {{
{servers}
  }}
  server {{
    listen 127.0.0.1:{self.port};
    client_max_body_size 0;
    location / {{
      proxy_pass http://registry;
      proxy_http_version 1.1;
      proxy_set_header Host $http_host;
      proxy_set_header Connection "";
      proxy_request_buffering off;
      proxy_buffering off;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout;
    }}
  }}
}}
"""
        )
        self.process = ManagedProcess([NGINX, "-p", str(workdir), "-c", str(workdir / "nginx.conf")], workdir / "nginx.out")
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if not self.process.alive() or time.monotonic() > deadline:
                    out = self.process.output()
                    self.process.stop()
                    raise RuntimeError(f"nginx did not start: {out}")
                time.sleep(0.05)

    def statuses(self, method: str, path_part: str) -> list[int]:
        """The statuses (in order) nginx answered ``method`` requests whose
        path contains ``path_part``."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        found = []
        for line in lines:
            m, uri, status, _upstream = line.split(" ", 3)
            if m == method and path_part in uri:
                found.append(int(status))
        return found

    def served(self, method: str, path_part: str) -> list[str]:
        """The upstreams (in order) that served ``method`` requests whose
        path contains ``path_part``."""
        lines = self.access_log.read_text().splitlines() if self.access_log.exists() else []
        found = []
        for line in lines:
            m, uri, _status, upstream = line.split(" ", 3)
            if m == method and path_part in uri:
                found.append(upstream)
        return found


def kill_instance(inst: Instance) -> None:
    """SIGKILL the instance and every process of it at once, as a crash of
    its host would: nothing gets to clean up."""
    for pid in process_tree(inst.process.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    inst.process.popen.wait(10)


def storage_for(kind: str, tmp_path: Path) -> dict[str, object]:
    """The ``storage`` section of a shared store: a filesystem directory, or a
    fresh root directory in the bucket of the session's Ceph RGW (skipped
    without Ceph; a failure under ``CI=true``)."""
    if kind == "s3":
        from tests.storage.rgw import shared_gateway

        return {"s3": shared_gateway().params(rootdirectory=f"t-{uuid.uuid4().hex[:12]}", chunksize=5 * 1024 * 1024)}
    (tmp_path / "storage").mkdir()
    return {"filesystem": {"rootdirectory": str(tmp_path / "storage")}}


@contextlib.contextmanager
def running_cluster(tmp_path: Path, kind: str, count: int = 3) -> Iterator[tuple[list[Instance], Balancer, RedisServer]]:
    """``count`` instances on one storage (``kind``) and one Redis, behind nginx."""
    require_redis_server()
    if not os.access(NGINX, os.X_OK):
        missing_tool(MissingTool("nginx", "nginx-light"))
    storage = storage_for(kind, tmp_path)
    redis = RedisServer()
    instances: list[Instance] = []
    balancer = None
    try:
        for i in range(count):
            instances.append(Instance(tmp_path / f"instance{i}", storage, redis))
        balancer = Balancer(tmp_path / "nginx", [inst.upstream for inst in instances])
        yield instances, balancer, redis
    finally:
        if balancer is not None:
            balancer.process.stop()
        for inst in instances:
            inst.process.stop()
        redis.stop()


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def path_of(location: str) -> str:
    """The path of a ``Location`` (absolute URLs name the balancer)."""
    if "://" in location:
        return "/" + location.split("://", 1)[1].split("/", 1)[1]
    return location


def upload(port: int, name: str, data: bytes, chunk: int | None = None) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, body = request(port, "POST", f"/v2/{name}/blobs/uploads/")
    assert status == 202, body
    location = path_of(headers["location"])
    if chunk is None:
        sep = "&" if "?" in location else "?"
        status, headers, body = request(port, "PUT", f"{location}{sep}digest={digest}", data, {"Content-Type": "application/octet-stream"})
        assert status == 201, body
        return digest
    for start in range(0, len(data), chunk):
        part = data[start : start + chunk]
        status, headers, body = request(
            port, "PATCH", location, part, {"Content-Range": f"{start}-{start + len(part) - 1}", "Content-Type": "application/octet-stream"}
        )
        assert status == 202, (start, body)
        location = path_of(headers["location"])
    sep = "&" if "?" in location else "?"
    status, headers, body = request(port, "PUT", f"{location}{sep}digest={digest}")
    assert status == 201, body
    return digest
