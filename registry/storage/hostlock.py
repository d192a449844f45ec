"""Upload locks shared by every process on this host (``IUploadLock``).

The registry's worker processes (``http.workers``), and any other registry
process on the host that serves the same storage, must never append to one
upload at the same time. Without ``redis`` (which shares locks between
hosts, ``registry.storage.redislock``) this lock does it for one host:

* requests of one upload inside one process first queue on a process-local
  ``DeferredLock`` (``ProcessLocks``), so one request per process at most
  contends for the host-wide lock;
* the host-wide lock is ``flock(LOCK_EX | LOCK_NB)`` on a file named after
  the upload (a hash of repository and id) in a directory that belongs to
  the storage (``directory``: under ``/dev/shm``, named from the storage's
  identity, so every process using that storage finds the same files);
  a busy lock is tried again every ``poll_s`` without blocking the reactor;
* the kernel drops a ``flock`` when its holder dies, so a worker killed
  while appending blocks nobody;
* the holder unlinks the file before closing it; a contender that locked a
  file that was unlinked meanwhile (its inode is no longer the path's)
  starts again, so two holders can never hold two different inodes of one
  name.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from typing import Any, Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import deferLater
from zope.interface import implementer

from registry.storage.interfaces import IUploadLock
from registry.storage.locks import ProcessLocks

__all__ = ["HostUploadLocks", "try_lock_file", "unlock_file"]

#: Seconds between two tries of a lock another process holds.
POLL_S = 0.01


def try_lock_file(path: str) -> int | None:
    """The descriptor holding the ``flock`` of the file at ``path`` (created
    if need be), or None when another holder has it. Never waits. A file its
    holder unlinked after we opened it is not the lock any more: try again
    on the path's new file."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def unlock_file(path: str, fd: int) -> None:
    """Release a lock of ``try_lock_file``: unlink the file, then close it
    (a contender that opened it meanwhile sees it unlinked and retries)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.close(fd)


@implementer(IUploadLock)
class HostUploadLocks:
    """Per-upload locks that exclude every process on the host using the
    same ``directory``."""

    def __init__(self, directory: str, reactor: Any = None, poll_s: float = POLL_S) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self._reactor = reactor
        self._poll_s = poll_s
        self._local = ProcessLocks()

    def _path(self, name: str, upload_id: str) -> str:
        key = hashlib.sha256(f"{name}\0{upload_id}".encode()).hexdigest()
        return os.path.join(self.directory, key)

    async def acquire(self, name: str, upload_id: str) -> Callable[[], "Deferred[None]"]:
        release_local = await self._local.acquire(name, upload_id)
        path = self._path(name, upload_id)
        try:
            while (fd := try_lock_file(path)) is None:
                await deferLater(self._reactor, self._poll_s, lambda: None)
        except BaseException:
            await release_local()
            raise
        released = False

        def release() -> "Deferred[None]":
            nonlocal released
            if released:
                return succeed(None)
            released = True
            unlock_file(path, fd)
            return release_local()

        return release

    def held(self) -> int:
        """Uploads with a lock in this process's table (held or waited for)."""
        return self._local.held()
