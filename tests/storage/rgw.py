"""A throwaway Ceph RADOS Gateway: the real S3 the S3 driver is tested on.

:func:`start_rgw` builds a single-node Ceph cluster from nothing in a fresh
short temporary directory — one monitor, one OSD on *memstore* (objects in
RAM), no manager — starts ``radosgw`` (beast frontend) on a free 127.0.0.1
port, creates one S3 user and one bucket, and returns an :class:`RGW`
whose :meth:`RGW.stop` tears it all down (rgw first, then the OSD, then the
monitor) and removes the directory. Nothing outside the directory and the
processes it started is touched; it needs no root.

Settings, each one a hang or a slow start here if missed (measured, see the
project's notes on Ceph): ``paxos_propose_interval`` 0.05 (else ~13 s start),
``tcp_nodelay=1`` on beast (else ~40 ms per request), pool size 1 with 8 PGs
(else pools never become active), every path under one short directory
(admin sockets must stay under 107 bytes), a private messenger port range, a
memstore much larger than any test stores (a full one hangs writes), fast GC,
and waiting for the S3 port to answer rather than for a pid file.

The packages come from ``scripts/install-system-deps.sh`` (``ceph-mon``,
``ceph-osd``, ``radosgw``); :func:`start_rgw` raises
``tests.clients.harness.MissingTool`` naming the package when one is absent.

Synchronous test infrastructure: call it outside the reactor (a
session-scoped fixture does).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tests.clients.harness import MissingTool

#: command -> Debian package, as in scripts/install-system-deps.sh
TOOLS = {
    "ceph-mon": "ceph-mon",
    "ceph-osd": "ceph-osd",
    "monmaptool": "ceph-mon",
    "ceph-authtool": "ceph-common",
    "ceph": "ceph-common",
    "radosgw": "radosgw",
    "radosgw-admin": "radosgw",
}

ACCESS_KEY = "REGISTRYTESTACCESSKEY"
SECRET_KEY = "registry-test-secret-key-0123456789abcdef"
REGION = "us-east-1"


class RGWStartupFailed(Exception):
    """The gateway did not come up; the message holds the logs' tails."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """This environment without ``AWS_*`` and proxy variables: a CA bundle
    meant for elsewhere makes SDKs fail, and everything here is loopback."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class RGW:
    """A running gateway with one user and one bucket."""

    directory: Path
    endpoint: str  # http://127.0.0.1:PORT
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION
    startup_seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def params(self, **extra: object) -> dict[str, object]:
        """``storage.s3`` parameters for the driver, over this gateway."""
        params: dict[str, object] = {
            "accesskey": self.access_key,
            "secretkey": self.secret_key,
            "region": self.region,
            "regionendpoint": self.endpoint,
            "forcepathstyle": True,
            "bucket": self.bucket,
            "secure": False,
        }
        params.update(extra)
        return params

    def admin(self, *args: str, timeout: float = 60) -> str:
        """Run ``radosgw-admin`` against this cluster; returns stdout."""
        conf = str(self.directory / "ceph.conf")
        result = subprocess.run(
            ["radosgw-admin", "-c", conf, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean_env(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"radosgw-admin {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
        return result.stdout

    def create_bucket(self, name: str, keys: tuple[str, str] | None = None) -> None:
        """Create bucket ``name`` through the S3 API (a signed PUT)."""
        status = s3_request(self, "PUT", f"/{name}", keys=keys)
        if status not in (200, 409):
            raise RuntimeError(f"creating bucket {name!r} answered HTTP {status}")

    def stop(self) -> None:
        """Stop rgw, then the OSD, then the monitor; remove the directory."""
        for name in ("radosgw", "osd", "mon"):
            proc = self.processes.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)


def s3_request(
    rgw: RGW, method: str, path: str, body: bytes = b"", timeout: float = 10, keys: tuple[str, str] | None = None
) -> int:
    """One SigV4-signed request to the gateway (synchronous, for set-up),
    as the test user or with ``keys`` (access, secret); returns the HTTP status."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    access, secret = keys or (rgw.access_key, rgw.secret_key)
    request = AWSRequest(method=method, url=rgw.endpoint + path, data=body)
    S3SigV4Auth(Credentials(access, secret), "s3", rgw.region).add_auth(request)
    prepared = urllib.request.Request(rgw.endpoint + path, data=body or None, method=method, headers=dict(request.headers.items()))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(prepared, timeout=timeout) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as e:
        return e.code


def _conf(directory: Path, fsid: str, mon_port: int, rgw_port: int, ms_port: int) -> str:
    d = directory
    return f"""[global]
fsid = {fsid}
mon_host = v1:127.0.0.1:{mon_port}
mon_initial_members = a
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_bind_msgr2 = false
ms_bind_port_min = {ms_port}
ms_bind_port_max = {ms_port + 99}
public_addr = 127.0.0.1
run_dir = {d}/run
admin_socket = {d}/run/$name.asok
log_file = {d}/log/$name.log
pid_file = {d}/run/$name.pid
keyring = {d}/keyring
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
paxos_propose_interval = 0.05
osd_objectstore = memstore
memstore_device_bytes = 4294967296
osd_data = {d}/osd$id
osd_max_object_name_len = 460
osd_max_object_namespace_len = 64
osd_crush_chooseleaf_type = 0
osd_class_update_on_start = false
debug_ms = 0
rgw_gc_obj_min_wait = 5
rgw_gc_processor_period = 5
rgw_dns_name = 127.0.0.1

[mon]
mon_data = {d}/mon
mon_cluster_log_file = {d}/log/cluster.log

[client.rgw]
rgw_frontends = beast endpoint=127.0.0.1:{rgw_port} tcp_nodelay=1
rgw_data = {d}/rgw
"""


def _run(argv: list[str], directory: Path, timeout: float = 60) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=clean_env(), cwd=directory)
    if result.returncode != 0:
        raise RGWStartupFailed(
            f"{' '.join(argv)} failed (exit {result.returncode}):\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return result.stdout


def _spawn(argv: list[str], directory: Path, name: str) -> subprocess.Popen[bytes]:
    log = open(directory / "log" / f"{name}.out", "ab")
    try:
        return subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=clean_env(), cwd=directory, start_new_session=True
        )
    finally:
        log.close()


def start_rgw(bucket: str = "registry", timeout: float = 60) -> RGW:
    """Start a throwaway cluster and gateway with one user and ``bucket``.

    Raises ``MissingTool`` when a Ceph package is not installed and
    ``RGWStartupFailed`` (with the logs' tails) when it does not come up
    within ``timeout`` seconds."""
    for command, package in TOOLS.items():
        if shutil.which(command) is None:
            raise MissingTool(command, package)
    began = time.monotonic()
    # Short: admin socket paths must stay under 107 bytes.
    directory = Path(tempfile.mkdtemp(prefix="rgw", dir="/tmp"))
    for sub in ("run", "log", "mon", "osd0", "rgw"):
        (directory / sub).mkdir()
    fsid = str(uuid.uuid4())
    mon_port, rgw_port = _free_port(), _free_port()
    # A private messenger range, picked from the monitor's free port so that
    # concurrent clusters (parallel test sessions) rarely meet.
    ms_port = 20000 + (mon_port % 400) * 100
    conf = directory / "ceph.conf"
    conf.write_text(_conf(directory, fsid, mon_port, rgw_port, ms_port))
    rgw = RGW(directory=directory, endpoint=f"http://127.0.0.1:{rgw_port}", bucket=bucket)
    c = ["-c", str(conf)]

    def phase(name: str) -> None:
        rgw.phases[name] = round(time.monotonic() - began, 3)

    try:
        _run(["ceph-authtool", "--create-keyring", str(directory / "keyring"), "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"], directory)
        _run(["monmaptool", "--create", "--fsid", fsid, "--addv", "a", f"[v1:127.0.0.1:{mon_port}]", str(directory / "monmap")], directory)
        _run(["ceph-mon", *c, "--mkfs", "-i", "a", "--monmap", str(directory / "monmap"), "--keyring", str(directory / "keyring")], directory)
        phase("mkfs-mon")
        rgw.processes["mon"] = _spawn(["ceph-mon", *c, "-f", "-i", "a"], directory, "mon")
        osd_uuid = str(uuid.uuid4())
        osd_id = _run(["ceph", *c, "--connect-timeout", "20", "osd", "new", osd_uuid], directory).strip()
        if osd_id != "0":
            raise RGWStartupFailed(f"expected OSD id 0, got {osd_id!r}")
        phase("osd-new")
        _run(["ceph-osd", *c, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid], directory)
        phase("mkfs-osd")
        def start_osd() -> subprocess.Popen[bytes]:
            return _spawn(["ceph-osd", *c, "-f", "-i", "0"], directory, "osd")

        rgw.processes["osd"] = start_osd()
        rgw.processes["radosgw"] = _spawn(["radosgw", *c, "-f", "-n", "client.rgw"], directory, "radosgw")
        _wait_for_s3(rgw, began + timeout, start_osd)
        phase("s3-answers")
        rgw.admin(
            "user", "create", "--uid", "registry", "--display-name", "registry tests",
            "--access-key", rgw.access_key, "--secret", rgw.secret_key,
        )
        phase("user")
        rgw.create_bucket(bucket)
        phase("bucket")
    except BaseException as e:
        logs = "\n".join(
            f"--- {name} ---\n{_tail(directory / 'log' / name)}"
            for name in ("mon.out", "mon.a.log", "osd.out", "osd.0.log", "radosgw.out", "client.rgw.log")
        )
        rgw.stop()
        if isinstance(e, RGWStartupFailed | subprocess.TimeoutExpired | RuntimeError):
            raise RGWStartupFailed(f"{e}\n{logs}") from e
        raise
    rgw.startup_seconds = time.monotonic() - began
    return rgw


def _wait_for_s3(rgw: RGW, deadline: float, respawn_osd: Callable[[], subprocess.Popen[bytes]]) -> None:
    """Until the gateway answers HTTP (any status); fail early if it died.

    The OSD's first commands to the monitor (as it registers in the CRUSH
    map) sometimes go out before its monitor client holds the cluster's fsid
    ("wrong fsid", seen here about one start in three with cephx off); the
    OSD then exits at once. Starting it again works: up to 5 times."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    respawns = 0
    while True:
        osd = rgw.processes["osd"]
        if osd.poll() is not None and respawns < 5:
            respawns += 1
            rgw.phases["osd-respawns"] = respawns
            rgw.processes["osd"] = respawn_osd()
        for name, proc in rgw.processes.items():
            if proc.poll() is not None:
                raise RGWStartupFailed(f"{name} exited with {proc.returncode} during start-up")
        try:
            with opener.open(rgw.endpoint + "/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers: serving
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RGWStartupFailed(f"radosgw did not answer on {rgw.endpoint} in time")
        time.sleep(0.05)


if __name__ == "__main__":
    gw = start_rgw()
    print(f"RGW up at {gw.endpoint} in {gw.startup_seconds:.2f} s ({gw.directory}) {gw.phases}")
    gw.stop()


# --- one gateway per test session ---------------------------------------------------

_shared: RGW | None = None
_shared_failure: str | None = None


def shared_gateway() -> RGW:
    """The session's gateway, started on first use (stopped by
    :func:`stop_shared_gateway`, which the storage tests' session fixture
    and ``atexit`` call). Skips the calling test when Ceph is not installed
    or the gateway cannot start — or, under ``CI=true``, fails it."""
    global _shared, _shared_failure
    import pytest

    from tests.clients.harness import missing_tool, running_in_ci

    if _shared is not None:
        return _shared
    if _shared_failure is None:
        for attempt in (1, 2):  # a second try from nothing if the first start failed
            try:
                _shared = start_rgw()
                return _shared
            except MissingTool as e:
                _shared_failure = f"missing:{e}"
                break
            except RGWStartupFailed as e:
                _shared_failure = f"failed:(attempt {attempt}) {e}"
    kind, _, detail = _shared_failure.partition(":")
    if kind == "missing":
        missing_tool(MissingTool(detail.split("'")[1] if "'" in detail else detail, "ceph"))
    if running_in_ci():
        pytest.fail(f"Ceph RGW did not start under CI=true: {detail}", pytrace=False)
    pytest.skip(f"SKIPPED, Ceph RGW did not start: {detail[:2000]}")


def stop_shared_gateway() -> None:
    global _shared
    if _shared is not None:
        gateway, _shared = _shared, None
        gateway.stop()


atexit.register(stop_shared_gateway)


def s3_driver(**extra: object) -> Any:
    """A wrapped S3 driver on the session's gateway, in a fresh, empty root
    directory of its own (tests never see each other's keys)."""
    from registry.storage.factory import create_driver

    gateway = shared_gateway()
    params = gateway.params(rootdirectory=f"t-{uuid.uuid4().hex[:12]}")
    params.update(extra)
    return create_driver("s3", params)
