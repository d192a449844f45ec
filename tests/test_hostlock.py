"""Host-wide upload locks (registry.storage.hostlock): another process
holding an upload's lock makes us wait; its release or its death (SIGKILL)
lets us in; different uploads do not exclude each other."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from registry.storage.hostlock import HostUploadLocks

HOLDER = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task, threads
    from registry.storage.hostlock import HostUploadLocks

    async def main(reactor):
        locks = HostUploadLocks(sys.argv[1], reactor)
        release = await locks.acquire("repo/a", "upload-1")
        print("held", flush=True)
        await threads.deferToThread(sys.stdin.readline)
        await release()
        print("released", flush=True)

    task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
    """
)


def start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "held\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


async def acquired_within(locks: HostUploadLocks, seconds: float, name: str = "repo/a", upload: str = "upload-1") -> bool:
    """Whether the lock is ours within ``seconds`` (the wait is cancelled otherwise)."""
    attempt: Deferred[object] = Deferred.fromCoroutine(locks.acquire(name, upload))
    timer = reactor.callLater(seconds, attempt.cancel)  # type: ignore[attr-defined]
    try:
        release = await attempt
    except Exception:
        return False
    timer.cancel()
    await release()  # type: ignore[operator]
    return True


@pytest_twisted.ensureDeferred
async def test_another_process_holding_the_lock_makes_us_wait_until_it_releases(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        locks = HostUploadLocks(str(tmp_path), reactor, poll_s=0.005)
        assert not await acquired_within(locks, 0.3)
        assert await acquired_within(locks, 1.0, upload="upload-2")  # another upload: free
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write("go\n")
        holder.stdin.flush()
        assert holder.stdout.readline() == "released\n"
        assert await acquired_within(locks, 2.0)
    finally:
        holder.kill()
        holder.wait()
    assert os.listdir(tmp_path) == []  # every lock file removed by its holder


@pytest_twisted.ensureDeferred
async def test_a_killed_holder_releases_at_once(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    locks = HostUploadLocks(str(tmp_path), reactor, poll_s=0.005)
    assert not await acquired_within(locks, 0.2)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    assert await acquired_within(locks, 2.0)
    assert time.monotonic() - started < 1.0


@pytest_twisted.ensureDeferred
async def test_requests_of_one_process_queue_in_order(tmp_path: Path) -> None:
    locks = HostUploadLocks(str(tmp_path), reactor, poll_s=0.005)
    order: list[str] = []

    async def hold(label: str, seconds: float) -> None:
        release = await locks.acquire("repo/a", "u")
        order.append(label + "+")
        await deferLater(reactor, seconds, lambda: None)
        order.append(label + "-")
        await release()

    first = Deferred.fromCoroutine(hold("a", 0.05))
    second = Deferred.fromCoroutine(hold("b", 0.0))
    await first
    await second
    assert order == ["a+", "a-", "b+", "b-"]
    assert locks.held() == 0


def test_directory_is_private(tmp_path: Path) -> None:
    HostUploadLocks(str(tmp_path / "locks"), reactor)
    assert (tmp_path / "locks").stat().st_mode & 0o777 == 0o700


@pytest.mark.parametrize("name, upload", [("a", "b\0c"), ("a\0b", "c")])
def test_names_do_not_collide(tmp_path: Path, name: str, upload: str) -> None:
    locks = HostUploadLocks(str(tmp_path), reactor)
    assert locks._path(name, upload) != locks._path("a", "b")


def test_without_redis_every_storage_but_inmemory_gets_host_locks(tmp_path: Path) -> None:
    """The registry's wiring: worker processes on one storage share the locks."""
    from registry.app import _shared_state
    from registry.config import load_config

    on_disk = load_config(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}\n", environ={})
    _, _, lock = _shared_state(on_disk, reactor)
    assert isinstance(lock, HostUploadLocks)
    again = _shared_state(on_disk, reactor)[2]
    assert again.directory == lock.directory  # another process computes the same place
    in_memory = load_config("version: 0.1\nstorage:\n  inmemory: {}\n", environ={})
    assert _shared_state(in_memory, reactor)[2] is None
