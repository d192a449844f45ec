"""The storage driver contract: the one interface every backend implements.

A driver is a filesystem-like store of byte objects addressed by paths. It
knows paths and bytes only — never digests, manifests or repositories; the
registry's data model (``registry.storage``) is built on top of it.

Every method returns a ``Deferred``. Failures are the typed errors below;
``registry.storage.wrapper.StorageDriverWrapper`` validates paths and turns any
other exception a driver raises into ``DriverError``, so callers only ever see
``StorageError`` subclasses.

Paths
-----
A path is ``/`` followed by one or more segments joined by ``/``. A segment is
one or more of ``A-Z a-z 0-9 . _ : -``, and is never ``.`` or ``..``. No empty
segments, no trailing slash, no NUL, nothing outside ASCII. The root ``/`` is
accepted only by ``list``, ``walk`` and ``delete`` (never by methods that name
an object).

Directories are implicit, as in an object store: a directory exists exactly
while some object exists below it. Deleting or moving the last object out of
a directory makes the directory (and emptied ancestors) disappear.

Durability
----------
Once ``put_content``, ``move`` or a writer's ``commit`` has fired, the object
survives a crash of the process and of the machine — except a
``put_content(..., durable=False)``: a *scratch* object, for state the caller
can re-derive (an upload's hash states and bookkeeping). A scratch put is as
atomic and as visible as any other and survives a crash of the process, but
a crash of the machine may leave the old content or none at its path. Drivers
whose every write is durable anyway (object stores) ignore the flag for
durability. The caller of a scratch put owns the layout of its scratch
objects: it never puts one where a directory is or below an object, so a
driver need not check that (one whose check costs requests, as an object
store's listings, skips it; the rule still holds for every other write).

Staged writes (optional capability)
-----------------------------------
A driver that declares ``staged_writes = True`` also provides
``IStagedWriting.staged_writer(path)``: a writer whose bytes are invisible
at ``path`` (to ``stat``, readers, ``list`` and ``walk``) until ``commit``,
which puts them there atomically and durably, replacing whatever is there.
``cancel`` (and ``close``: a staged object cannot be continued) leaves
nothing behind and touches nothing at ``path``: an object another writer
committed there stays as it is. The registry uses it to stream a blob whose
digest it knows before the bytes arrive straight to the blob's path,
committing only once the hash verified (S3: a multipart upload at the key,
completed or aborted). Drivers without it keep the upload-then-``move``
path; the wrapper reports the capability as ``staged_writes``.
"""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

# --- errors -----------------------------------------------------------------


class StorageError(Exception):
    """Base class of every error a storage driver reports."""

    driver: str = ""


class PathNotFoundError(StorageError):
    """The path names no object (or, for ``list``/``walk``, no directory)."""

    def __init__(self, path: str, driver: str = "") -> None:
        super().__init__(f"{driver or 'storage'}: path not found: {path}")
        self.path = path
        self.driver = driver


class InvalidPathError(StorageError):
    """The path is outside the grammar of safe paths (see module docstring)."""

    def __init__(self, path: str, driver: str = "", reason: str = "") -> None:
        detail = f" ({reason})" if reason else ""
        super().__init__(f"{driver or 'storage'}: invalid path {path!r}{detail}")
        self.path = path
        self.driver = driver
        self.reason = reason


class InvalidOffsetError(StorageError):
    """A reader was asked to start past the end of the object, or below 0."""

    def __init__(self, path: str, offset: int, driver: str = "") -> None:
        super().__init__(f"{driver or 'storage'}: invalid offset {offset} for {path}")
        self.path = path
        self.offset = offset
        self.driver = driver


class DriverError(StorageError):
    """Anything else that went wrong inside a driver; names the driver."""

    def __init__(self, driver: str, detail: str) -> None:
        super().__init__(f"{driver}: {detail}")
        self.driver = driver
        self.detail = detail


# --- path grammar -----------------------------------------------------------

_SEGMENT = r"[A-Za-z0-9._:-]+"
_PATH_RE = re.compile(rf"^(?:/{_SEGMENT})+$")


def check_path(path: object, allow_root: bool = False) -> str:
    """Return ``path`` if it is a valid driver path, else raise ``InvalidPathError``.

    Pure function; the wrapper calls it for every path argument.
    """
    if not isinstance(path, str):
        raise InvalidPathError(repr(path), reason="not a string")
    if allow_root and path == "/":
        return path
    if not _PATH_RE.match(path):
        raise InvalidPathError(path, reason="must be /segment[/segment...] of A-Z a-z 0-9 . _ : -")
    for seg in path.split("/")[1:]:
        if seg in (".", ".."):
            raise InvalidPathError(path, reason="'.' and '..' segments are not allowed")
    return path


# --- values -----------------------------------------------------------------


@dataclass(frozen=True)
class FileInfo:
    """What ``stat`` and ``walk`` report about one path."""

    path: str
    size: int  # bytes for objects; 0 for directories
    mod_time: float  # seconds since the epoch
    is_dir: bool


# --- interfaces -------------------------------------------------------------


class IFileReader(Interface):
    """A sequential reader over one object, from the offset it was opened at."""

    def read(max_bytes: int) -> "Deferred[bytes]":
        """Fire with the next chunk: at least 1 and at most ``max_bytes`` bytes,
        or ``b""`` at the end of the object. Pull-based: the caller asks for the
        next chunk only when it can take it, which is the backpressure."""

    def close() -> "Deferred[None]":
        """Release what the reader holds. Idempotent."""


