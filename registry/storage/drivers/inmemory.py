"""The in-memory storage driver: the reference implementation and the test fake.

Objects live in a dict from path to a mutable buffer, in this process only
(nothing survives a restart, nothing is shared between processes). Every
method completes synchronously and returns an already-fired Deferred. It runs
the same conformance suite as every other driver, so its behaviour is the
contract's behaviour:

* a writer creates (``append=False``: empties) the object at its path when it
  opens and appends in place; ``close`` keeps the bytes for a later
  ``writer(path, append=True)``; ``cancel`` removes the object;
* ``put_content`` and ``move`` replace the object at once (readers that were
  already open keep reading the buffer they opened);
* an object cannot sit where a directory is, nor below another object
  (``DriverError``), exactly as on a filesystem.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    InvalidOffsetError,
    PathNotFoundError,
)

NAME = "inmemory"


class _Object:
    """One stored object: its bytes and modification time."""

    __slots__ = ("data", "mod_time")

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)
        self.mod_time = time.time()


@implementer(IFileReader)
class InMemoryReader:
    """Reads one object's buffer from an offset."""

    def __init__(self, obj: _Object, offset: int) -> None:
        self._obj = obj
        self._pos = offset

    def read(self, max_bytes: int) -> Deferred[bytes]:
        """Fire with up to ``max_bytes`` bytes, ``b""`` at the end."""
        chunk = bytes(self._obj.data[self._pos : self._pos + max_bytes])
        self._pos += len(chunk)
        return succeed(chunk)

    def close(self) -> Deferred[None]:
        """Nothing to release."""
        return succeed(None)


@implementer(IFileWriter)
class InMemoryWriter:
    """Appends to the object it was opened on."""

    def __init__(self, driver: InMemoryDriver, path: str, obj: _Object) -> None:
        self._driver = driver
        self._path = path
        self._obj = obj

    @property
    def size(self) -> int:
        """Bytes in the object so far."""
        return len(self._obj.data)

    def write(self, data: bytes) -> Deferred[None]:
        """Append at once; always ready for more."""
        self._obj.data += data
        self._obj.mod_time = time.time()
        return succeed(None)

    def close(self) -> Deferred[None]:
        """The bytes are already in place."""
        return succeed(None)

    def commit(self) -> Deferred[None]:
        """The bytes are already in place."""
        return succeed(None)

    def cancel(self) -> Deferred[None]:
        """Remove the object, unless something else replaced it meanwhile."""
        if self._driver._objects.get(self._path) is self._obj:
            del self._driver._objects[self._path]
        return succeed(None)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _prefix(path: str) -> str:
    return "/" if path == "/" else path + "/"


