"""One upstream download per blob on this host, whichever worker process
(``http.workers``) the pulls land on.

:class:`registry.proxy.tee.BlobFetch` shares one download among the pulls
of one process. Worker processes share the listening socket, so concurrent
pulls of one blob are spread over them; without more, each worker would
fetch the blob from the upstream once. :class:`HostFlights` is a lock per
blob digest shared by every process on the host that serves the same
storage (the same directory, derived from the storage's identity, as
:mod:`registry.storage.hostlock` does for uploads):

* the process holding a blob's lock is the one fetching it (it tees the
  download to its own clients and into storage, and releases the lock once
  the flight has ended: the blob is then stored, or the flight failed);
* a pull in another process waits (polling every ``poll_s``, never blocking
  the reactor) until the lock is free, then serves the stored blob, or
  (the other flight failed) starts its own flight;
* the lock is ``flock(LOCK_EX | LOCK_NB)`` on a file named after the
  digest; the kernel drops it when its holder dies, so a killed worker
  blocks nobody; the holder unlinks the file before closing it, and a
  contender that locked a file unlinked meanwhile tries again (two holders
  never hold two inodes of one name).

Clients of a waiting worker receive the blob once it is stored (their
response starts then), not as it arrives: the bytes in flight live in
another process.
"""

from __future__ import annotations

import hashlib
import os
from typing import Callable

from registry.digest import Digest
from registry.storage.hostlock import try_lock_file, unlock_file

__all__ = ["HostFlights", "POLL_S"]

#: Seconds between two looks at a blob another process is fetching.
POLL_S = 0.05


class HostFlights:
    """Per-digest flight locks shared by the processes using ``directory``."""

    def __init__(self, directory: str, poll_s: float = POLL_S) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.poll_s = poll_s

    def _path(self, d: Digest) -> str:
        return os.path.join(self.directory, hashlib.sha256(str(d).encode()).hexdigest())

    def try_acquire(self, d: Digest) -> Callable[[], None] | None:
        """The release function of blob ``d``'s lock, or None when another
        holder (another process, or another flight of this one) has it.
        Does not wait: a few system calls on a file in ``directory``."""
        path = self._path(d)
        fd = try_lock_file(path)
        if fd is None:
            return None
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            unlock_file(path, fd)

        return release
