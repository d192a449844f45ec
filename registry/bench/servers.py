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

__all__ = ["Target", "distribution_argv", "free_port", "our_argv", "start"]


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