@implementer(IStorageDriver)
class InMemoryDriver:
    """A process-local store of byte objects. See the module docstring."""

    name = NAME

    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}

    # -- helpers -------------------------------------------------------------

    def _is_dir(self, path: str) -> bool:
        prefix = _prefix(path)
        return any(key.startswith(prefix) for key in self._objects)

    def _check_placeable(self, path: str) -> None:
        """Raise ``DriverError`` unless an object may be stored at ``path``."""
        if self._is_dir(path):
            raise DriverError(NAME, f"a directory exists at {path}")
        ancestor = _parent(path)
        while ancestor != "/":
            if ancestor in self._objects:
                raise DriverError(NAME, f"an object exists at {ancestor}, a parent of {path}")
            ancestor = _parent(ancestor)

    def _object(self, path: str) -> _Object:
        obj = self._objects.get(path)
        if obj is None:
            raise PathNotFoundError(path, NAME)
        return obj

    # -- IStorageDriver --------------------------------------------------------

    def get_content(self, path: str) -> Deferred[bytes]:
        """Fire with a copy of the object's bytes."""
        try:
            return succeed(bytes(self._object(path).data))
        except PathNotFoundError as exc:
            return fail(exc)

    def put_content(self, path: str, data: bytes) -> Deferred[None]:
        """Replace the object at ``path`` in one step."""
        self._check_placeable(path)
        self._objects[path] = _Object(data)
        return succeed(None)

    def reader(self, path: str, offset: int = 0) -> Deferred[IFileReader]:
        """Fire with a reader at ``offset``."""
        obj = self._object(path)
        if offset > len(obj.data):
            raise InvalidOffsetError(path, offset, NAME)
        return succeed(InMemoryReader(obj, offset))

    def writer(self, path: str, append: bool = False) -> Deferred[IFileWriter]:
        """Fire with a writer; ``append=False`` empties the object first."""
        if append:
            obj = self._object(path)
        else:
            self._check_placeable(path)
            obj = _Object()
            self._objects[path] = obj
        return succeed(InMemoryWriter(self, path, obj))

    def stat(self, path: str) -> Deferred[FileInfo]:
        """Fire with the object's or directory's ``FileInfo``."""
        obj = self._objects.get(path)
        if obj is not None:
            return succeed(FileInfo(path, len(obj.data), obj.mod_time, False))
        prefix = _prefix(path)
        times = [o.mod_time for k, o in self._objects.items() if k.startswith(prefix)]
        if not times:
            raise PathNotFoundError(path, NAME)
        return succeed(FileInfo(path, 0, max(times), True))

    def list(self, path: str) -> Deferred[list[str]]:
        """Fire with the sorted full paths of the direct children."""
        prefix = _prefix(path)
        children = {
            prefix + key[len(prefix) :].split("/", 1)[0]
            for key in self._objects
            if key.startswith(prefix)
        }
        if not children and path != "/":
            raise PathNotFoundError(path, NAME)
        return succeed(sorted(children))

    def move(self, source: str, dest: str) -> Deferred[None]:
        """Move an object, replacing the destination object."""
        obj = self._object(source)
        if source == dest:
            return succeed(None)
        self._check_placeable(dest)
        del self._objects[source]
        self._objects[dest] = obj
        return succeed(None)

    def delete(self, path: str) -> Deferred[None]:
        """Delete an object or every object below a directory."""
        if path in self._objects:
            del self._objects[path]
            return succeed(None)
        prefix = _prefix(path)
        doomed = [key for key in self._objects if key.startswith(prefix)]
        if not doomed and path != "/":
            raise PathNotFoundError(path, NAME)
        for key in doomed:
            del self._objects[key]
        return succeed(None)

    def walk(self, path: str) -> Deferred[list[FileInfo]]:
        """Fire with everything below ``path``, depth-first, sorted per level."""
        prefix = _prefix(path)
        below = {k: o for k, o in self._objects.items() if k.startswith(prefix)}
        if not below and path != "/":
            raise PathNotFoundError(path, NAME)
        # Build the tree of segments, then emit it depth-first.
        tree: dict[str, Any] = {}
        for key in below:
            node = tree
            for seg in key[len(prefix) :].split("/"):
                node = node.setdefault(seg, {})
        out: list[FileInfo] = []

        def emit(node: dict[str, Any], base: str) -> float:
            newest = 0.0
            for seg in sorted(node):
                full = base + seg
                obj = below.get(full)
                if obj is not None:
                    out.append(FileInfo(full, len(obj.data), obj.mod_time, False))
                    newest = max(newest, obj.mod_time)
                else:
                    index = len(out)
                    out.append(FileInfo(full, 0, 0.0, True))
                    mod_time = emit(node[seg], full + "/")
                    out[index] = FileInfo(full, 0, mod_time, True)
                    newest = max(newest, mod_time)
            return newest

        emit(tree, prefix)
        return succeed(out)

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """In-memory objects have no URL."""
        return succeed(None)


def create(params: Mapping[str, Any], reactor: Any = None) -> InMemoryDriver:
    """Build the driver. It takes no parameters; any given are ignored with a
    warning naming them."""
    from registry.storage.factory import warn_unknown_params

    warn_unknown_params(NAME, params, known=())
    return InMemoryDriver()
