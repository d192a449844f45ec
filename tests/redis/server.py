"""A throwaway Redis: Debian's ``redis-server`` on a free 127.0.0.1 port,
nothing persisted, stopped by the test (``RedisServer.stop``)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time

from registry.bench.servers import free_port


class RedisServer:
    def __init__(self, password: str | None = None) -> None:
        exe = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.port = free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="registry-redis-")
        args = [
            exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning",
        ]
        if password:
            args += ["--requirepass", password]
        self.proc: subprocess.Popen[bytes] | None = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited: {self.proc.stderr.read().decode() if self.proc.stderr else ''}")
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start listening within 10 s")

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


def available() -> bool:
    return shutil.which("redis-server") is not None or shutil.which("/usr/bin/redis-server") is not None


def require_redis_server() -> None:
    """Skip the calling test loudly when ``redis-server`` is missing, or, under
    ``CI=true``, fail it (``tests.clients.harness.missing_tool``)."""
    if not available():
        from tests.clients.harness import MissingTool, missing_tool

        missing_tool(MissingTool("redis-server", "redis-server"))