class IZeroCopyReader(IFileReader):
    """An optional capability of a reader over a regular local file (the
    filesystem driver's): it sends bytes of its object straight to a socket
    with ``os.sendfile``, so they never pass through Python.

    A caller uses either ``read`` or ``send_to`` on one reader, not both, and
    one ``send_to`` at a time; ``close`` waits for nothing, so the caller
    closes the reader only once its last ``send_to`` has fired."""

    def send_to(socket_fd: int, offset: int, count: int) -> "Deferred[int]":
        """Send up to ``count`` (>= 1) bytes of the object from ``offset``
        (from the start of the object, not from where the reader was opened)
        to the *non-blocking* stream socket ``socket_fd``, as many as the
        socket takes without blocking (a driver may stop earlier, to bound
        the time one call holds a thread). The file is read in the driver's
        thread pool: a cold disk blocks a pool thread, never the reactor.

        Fires with the bytes sent: at least 1; 0 when the socket cannot take
        any now (wait until it is writable, then call again); -1 when the
        peer is gone (``EPIPE``, ``ECONNRESET``: nothing more can be sent).
        Fails with ``InvalidOffsetError`` when ``offset`` is at or past the
        end of the object (it is shorter than the caller thinks)."""


class IFileWriter(Interface):
    """A writer that appends to one object and then commits or cancels it.

    Bytes written are not visible to readers of the path until ``commit``
    (drivers may make them visible earlier; callers must not rely on either).
    A writer opened with ``append=True`` on a path whose earlier writer was
    ``close``d continues at its end — possibly in another process.
    """

    size = Attribute("Total bytes in the object so far, appended ones included.")

    def write(data: bytes) -> "Deferred[None]":
        """Append ``data``. Fires when the writer can take more; callers wait
        for it before the next ``write`` (this is the backpressure). Fails with
        ``DriverError`` if the writer was committed, cancelled or closed."""

    def close() -> "Deferred[None]":
        """Flush and release, keeping what was written for a later append."""

    def commit() -> "Deferred[None]":
        """Flush and make the object final and durable at its path."""

    def cancel() -> "Deferred[None]":
        """Discard the object being written; nothing is left at the path."""


class IStagedWriting(Interface):
    """The optional staged-write capability of a driver (see "Staged
    writes" in the module docstring); such a driver has
    ``staged_writes = True``."""

    def staged_writer(path: str) -> "Deferred[IFileWriter]":
        """Fire with a new, empty writer for ``path`` whose bytes nobody sees
        until ``commit`` (atomic, durable when it fires, replacing what is at
        ``path``). ``cancel`` or ``close`` discards them and leaves ``path``
        as it was. ``DriverError`` if ``path`` is a directory or lies below
        an object: when it is opened, or (a driver may check while the bytes
        arrive) from a ``write`` or ``commit`` at the latest, nothing left
        behind."""


class IStorageDriver(Interface):
    """A filesystem-like store of byte objects. See the module docstring."""

    name = Attribute("The driver's registered name, e.g. 'filesystem'.")

    def get_content(path: str) -> "Deferred[bytes]":
        """Fire with the whole object (meant for small objects: links, states,
        manifests). Fails with ``PathNotFoundError``."""

    def put_content(path: str, data: bytes, durable: bool = True) -> "Deferred[None]":
        """Store ``data`` at ``path`` atomically: a concurrent or later reader
        sees the old or the new content, never a mix. Creates parents.
        Durable when it fires unless ``durable=False`` (a scratch object, see
        the module docstring)."""

    def reader(path: str, offset: int = 0) -> "Deferred[IFileReader]":
        """Fire with a reader positioned at ``offset``. ``offset`` equal to the
        size gives a reader at EOF. Fails with ``PathNotFoundError`` or
        ``InvalidOffsetError`` (negative or past the end)."""

    def writer(path: str, append: bool = False) -> "Deferred[IFileWriter]":
        """Fire with a writer. ``append=False`` starts a new, empty object;
        ``append=True`` continues after the bytes already at ``path``
        (``PathNotFoundError`` if there are none)."""

    def stat(path: str) -> "Deferred[FileInfo]":
        """Fire with the ``FileInfo`` of an object or directory, or fail with
        ``PathNotFoundError``."""

    def list(path: str) -> "Deferred[list[str]]":
        """Fire with the full paths of the direct children of directory
        ``path``, sorted. ``PathNotFoundError`` if it is not a directory
        (``/`` always is one; an empty store lists as ``[]``)."""

    def move(source: str, dest: str) -> "Deferred[None]":
        """Move an object, replacing whatever is at ``dest`` (atomically where
        the backend allows). ``PathNotFoundError`` if ``source`` is absent or
        is a directory (only objects move); ``DriverError`` if ``dest`` is a
        directory or lies below an object. Moving onto itself is a no-op."""

    def delete(path: str) -> "Deferred[None]":
        """Delete an object or a whole directory tree. ``PathNotFoundError`` if
        nothing is there, except for ``/``, which always exists: deleting it
        empties the store."""

    def walk(path: str) -> "Deferred[builtins.list[FileInfo]]":
        """Fire with every object and directory below ``path`` (not ``path``
        itself), depth-first in sorted order. ``PathNotFoundError`` if
        ``path`` is not a directory."""

    def redirect_url(path: str, method: str = "GET") -> "Deferred[str | None]":
        """Fire with a URL the client may fetch the object from directly
        (a signed URL), or ``None`` when the driver cannot or will not."""

    def close() -> "Deferred[None]":
        """Release what the driver holds (thread pools, child processes),
        waiting for work in progress; fire once released. The application
        owns this lifecycle and calls it once, when it stops
        (``registry.storage.wrapper.DriverService``); drivers install no
        shutdown triggers of their own. Later calls may fail with
        ``DriverError``; calling ``close`` again is harmless."""
