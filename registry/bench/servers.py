"""Registries the benchmarks start: ours (``twistd registry``) and CNCF
Distribution (``docker-registry serve``), each on a free loopback port over
filesystem storage in its own directory, ready when ``/v2/`` answers.

Each runs in its own session (process group), so :meth:`Target.processes`
finds every process of the server (workers included) and :meth:`Target.stop`
leaves none behind."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

__all__ = [
    "Target", "curl", "distribution_argv", "free_port", "merge_settings", "sha256_of", "our_argv", "our_argv_with", "process_cpu_seconds", "process_rss", "process_tree",
    "finish_upload", "push_chunked", "push_streamed", "raw_http", "start", "start_upload", "write_blob",
]


def sha256_of(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, by hashlib (the bench checks the
    registry with a hasher that is not the registry's own)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
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

    def processes(self) -> list[int]:
        """Process ids of the server: its process group and every descendant."""
        return process_tree(self.proc.pid)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far,
        including children of theirs that have exited and been waited for."""
        return sum(process_cpu_seconds(pid) or 0.0 for pid in self.processes())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        try:  # workers it forked share its process group
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.log.close()


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, process group) of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), int(fields[2])


def process_tree(root: int) -> list[int]:
    """``root``, the members of its process group and all their descendants."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                table[int(entry)] = st
    found = {pid for pid, (_, pgrp) in table.items() if pgrp == root}
    if root in table:
        found.add(root)
    grew = True
    while grew:
        more = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        found |= more
        grew = bool(more)
    return sorted(found)


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime + cutime + cstime of ``pid`` in seconds, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()  # fields[0] is the state, field 3 of proc(5)
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def process_rss(pid: int) -> int | None:
    """Resident set size of ``pid`` in bytes (VmRSS), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return 0


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


def start(label: str, argv_for: Callable[[Path, int], list[str]], workdir: Path, unset: tuple[str, ...] = ()) -> Target:
    """Start a server (``argv_for(workdir, port)``) without this process's
    ``REGISTRY_*`` variables nor those in ``unset``; ready when it answers."""
    workdir.mkdir(parents=True)
    port = free_port()
    log = open(workdir / "server.log", "wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_") and k not in unset}
    proc = subprocess.Popen(argv_for(workdir, port), stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
                            start_new_session=True)
    target = Target(label, port, proc, log, workdir)
    _wait_ready(target)
    return target


def merge_settings(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mappings key by key (``extra`` wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = merge_settings(merged[key], value)
        else:
            merged[key] = value
    return merged


def _config(workdir: Path, port: int, extra: Mapping[str, Any] | None = None) -> Path:
    """A config.yml over filesystem storage in ``workdir``, with ``extra``
    (nested mappings, e.g. ``{"http": {"workers": 2}}``) merged in."""
    storage = workdir / "storage"
    storage.mkdir()
    settings: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
    }
    config = workdir / "config.yml"
    config.write_text(yaml.safe_dump(merge_settings(settings, extra or {}), sort_keys=False))
    return config


def our_argv_with(extra: Mapping[str, Any] | None) -> Callable[[Path, int], list[str]]:
    """:func:`our_argv` with ``extra`` settings merged into our config."""
    def argv(workdir: Path, port: int) -> list[str]:
        twistd = Path(sys.executable).with_name("twistd")
        return [str(twistd) if twistd.exists() else "twistd", "-n", "--pidfile=", "registry", "--config",
                str(_config(workdir, port, extra))]
    return argv


def our_argv(workdir: Path, port: int) -> list[str]:
    return our_argv_with(None)(workdir, port)


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
        return _read_response(s)


def _read_response(s: socket.socket) -> tuple[int, dict[str, str], bytes]:
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


def start_upload(port: int, name: str) -> str:
    """POST a new upload session to repository ``name``; its ``Location``."""
    status, hdrs, _ = raw_http("127.0.0.1", port, f"POST /v2/{name}/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 202, status
    return hdrs["location"]


def finish_upload(port: int, location: str, digest: str, body: memoryview | bytes = b"") -> None:
    """PUT ``?digest=`` to the session at ``location``, with ``body`` (the
    whole blob, a monolithic upload) or without (after PATCHes)."""
    sep = "&" if "?" in location else "?"
    status, _, _ = raw_http("127.0.0.1", port, (
        f"PUT {location}{sep}digest={digest} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n").encode(), body)
    assert status == 201, status


def push_chunked(port: int, name: str, view: memoryview, digest: str, chunk: int) -> None:
    """Upload ``view`` to repository ``name`` in PATCHes of ``chunk`` bytes
    (with Content-Range), then PUT ``?digest=``; raw sockets, so the bytes
    go from the caller's buffer (a memory map) without a copy."""
    location = start_upload(port, name)
    for start in range(0, len(view), chunk):
        part = view[start : start + chunk]
        head = (f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                f"Content-Range: {start}-{start + len(part) - 1}\r\nContent-Length: {len(part)}\r\n\r\n").encode()
        status, hdrs, _ = raw_http("127.0.0.1", port, head, part)
        part.release()
        assert status == 202, status
        location = hdrs["location"]
    finish_upload(port, location, digest)


#: The chunk size of docker's (and containerd's) streamed PATCH: Go's
#: ``io.Copy`` writes each 32 KiB it reads as one chunk.
DOCKER_CHUNK = 32 * 1024


def push_streamed(port: int, name: str, view: memoryview, digest: str, piece: int = DOCKER_CHUNK) -> None:
    """Upload ``view`` to repository ``name`` as docker does: one PATCH
    with no length and no Content-Range, its body in chunked transfer
    encoding (chunks of ``piece`` bytes, 32 KiB as docker's), then PUT
    ``?digest=``. Chunks go out a MiB at a time (one ``sendmsg``), so the
    client's own cost stays small."""
    location = start_upload(port, name)
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
                  "Transfer-Encoding: chunked\r\n\r\n".encode())
        batch: list[bytes | memoryview] = []
        for start in range(0, len(view), piece):
            part = view[start : start + piece]
            batch += [b"%x\r\n" % len(part), part, b"\r\n"]
            if len(batch) >= 3 * max(1, (1 << 20) // piece) or start + piece >= len(view):
                _send_all(s, batch)
                batch = []
        s.sendall(b"0\r\n\r\n")
        status, hdrs, _ = _read_response(s)
    assert status == 202, status
    finish_upload(port, hdrs["location"], digest)


def _send_all(s: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """``sendmsg`` until every buffer is sent (a send may take part of them)."""
    views = [memoryview(b).cast("B") for b in buffers]
    while views:
        sent = s.sendmsg(views)
        while views and sent >= len(views[0]):
            sent -= len(views[0])
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def write_blob(path: Path, size: int) -> str:
    """Write ``size`` incompressible bytes to ``path`` (16 MiB of random
    bytes, each further 16 MiB block the same rotated by one more byte, so
    no two blocks are alike); returns their ``sha256:`` digest."""
    block_size = 16 << 20
    h = hashlib.sha256()
    block = os.urandom(block_size)
    with open(path, "wb") as f:
        for i, start in enumerate(range(0, size, block_size)):
            piece = (block[i:] + block[:i])[: size - start]
            h.update(piece)
            f.write(piece)
    return "sha256:" + h.hexdigest()
