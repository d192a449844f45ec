"""Registries the benchmarks start: ours (``twistd registry``) and CNCF
Distribution (``docker-registry serve``), each on a free loopback port over
filesystem storage in its own directory, ready when ``/v2/`` answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

__all__ = ["Target", "curl", "distribution_argv", "free_port", "our_argv", "push_chunked", "raw_http", "start"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Target:
    """One running registry."""

    label: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Any
    workdir: Path
    seeded: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _wait_ready(target: Target) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(target.url + "/v2/", timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline or target.proc.poll() is not None:
                target.stop()
                raise RuntimeError(f"{target.label} did not start; see {target.workdir / 'server.log'}")
            time.sleep(0.1)


def start(label: str, argv_for: Callable[[Path, int], list[str]], workdir: Path) -> Target:
    workdir.mkdir(parents=True)
    port = free_port()
    log = open(workdir / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen(argv_for(workdir, port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    target = Target(label, port, proc, log, workdir)
    _wait_ready(target)
    return target


def _config(workdir: Path, port: int) -> Path:
    storage = workdir / "storage"
    storage.mkdir()
    config = workdir / "config.yml"
    config.write_text(
        "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
    )
    return config


def our_argv(workdir: Path, port: int) -> list[str]:
    twistd = Path(sys.executable).with_name("twistd")
    return [str(twistd) if twistd.exists() else "twistd", "-n", "--pidfile=", "registry", "--config", str(_config(workdir, port))]


def distribution_argv(workdir: Path, port: int) -> list[str]:
    return ["docker-registry", "serve", str(_config(workdir, port))]


def curl(*args: str) -> None:
    """``curl`` that fails on an HTTP error and discards the body."""
    subprocess.run(["curl", "-sS", "--fail", "-o", "/dev/null", *args], check=True)


def raw_http(host: str, port: int, head: bytes, body: memoryview | bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """One request over a fresh connection, written as given (``head`` is
    the request line and headers); returns status, headers (lower-cased
    names) and the body when it has a Content-Length."""
    with socket.create_connection((host, port)) as s:
        s.sendall(head)
        if body:
            s.sendall(body)
        data = b""
        while b"\r\n\r\n" not in data:
            more = s.recv(65536)
            if not more:
                break
            data += more
        top, _, rest = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        length = int(headers.get("content-length", "0") or 0)
        while len(rest) < length:
            more = s.recv(65536)
            if not more:
                break
            rest += more
    return int(lines[0].split()[1]), headers, rest


def push_chunked(port: int, name: str, view: memoryview, digest: str, chunk: int) -> None:
    """Upload ``view`` to repository ``name`` in PATCHes of ``chunk`` bytes
    (with Content-Range), then PUT ``?digest=``; raw sockets, so the bytes
    go from the caller's buffer (a memory map) without a copy."""
    status, hdrs, _ = raw_http("127.0.0.1", port, f"POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 202, status
    location = hdrs["location"]
    for start in range(0, len(view), chunk):
        part = view[start : start + chunk]
        head = (f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: {start}-{start + len(part) - 1}\r\nContent-Length: {len(part)}\r\n\r\n").encode()
        status, hdrs, _ = raw_http("127.0.0.1", port, head, part)
        part.release()
        assert status == 202, status
        location = hdrs["location"]
    sep = "&" if "?" in location else "?"
    status, _, _ = raw_http("127.0.0.1", port, f"PUT {location}{sep}digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 201, status
