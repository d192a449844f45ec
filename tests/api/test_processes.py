"""Uploads across real registry processes: two instances sharing storage,
a server SIGKILLed in the middle of a PATCH body and restarted, and a large
streamed upload with the server's memory measured."""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.clients.harness import Registry, start_our_registry

pytestmark = pytest.mark.slow


def _request(reg: Registry, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", reg.port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    resp.body = resp.read()  # type: ignore[attr-defined]
    conn.close()
    return resp


def _start_upload(reg: Registry, name: str) -> str:
    r = _request(reg, "POST", f"/v2/{name}/blobs/uploads/")
    assert r.status == 202, r.body  # type: ignore[attr-defined]
    return str(r.getheader("Location"))


def _offset(reg: Registry, location: str) -> int:
    """The offset the upload status reports. Docker's Range format says
    '0-0' for both 0 and 1 bytes; then the data file's size (repaired by the
    status request) tells which."""
    r = _request(reg, "GET", location)
    assert r.status == 204, r.body  # type: ignore[attr-defined]
    last = int(str(r.getheader("Range")).split("-")[1])
    if last > 0:
        return last + 1
    upload_id = location.rsplit("/", 1)[1]
    return next(reg.storage.rglob(f"_uploads/{upload_id}/data")).stat().st_size


def test_two_processes_alternate_patches_of_one_upload(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    a = start_our_registry(tmp_path / "a", storage=storage)
    b = start_our_registry(tmp_path / "b", storage=storage)
    try:
        data = os.urandom(6 * 256 * 1024 + 99)
        location = _start_upload(a, "shared/repo")
        step = 256 * 1024
        for i, start in enumerate(range(0, len(data), step)):
            reg = (a, b)[i % 2]
            chunk = data[start : start + step]
            r = _request(reg, "PATCH", location, chunk, {"Content-Range": f"{start}-{start + len(chunk) - 1}"})
            assert r.status == 202, (i, r.body)  # type: ignore[attr-defined]
            location = str(r.getheader("Location"))
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        # A stale chunk sent to the other instance is refused with the true range.
        r = _request(a, "PATCH", location, data[:10], {"Content-Range": "0-9"})
        assert r.status == 416 and r.getheader("Range") == f"0-{len(data) - 1}"
        r = _request(b, "PUT", f"{location}?digest={digest}")
        assert r.status == 201, r.body  # type: ignore[attr-defined]
        for reg in (a, b):
            r = _request(reg, "GET", f"/v2/shared/repo/blobs/{digest}")
            assert r.status == 200 and r.body == data  # type: ignore[attr-defined]
    finally:
        a.stop()
        b.stop()


def _send_partial_patch(reg: Registry, location: str, data: bytes, sent: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", reg.port))
    s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
              f"Content-Length: {len(data)}\r\n\r\n".encode())
    view = memoryview(data)[:sent]
    for i in range(0, sent, 65536):
        s.sendall(view[i : i + 65536])
    return s


@pytest.mark.parametrize("before,sent", [(0, 0), (0, 1), (0, 300_000), (2_500_000, 3_000_000), (1_000_000, 4_000_000)])
def test_sigkill_mid_patch_then_resume(tmp_path: Path, before: int, sent: int) -> None:
    """SIGKILL the server while a PATCH body is arriving; restart it; the
    client, knowing only its Location, asks for the status, continues from
    the offset it gets and finishes: the digest verifies."""
    storage = tmp_path / "storage"
    reg = start_our_registry(tmp_path / "first", storage=storage)
    data = os.urandom(5_000_000)
    try:
        location = _start_upload(reg, "crash/test")
        if before:
            r = _request(reg, "PATCH", location, data[:before], {"Content-Range": f"0-{before - 1}"})
            assert r.status == 202
            location = str(r.getheader("Location"))
        body = data[before:]
        s = _send_partial_patch(reg, location, body, sent - before if sent > before else 0)
        if sent - before >= 2_000_000:
            # Kill only once megabytes sit in the data file past the last
            # stored hash state (the case Distribution cannot resume).
            upload_id = location.rsplit("/", 1)[1]
            data_file = next(storage.rglob(f"_uploads/{upload_id}/data"))
            deadline = time.monotonic() + 30
            while data_file.stat().st_size < before + (1 << 20) and time.monotonic() < deadline:
                time.sleep(0.02)
        else:
            time.sleep(0.5)  # let the server take in what was sent
        os.kill(reg.process.pid, signal.SIGKILL)
        reg.process.popen.wait(10)
        s.close()
    finally:
        reg.stop()
    reg = start_our_registry(tmp_path / "second", storage=storage)
    try:
        offset = _offset(reg, location)
        assert before <= offset <= max(sent, before), offset
        if sent - before >= 2_000_000:
            # Megabytes reached the data file after the last stored hash
            # state: the status request hashed that tail instead of refusing
            # the upload or throwing the bytes away.
            assert offset > before, offset
        r = _request(reg, "PATCH", location, data[offset:], {"Content-Range": f"{offset}-{len(data) - 1}"})
        assert r.status == 202, r.body  # type: ignore[attr-defined]
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = _request(reg, "PUT", f"{str(r.getheader('Location'))}?digest={digest}")
        assert r.status == 201, r.body  # type: ignore[attr-defined]
        r = _request(reg, "GET", f"/v2/crash/test/blobs/{digest}")
        assert r.status == 200 and r.body == data  # type: ignore[attr-defined]
    finally:
        reg.stop()


def test_large_streamed_upload_has_bounded_server_memory(tmp_path: Path) -> None:
    """1 GiB in one chunked PATCH: the server's RSS stays bounded."""
    size = int(os.environ.get("REGISTRY_TEST_LARGE_UPLOAD_MIB", "1024")) << 20
    # One process, so its RSS is the memory that served the upload (with
    # workers the parent only supervises; each worker has this bound).
    reg = start_our_registry(tmp_path / "big", extra_config={"http": {"workers": 1}})
    proc = psutil.Process(reg.process.pid)
    base_rss = proc.memory_info().rss
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        location = _start_upload(reg, "big/blob")
        block = os.urandom(1 << 20)
        h = hashlib.sha256()
        s = socket.create_connection(("127.0.0.1", reg.port))
        s.sendall(f"PATCH {location} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        header = b"%x\r\n" % len(block)
        for _ in range(size // len(block)):
            h.update(block)
            s.sendall(header)
            s.sendall(block)
            s.sendall(b"\r\n")
        s.sendall(b"0\r\n\r\n")
        s.settimeout(120)
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = s.recv(65536)
            if not chunk:
                break
            response += chunk
        s.close()
        assert response.startswith(b"HTTP/1.1 202"), response[:300]
        r = _request(reg, "PUT", f"{location}?digest=sha256:{h.hexdigest()}")
        assert r.status == 201, r.body  # type: ignore[attr-defined]
    finally:
        stop.set()
        sampler.join()
        reg.stop()
    growth = peak[0] - base_rss
    print(f"\nserver RSS: start {base_rss >> 20} MiB, peak {peak[0] >> 20} MiB, growth {growth >> 20} MiB for {size >> 20} MiB uploaded")
    assert growth < 96 << 20, f"server RSS grew by {growth >> 20} MiB during a {size >> 20} MiB upload"
