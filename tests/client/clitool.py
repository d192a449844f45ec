"""Running the ``registry-client`` command in tests: in this process on the
test's reactor (fast), or as the installed console script (a real process,
optionally with a terminal as stderr)."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys

from twisted.internet import reactor

from registry.client.cli import execute
from tests.clients.harness import REPO_ROOT


class Output(io.StringIO):
    """A captured stream that claims (or not) to be a terminal."""

    def __init__(self, tty: bool = False) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


async def cli(*args: str, stderr_tty: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the command in this process (on the test's reactor): what ``main`` does
    around the reactor, minus the process start."""
    out, err = Output(), Output(stderr_tty)
    code = await execute(reactor, list(args), out, err)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def cli_process(*args: str, stderr_tty: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the installed ``registry-client`` console script as a process."""
    script = REPO_ROOT / ".venv" / "bin" / "registry-client"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "registry.client.cli"]
    if not stderr_tty:
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=120)
    master, slave = pty.openpty()
    try:
        process = subprocess.run([*command, *args], stdout=subprocess.PIPE, stderr=slave, text=True, timeout=120)
        os.close(slave)
        slave = -1
        chunks = []
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        return subprocess.CompletedProcess(process.args, process.returncode, process.stdout,
                                           b"".join(chunks).decode("utf-8", "replace"))
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
