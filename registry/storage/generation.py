"""A host-wide deletion generation per storage: what lets a process cache
immutable content in memory and still never serve what another process
deleted.

Content-addressed data never changes under its digest: a manifest's bytes, a
blob's size, a repository's link to a blob or a manifest revision can only
*disappear* (blob or manifest DELETE, garbage collection). So an in-process
cache of them (``registry.storage.cache.ContentCache``) is exact as long as
it learns of every deletion. Deletions happen in every worker process of the
registry and in other processes (``registry garbage-collect``), so the news
travels through one 8-byte counter in a shared memory file:

* the file lives in ``/dev/shm`` (or ``tempfile.gettempdir()`` when there is
  no ``/dev/shm``) and its name is derived from the storage's identity
  (``storage_identity``: the driver name and its location parameters, e.g.
  the real path of a filesystem root or an S3 endpoint, bucket and root
  directory), so every process on the host that uses the same storage maps
  the same counter with no coordination;
* every deletion bumps it after the storage deletion and before the deleter
  answers (``StorageDriverWrapper.delete`` does this for every content path;
  garbage collection also bumps before and after each batch);
* a reader notes the generation *before* its storage read, and its fill is
  refused when the generation moved meanwhile; a cache drops everything when
  it sees the generation change (deletions are rare).

The bump is a read-modify-write under ``flock`` (rare; two deleters never
lose an increment); a read is one aligned 8-byte load from the mapping (a few
hundred nanoseconds, no syscall). The file is made ``0600``: every process on
the storage must run as the same user (they write the same files anyway).
When the file cannot be made (no writable shared directory), the generation
is ``unavailable``: ``current()`` then changes on every call, so nothing is
ever cached.

Scope: one host. Several hosts on one storage must not rely on this (see
``registry.storage.cache``: the in-process layer is off when Redis is
configured).
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import mmap
import os
import struct
import tempfile
from collections.abc import Mapping
from typing import Any

__all__ = ["SHARED_DIR_ENV", "Generation", "host_path", "shared_directory", "storage_identity"]

_FORMAT = struct.Struct("=Q")
#: Parameters that say *where* a driver's data is (not how to reach it):
#: they, with the driver name, identify a storage.
LOCATION_PARAMS = (
    "rootdirectory",
    "regionendpoint",
    "endpoint",
    "region",
    "bucket",
    "container",
    "accountname",
    "prefix",
)


#: Environment variable naming the directory for host-wide state instead of
#: ``/dev/shm`` (tests and sandboxes; every process of one storage must see
#: the same value, so production leaves it unset).
SHARED_DIR_ENV = "TWISTED_REGISTRY_SHARED_DIR"


def shared_directory() -> str:
    """Where host-wide state lives: ``$TWISTED_REGISTRY_SHARED_DIR`` when
    set, else ``/dev/shm`` if usable, else the temp dir."""
    override = os.environ.get(SHARED_DIR_ENV)
    if override:
        os.makedirs(override, mode=0o700, exist_ok=True)
        return override
    shm = "/dev/shm"
    if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return tempfile.gettempdir()


def storage_identity(name: str, params: Mapping[str, Any] | None) -> str:
    """A stable text naming the storage a driver ``name`` with ``params``
    reaches: the name and its location parameters (a filesystem root by its
    real path). Credentials and tuning parameters are not part of it."""
    params = params or {}
    location: dict[str, str] = {}
    for key in LOCATION_PARAMS:
        value = params.get(key)
        if value is None:
            continue
        text = str(value)
        if key == "rootdirectory" and name == "filesystem":
            text = os.path.realpath(text)
        location[key] = text
    return name + ":" + json.dumps(location, sort_keys=True)


def host_path(identity: str, kind: str, directory: str | None = None) -> str:
    """The path of host-wide state ``kind`` (``generation``, ``locks``) of the
    storage named ``identity``: the same in every process on the host."""
    digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
    return os.path.join(directory or shared_directory(), f"registry-{kind}-{digest}")


class Generation:
    """The deletion generation of one storage, shared by every process on
    the host that opens it with the same identity (``shared``), or private
    to this process (``local``: for storages no other process can reach,
    such as the in-memory driver)."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._fd = -1
        self._map: mmap.mmap | None = None
        self._local = 0
        self._broken = itertools.count(1 << 62)
        if path is None:
            return
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            self.path = None
            self.available = False
            return
        try:
            if os.fstat(fd).st_size < _FORMAT.size:
                with _Locked(fd):
                    if os.fstat(fd).st_size < _FORMAT.size:
                        os.ftruncate(fd, _FORMAT.size)
            self._map = mmap.mmap(fd, _FORMAT.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except (OSError, ValueError):
            os.close(fd)
            self.path = None
            self.available = False
            return
        self._fd = fd

    #: False when a shared file was asked for and could not be made: every
    #: ``current()`` is then new (nothing can be cached safely).
    available = True

    @classmethod
    def shared(cls, identity: str, directory: str | None = None) -> Generation:
        """The host-wide generation of the storage named ``identity``."""
        return cls(host_path(identity, "generation", directory))

    @classmethod
    def local(cls) -> Generation:
        """A generation only this process sees."""
        return cls(None)

    def current(self) -> int:
        """The generation now (no syscall)."""
        m = self._map
        if m is not None:
            value: int = _FORMAT.unpack_from(m, 0)[0]
            return value
        if not self.available:
            return next(self._broken)
        return self._local

    def bump(self) -> int:
        """Advance the generation (after a deletion); returns the new value."""
        m = self._map
        if m is None:
            self._local += 1
            return self._local
        with _Locked(self._fd):
            value = (_FORMAT.unpack_from(m, 0)[0] + 1) & 0xFFFFFFFFFFFFFFFF
            _FORMAT.pack_into(m, 0, value)
        return int(value)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class _Locked:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
