"""Long-running helper processes for the benchmarks and the client tests.

Synchronous process management (no reactor involved), with no network
beyond 127.0.0.1:

* :class:`ManagedProcess` runs a long-lived process in its own session with
  its output in a log file, and stops it (and only its own process group);
  :func:`wait_until` polls for readiness and reports the output on failure.
* :class:`DockerDaemon` runs ``dockerd`` on vfs storage without bridge or
  iptables, in a temporary directory, and runs the ``docker`` CLI against it.
* :func:`run` runs a client command to completion (proxies removed from its
  environment; :class:`CommandFailed` with its output when it fails).
* :func:`require` finds a command or raises :class:`MissingTool` naming the
  Debian package.

``tests/clients/harness.py`` re-exports these for the tests; the ``versus``
benchmark (``registry/bench/versus.py``) uses :class:`DockerDaemon` for its
docker push/pull figure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = [
    "SYSTEM_LEFTOVERS", "CommandFailed", "DockerDaemon", "ManagedProcess", "MissingTool", "StartupFailed",
    "SystemLeftovers", "child_env", "mounts_under", "remove_tree", "require", "run", "wait_until",
]

# Variables that must not leak into the clients: everything here is loopback.
_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class MissingTool(Exception):
    """A command the tests need is not installed; carries the Debian package."""

    def __init__(self, command: str, package: str) -> None:
        super().__init__(
            f"{command!r} not found: Debian package {package!r} is not installed "
            f"(scripts/install-system-deps.sh installs it; `make system-deps`)"
        )
        self.command = command
        self.package = package


class CommandFailed(Exception):
    """A client command exited non-zero; the message holds its full output."""

    def __init__(self, argv: Sequence[str], result: subprocess.CompletedProcess[str]) -> None:
        super().__init__(
            f"command failed (exit {result.returncode}): {' '.join(argv)}\n"
            f"--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"
        )
        self.argv = list(argv)
        self.result = result


class StartupFailed(Exception):
    """A daemon did not come up in time; the message holds its output."""


def require(command: str, package: str) -> str:
    """Return the absolute path of ``command``, or raise :class:`MissingTool`."""
    path = shutil.which(command)
    if path is None:
        raise MissingTool(command, package)
    return path


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a child process: ours without proxies, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in _PROXY_VARIABLES
    }
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 180,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion and return its result.

    ``input`` is written to its stdin (else stdin is ``/dev/null``).
    Raises :class:`CommandFailed` (with stdout and stderr in the message) when
    ``check`` is true and the command exits non-zero.
    """
    result = subprocess.run(
        list(argv),
        env=child_env(env),
        stdin=subprocess.DEVNULL if input is None else None,
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise CommandFailed(argv, result)
    return result


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path``, deepest first."""
    root = str(path.resolve())
    found = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            mount_point = line.split()[1].replace("\\040", " ")
            if mount_point == root or mount_point.startswith(root + "/"):
                found.append(mount_point)
    return sorted(found, key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Remove ``path`` recursively, unmounting anything still mounted in it."""
    if not path.exists():
        return
    for mount_point in mounts_under(path):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)

    def make_writable_and_retry(
        function: Callable[[str], object], failed_path: str, _exc: object
    ) -> None:
        os.chmod(os.path.dirname(failed_path), 0o700)
        try:
            os.chmod(failed_path, 0o700)
        except OSError:
            pass
        function(failed_path)

    shutil.rmtree(path, onerror=make_writable_and_retry)


# Paths outside the fixtures' temp dirs that the clients create whatever
# their options say: dockerd's trust key and plugin socket dir, and the blob
# info cache that skopeo (as root) keeps in /var/lib/containers/cache.
SYSTEM_LEFTOVERS = (
    Path("/etc/docker/key.json"),
    Path("/run/docker"),
    Path("/var/lib/containers"),
)


class SystemLeftovers:
    """Remembers which of :data:`SYSTEM_LEFTOVERS` are absent, to remove them later."""

    def __init__(self, paths: Sequence[Path] = SYSTEM_LEFTOVERS) -> None:
        self.absent = [path for path in paths if not os.path.lexists(path)]

    def remove(self) -> None:
        """Remove those that the session created (nothing that was there before)."""
        for path in self.absent:
            if path.is_dir() and not path.is_symlink():
                remove_tree(path)
            elif os.path.lexists(path):
                path.unlink()


