"""Several worker processes on one socket (``registry.workers``): real
``twistd -n registry`` processes over filesystem storage on free 127.0.0.1
ports.  Which worker holds a connection is read from the kernel (psutil:
the worker process whose socket has the client's port as its peer), so the
tests see both workers serve without any test-only code in the server."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import psutil
import pytest
from twisted.python import usage

from registry.bench.servers import free_port
from registry.config import load_config
from registry.observe.metrics import aggregate_expositions
from registry.tap import Options
from registry.workers import WorkersError, cpu_count, resolve_workers, worker_config
from tests.tlsutil import PKI, make_pki

TWISTD = Path(sys.executable).parent / "twistd"
SERVING = re.compile(r"worker (\d+) serving \(pid (\d+)\)")


class Registry:
    """``twistd -n registry`` with workers; its output collected line by line."""

    def __init__(
        self, tmp_path: Path, workers: int = 2, extra: str = "", scheme: str = "http", root: Path | None = None
    ) -> None:
        self.port = free_port()
        self.debug_port = free_port()
        self.scheme = scheme
        self.config = tmp_path / "config.yml"
        self.config.write_text(
            "version: 0.1\nlog: {level: info, formatter: text}\n"
            f"storage:\n  filesystem: {{rootdirectory: {root or tmp_path / 'data'}}}\n  delete: {{enabled: true}}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  workers: {workers}\n"
            f"  debug: {{addr: '127.0.0.1:{self.debug_port}', prometheus: {{enabled: true}}}}\n{extra}"
        )
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [str(TWISTD), "-n", "--pidfile=", "registry", "--config", str(self.config)],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def serving(self) -> dict[int, int]:
        """Worker index -> pid of each worker's latest "serving" line."""
        found: dict[int, int] = {}
        for line in list(self.lines):
            m = SERVING.search(line)
            if m:
                found[int(m.group(1))] = int(m.group(2))
        return found

    def wait_serving(self, count: int = 2, deadline: float = 90.0) -> dict[int, int]:
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise AssertionError(f"twistd exited with {self.process.returncode}:\n{self.output}")
            serving = self.serving()
            if len(serving) >= count:
                return serving
            time.sleep(0.05)
        raise AssertionError(f"workers not serving after {deadline}s:\n{self.output}")

    def children(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._reader.join(timeout=10)

    # -- HTTP, each request on a fresh connection --

    def connection(self, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=30, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
                port: int | None = None) -> tuple[int, dict[str, str], bytes, int | None]:
        """``(status, headers, body, pid of the worker that answered)``."""
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            data = response.read()
            pid = owner(self, conn.sock) if port is None else None
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data, pid
        finally:
            conn.close()


def owner(registry: Registry, sock: Any) -> int | None:
    """The worker process holding the server side of ``sock``'s connection."""
    if sock is None:
        return None
    client_port = sock.getsockname()[1]
    for child in registry.children():
        try:
            for c in child.net_connections(kind="tcp"):
                if c.raddr and c.raddr.port == client_port and c.laddr.port == registry.port:
                    return child.pid
        except psutil.NoSuchProcess:
            continue
    return None


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    r = Registry(tmp_path)
    try:
        r.wait_serving(2)
        yield r
    finally:
        r.stop()


def push_blob(r: Registry, name: str, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, headers, _, _ = r.request("POST", f"/v2/{name}/blobs/uploads/")
    assert status == 202, status
    location = headers["location"]
    sep = "&" if "?" in location else "?"
    status, _, body, _ = r.request("PUT", f"{location}{sep}digest={digest}", body=data,
                                   headers={"Content-Type": "application/octet-stream"})
    assert status == 201, body
    return digest


OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def manifest_for(config: str, config_size: int, layer: str, layer_size: int, note: str) -> bytes:
    return json.dumps({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": layer_size}],
        "annotations": {"note": note},
    }).encode()


# --- choosing the number of workers --------------------------------------------------


def test_workers_default_to_the_cores_and_explicit_counts_win() -> None:
    config = load_config(None, {})
    assert config.http.workers == 0
    assert resolve_workers(config, None, None) == (cpu_count(), None) or cpu_count() == 1
    assert resolve_workers(load_config(None, {"REGISTRY_HTTP_WORKERS": "3"}), None, None) == (3, None)
    assert resolve_workers(load_config(None, {"REGISTRY_HTTP_WORKERS": "3"}), 1, None) == (1, None)
    assert resolve_workers(config, 4, "tcp:0") == (4, None)
    assert resolve_workers(config, 2, "unix:/tmp/r.sock") == (2, None)


def test_workers_option_and_key_are_checked() -> None:
    assert Options(environ={}).parseOptions(["--workers", "1"]) is None
    with pytest.raises(usage.UsageError, match="--workers 'many': must be a whole number"):
        Options(environ={}).parseOptions(["--workers", "many"])
    with pytest.raises(usage.UsageError, match="http.workers = -1"):
        Options(environ={"REGISTRY_HTTP_WORKERS": "-1"}).parseOptions([])


def test_inmemory_storage_is_refused_with_workers_and_runs_alone_by_default() -> None:
    with pytest.raises(usage.UsageError, match="http.workers = 2: storage inmemory .* use filesystem or s3 storage, or workers: 1"):
        Options(environ={"REGISTRY_STORAGE": "inmemory", "REGISTRY_HTTP_WORKERS": "2"}).parseOptions([])
    with pytest.raises(usage.UsageError, match="--workers = 2: storage inmemory"):
        Options(environ={"REGISTRY_STORAGE": "inmemory"}).parseOptions(["--workers", "2"])
    options = Options(environ={"REGISTRY_STORAGE": "inmemory"})
    options.parseOptions([])
    assert options["worker_count"] == 1
    if cpu_count() > 1:
        assert "storage inmemory" in options["worker_note"]
    with pytest.raises(WorkersError, match="--listen 'ssl:443"):
        resolve_workers(load_config(None, {}), 2, "ssl:443:privateKey=k.pem")


def test_only_worker_zero_purges_uploads_and_collects_garbage() -> None:
    config = load_config(None, {"REGISTRY_STORAGE_MAINTENANCE_GC_ENABLED": "true"})
    assert config.storage.gc.enabled and config.storage.uploadpurging.enabled
    assert worker_config(config, primary=True) is config
    other = worker_config(config, primary=False)
    assert not other.storage.gc.enabled and not other.storage.uploadpurging.enabled
    assert other.http == config.http and other.storage.params == config.storage.params


def test_a_killed_supervisors_runtime_directory_is_removed_by_the_next(tmp_path: Path) -> None:
    from registry.workers import RUNTIME_PREFIX, remove_stale_runtime_directories

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{RUNTIME_PREFIX}{dead.pid}-abc"
    (stale / "sub").mkdir(parents=True)
    (stale / "worker-0.sock").write_text("")
    running = tmp_path / f"{RUNTIME_PREFIX}{os.getpid()}-def"
    running.mkdir()
    unrelated = tmp_path / f"{RUNTIME_PREFIX}notapid"
    unrelated.mkdir()
    other = tmp_path / "something-else"
    other.mkdir()
    assert remove_stale_runtime_directories(str(tmp_path)) == [str(stale)]
    assert not stale.exists()
    assert running.exists() and unrelated.exists() and other.exists()


def test_metrics_of_the_workers_are_summed() -> None:
    a = (
        "# HELP registry_http_requests_total HTTP requests answered\n"
        "# TYPE registry_http_requests_total counter\n"
        'registry_http_requests_total{route="base",method="GET",status="200"} 3.0\n'
        'registry_http_requests_created{route="base",method="GET",status="200"} 100.0\n'
        "# HELP registry_uploads_in_progress Upload requests streaming a body now\n"
        "# TYPE registry_uploads_in_progress gauge\n"
        "registry_uploads_in_progress 1.0\n"
        "# HELP process_open_fds Number of open file descriptors.\n"
        "# TYPE process_open_fds gauge\n"
        "process_open_fds 10.0\n"
    )
    b = a.replace("} 3.0", "} 4.0").replace("100.0", "90.0").replace("process_open_fds 10.0", "process_open_fds 12.0")
    b = b.replace(
        "# HELP registry_uploads_in_progress",
        'registry_http_requests_total{route="manifest",method="PUT",status="201"} 1.0\n'
        "# HELP registry_uploads_in_progress",
    )
    text = aggregate_expositions([(0, a), (1, b)]).decode()
    assert 'registry_http_requests_total{method="GET",route="base",status="200"} 7.0' in text
    assert 'registry_http_requests_created{method="GET",route="base",status="200"} 90.0' in text
    assert 'registry_http_requests_total{method="PUT",route="manifest",status="201"} 1.0' in text  # one worker's only
    assert "registry_uploads_in_progress 2.0" in text
    assert 'process_open_fds{worker="0"} 10.0' in text and 'process_open_fds{worker="1"} 12.0' in text
    assert "registry_workers 2.0" in text


# --- real processes -------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_serve_one_socket(registry: Registry) -> None:
    workers = registry.wait_serving(2)
    children = {c.pid for c in registry.children()}
    assert set(workers.values()) == children and len(children) == 2
    # Both workers accept connections on the one port.
    seen: dict[int, int] = {}
    for _ in range(300):
        status, headers, _, pid = registry.request("GET", "/v2/")
        assert status == 200 and headers["docker-distribution-api-version"] == "registry/2.0"
        if pid is not None:
            seen[pid] = seen.get(pid, 0) + 1
        if len(seen) == 2 and min(seen.values()) >= 3:
            break
    assert set(seen) == children, seen
    # A blob pushed through one is read back through all, many times.
    data = os.urandom(256 * 1024 + 7)
    digest = push_blob(registry, "team/app", data)
    readers: set[int | None] = set()
    for _ in range(40):
        status, headers, body, pid = registry.request("GET", f"/v2/team/app/blobs/{digest}")
        assert status == 200 and body == data and headers["docker-content-digest"] == digest
        readers.add(pid)
    assert children <= readers, readers
    # The parent's debug listener: the workers' metrics added up.
    status, _, body, _ = registry.request("GET", "/metrics", port=registry.debug_port)
    assert status == 200
    text = body.decode()
    assert "registry_workers 2.0" in text, text
    served = sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("registry_http_requests_total{") and 'handler="blob"' in line and 'method="get"' in line
    )
    assert served == 40, text
    assert len({line.split("}")[0] for line in text.splitlines() if line.startswith("process_cpu_seconds_total{")}) == 2
    status, _, body, _ = registry.request("GET", "/debug/health", port=registry.debug_port)
    assert status == 200, body


@pytest.mark.slow
def test_a_manifest_pushed_through_one_worker_is_visible_from_the_others_at_once(registry: Registry) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    config_digest = push_blob(registry, "rw/app", config)
    layer_digest = push_blob(registry, "rw/app", layer)
    crossed = 0
    for i in range(15):
        body = manifest_for(config_digest, len(config), layer_digest, len(layer), f"round {i}")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        status, _, reply, writer = registry.request(
            "PUT", f"/v2/rw/app/manifests/t{i}", body=body, headers={"Content-Type": OCI_MANIFEST}
        )
        assert status == 201, reply
        for _ in range(4):
            status, headers, got, reader = registry.request(
                "GET", f"/v2/rw/app/manifests/t{i}", headers={"Accept": OCI_MANIFEST}
            )
            assert status == 200 and got == body and headers["docker-content-digest"] == digest
            crossed += reader is not None and writer is not None and reader != writer
    assert crossed > 0, "every read landed on the writing worker"


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_service_continues(registry: Registry) -> None:
    before = registry.wait_serving(2)
    victim_index, victim = next(iter(before.items()))
    os.kill(victim, signal.SIGKILL)
    answered = 0
    end = time.monotonic() + 120
    restarted: dict[int, int] = {}
    while time.monotonic() < end:
        # A client that retries a failed request gets an answer every time.
        for attempt in range(50):
            try:
                status, _, _, _ = registry.request("GET", "/v2/")
                assert status == 200
                answered += 1
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                time.sleep(0.05)
        else:
            raise AssertionError(f"no answer after 50 tries:\n{registry.output}")
        restarted = {i: p for i, p in registry.serving().items() if p != victim}
        if len(restarted) == 2 and answered >= 20:
            break
    assert len(restarted) == 2 and victim_index in restarted, registry.output
    assert f"worker {victim_index} (pid {victim}) was killed by SIGKILL" in registry.output
    assert {c.pid for c in registry.children()} == set(restarted.values())
    assert registry.request("GET", "/v2/")[0] == 200


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_exits_zero(registry: Registry) -> None:
    pids = [c.pid for c in registry.children()]
    assert len(pids) == 2
    registry.process.send_signal(signal.SIGTERM)
    assert registry.process.wait(timeout=60) == 0, registry.output
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert "workers stopped" in registry.output
    assert "restarting" not in registry.output


@pytest.mark.slow
def test_workers_whose_parent_died_exit(registry: Registry) -> None:
    pids = [c.pid for c in registry.children()]
    registry.process.kill()
    registry.process.wait(timeout=30)
    end = time.monotonic() + 60
    while time.monotonic() < end and any(psutil.pid_exists(p) for p in pids):
        time.sleep(0.1)
    assert not any(psutil.pid_exists(p) for p in pids), registry.output


@pytest.mark.slow
def test_workers_that_keep_dying_make_the_registry_give_up(tmp_path: Path) -> None:
    # A root directory under a regular file: the options pass (the driver
    # is the workers' to build), so every worker fails as it starts.
    (tmp_path / "file").write_text("")
    r = Registry(tmp_path, root=tmp_path / "file" / "data")
    try:
        assert r.process.wait(timeout=180) == 1, r.output
    finally:
        r.stop()
    assert "giving up" in r.output
    assert "rootdirectory" in r.output and "Not a directory" in r.output
    assert r.output.count("restarting it in") >= 2  # backing off


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.mark.slow
def test_two_workers_speak_mutual_tls(tmp_path: Path, pki: PKI) -> None:
    extra = (
        f"  tls:\n    certificate: {pki.chain}\n    key: {pki.key}\n    clientcas: [{pki.client_ca}]\n"
    )
    r = Registry(tmp_path, extra=extra, scheme="https")
    try:
        workers = r.wait_serving(2)
        good = ssl.create_default_context(cafile=str(pki.root))
        good.load_cert_chain(str(pki.client_cert), str(pki.client_key))
        seen: set[int | None] = set()
        for _ in range(200):
            conn = r.connection(good)
            try:
                conn.request("GET", "/v2/")
                response = conn.getresponse()
                response.read()
                assert response.status == 200
                seen.add(owner(r, conn.sock))
            finally:
                conn.close()
            if set(workers.values()) <= seen:
                break
        assert set(workers.values()) <= seen, seen
        # Without a client certificate: refused in the handshake, by every worker.
        stranger = ssl.create_default_context(cafile=str(pki.root))
        for _ in range(6):
            conn = r.connection(stranger)
            with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
                conn.request("GET", "/v2/")
                conn.getresponse().read()
            conn.close()
        # Plain HTTP on the TLS port is not served: every worker answers 400
        # saying to use https://.
        for _ in range(6):
            with socket.create_connection(("127.0.0.1", r.port), timeout=30) as s:
                s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while chunk := s.recv(65536):
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer
            assert answer.endswith(b"use https://.\n"), answer
    finally:
        r.stop()