class ManagedProcess:
    """A long-running child in its own session, output appended to a log file."""

    def __init__(
        self,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            cwd=cwd,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The process id of the child."""
        return self.popen.pid

    def alive(self) -> bool:
        """Whether the child is still running."""
        return self.popen.poll() is None

    def output(self, tail: int = 20000) -> str:
        """The last ``tail`` characters the process wrote (stdout and stderr)."""
        self._log.flush()
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-tail:].decode("utf-8", "replace")

    def stop(self, timeout: float = 20) -> None:
        """Stop the child: SIGTERM, then SIGKILL; then kill what is left of its group."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        # Children it started (dockerd's containerd) share its process group.
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess,
    interval: float = 0.1,
) -> None:
    """Poll ``predicate`` until it is true.

    Raises :class:`StartupFailed` with the process's output if the process
    exits first or ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if not process.alive():
            raise StartupFailed(
                f"{what}: process exited with {process.popen.returncode} before it was ready\n"
                f"command: {' '.join(process.argv)}\n--- output ---\n{process.output()}"
            )
        if time.monotonic() > deadline:
            raise StartupFailed(
                f"{what}: not ready after {timeout:.0f} s\n"
                f"command: {' '.join(process.argv)}\n--- output ---\n{process.output()}"
            )
        time.sleep(interval)


class DockerDaemon:
    """A private ``dockerd`` (vfs storage, no bridge, no iptables) and its CLI.

    dockerd starts its own containerd (under the exec root) and bind-mounts
    its data root onto itself; :meth:`stop` ends both and unmounts.
    """

    def __init__(self, workdir: Path) -> None:
        self.dockerd = require("dockerd", "docker.io")
        # Prefer the package's own CLI (same version as the daemon) over any
        # other ``docker`` earlier on PATH.
        self.cli = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else require(
            "docker", "docker.io"
        )
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.socket = workdir / "docker.sock"
        self.data_root = workdir / "data"
        self.exec_root = workdir / "exec"
        self.client_config = workdir / "client-config"
        self.client_config.mkdir(exist_ok=True)
        daemon_config = workdir / "daemon.json"
        daemon_config.write_text("{}\n")
        self.argv = [
            self.dockerd,
            "--config-file", str(daemon_config),
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--storage-driver=vfs",
            "--data-root", str(self.data_root),
            "--exec-root", str(self.exec_root),
            "--host", f"unix://{self.socket}",
            "--pidfile", str(workdir / "docker.pid"),
        ]  # fmt: skip
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 60) -> None:
        """Start the daemon and wait until ``docker version`` reaches it.

        Raises :class:`StartupFailed` with the daemon's output otherwise.
        """
        self.process = ManagedProcess(self.argv, self.workdir / "dockerd.log")

        def answers() -> bool:
            if not self.socket.exists():
                return False
            return self.docker("version", check=False, timeout=10).returncode == 0

        try:
            wait_until(answers, timeout=timeout, what="dockerd", process=self.process, interval=0.2)
        except BaseException:
            self.stop()
            raise

    def docker(
        self, *args: str, check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        """Run ``docker -H unix://<socket> <args>`` and return its result."""
        return run(
            [self.cli, "-H", f"unix://{self.socket}", *args],
            env={"DOCKER_CONFIG": str(self.client_config)},
            check=check,
            timeout=timeout,
        )

    def output(self) -> str:
        """The daemon's log so far."""
        return self.process.output() if self.process else ""

    def login(
        self, host: str, user: str, password: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``docker login --password-stdin`` (credentials land in the CLI's
        private ``config.json``; the daemon does the HTTP)."""
        return run(
            [self.cli, "-H", f"unix://{self.socket}", "login", "--username", user, "--password-stdin", host],
            env={"DOCKER_CONFIG": str(self.client_config)},
            check=check,
            timeout=60,
            input=password + "\n",
        )

    def logout(self, host: str) -> subprocess.CompletedProcess[str]:
        """``docker logout``: forget the credentials for ``host``."""
        return self.docker("logout", host)

    def image_id(self, reference: str) -> str:
        """The local image ID (``sha256:<config digest>``) of ``reference``."""
        return self.docker("image", "inspect", "--format", "{{.Id}}", reference).stdout.strip()

    def image_diff_ids(self, reference: str) -> list[str]:
        """The uncompressed layer digests (``RootFS.Layers``) of a local image."""
        out = self.docker(
            "image", "inspect", "--format", "{{json .RootFS.Layers}}", reference
        ).stdout
        layers: list[str] = json.loads(out)
        return layers

    def load(self, archive: Path) -> None:
        """``docker load`` a ``docker save``-format tarball."""
        self.docker("load", "--input", str(archive))

    def stop(self) -> None:
        """Stop the daemon (and its containerd) and unmount what it mounted."""
        if self.process is not None:
            self.process.stop(timeout=30)
        for mount_point in mounts_under(self.workdir):
            subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
