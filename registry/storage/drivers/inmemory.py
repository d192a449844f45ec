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

import builtins
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
from registry.storage.params import warn_unknown_params

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
            self._driver._remove(self._path)
        return succeed(None)


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _prefix(path: str) -> str:
    return "/" if path == "/" else path + "/"


def _ancestry(path: str) -> list[tuple[str, str]]:
    """(directory, child segment) pairs from the root down to ``path``."""
    segments = path.split("/")[1:]
    out = []
    directory = "/"
    for seg in segments:
        out.append((directory, seg))
        directory = _prefix(directory) + seg
    return out


@implementer(IStorageDriver)
class InMemoryDriver:
    """A process-local store of byte objects. See the module docstring.

    Besides the objects, a directory index maps each directory to its child
    segments and how many objects lie below each, so a directory exists
    exactly while that count is positive and every operation costs the size
    of the subtree it touches, not of the whole store."""

    name = NAME

    def __init__(self) -> None:
        self._objects: dict[str, _Object] = {}
        self._children: dict[str, dict[str, int]] = {}

    # -- index ---------------------------------------------------------------

    def _store(self, path: str, obj: _Object) -> None:
        if path not in self._objects:
            for directory, seg in _ancestry(path):
                children = self._children.setdefault(directory, {})
                children[seg] = children.get(seg, 0) + 1
        self._objects[path] = obj

    def _remove(self, path: str) -> None:
        del self._objects[path]
        for directory, seg in _ancestry(path):
            children = self._children[directory]
            children[seg] -= 1
            if not children[seg]:
                del children[seg]
                if not children:
                    del self._children[directory]

    def _keys_under(self, directory: str) -> list[str]:
        """Every object path below ``directory``, depth-first, sorted."""
        out: list[str] = []
        stack = [directory]
        while stack:
            current = stack.pop()
            base = _prefix(current)
            for seg in sorted(self._children.get(current, {}), reverse=True):
                full = base + seg
                if full in self._objects:
                    out.append(full)
                else:
                    stack.append(full)
        return out

    # -- helpers -------------------------------------------------------------

    def _is_dir(self, path: str) -> bool:
        return path in self._children

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

    def put_content(self, path: str, data: bytes, durable: bool = True) -> Deferred[None]:
        """Replace the object at ``path`` in one step (``durable`` means
        nothing to memory)."""
        self._check_placeable(path)
        self._store(path, _Object(data))
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
            self._store(path, obj)
        return succeed(InMemoryWriter(self, path, obj))

    def stat(self, path: str) -> Deferred[FileInfo]:
        """Fire with the object's or directory's ``FileInfo``."""
        obj = self._objects.get(path)
        if obj is not None:
            return succeed(FileInfo(path, len(obj.data), obj.mod_time, False))
        if not self._is_dir(path):
            raise PathNotFoundError(path, NAME)
        newest = max(self._objects[k].mod_time for k in self._keys_under(path))
        return succeed(FileInfo(path, 0, newest, True))

    def list(self, path: str) -> Deferred[list[str]]:
        """Fire with the sorted full paths of the direct children."""
        children = self._children.get(path)
        if children is None:
            if path != "/":
                raise PathNotFoundError(path, NAME)
            return succeed([])
        base = _prefix(path)
        return succeed([base + seg for seg in sorted(children)])

    def move(self, source: str, dest: str) -> Deferred[None]:
        """Move an object, replacing the destination object."""
        obj = self._object(source)
        if source == dest:
            return succeed(None)
        self._check_placeable(dest)
        self._remove(source)
        self._store(dest, obj)
        return succeed(None)

    def delete(self, path: str) -> Deferred[None]:
        """Delete an object or every object below a directory."""
        if path in self._objects:
            self._remove(path)
            return succeed(None)
        if not self._is_dir(path):
            if path != "/":
                raise PathNotFoundError(path, NAME)
            return succeed(None)
        for key in self._keys_under(path):
            self._remove(key)
        return succeed(None)

    def walk(self, path: str) -> Deferred[builtins.list[FileInfo]]:
        """Fire with everything below ``path``, depth-first, sorted per level."""
        if not self._is_dir(path):
            if path != "/":
                raise PathNotFoundError(path, NAME)
            return succeed([])
        out: list[FileInfo] = []

        def emit(directory: str) -> float:
            newest = 0.0
            base = _prefix(directory)
            for seg in sorted(self._children.get(directory, {})):
                full = base + seg
                obj = self._objects.get(full)
                if obj is not None:
                    out.append(FileInfo(full, len(obj.data), obj.mod_time, False))
                    newest = max(newest, obj.mod_time)
                else:
                    index = len(out)
                    out.append(FileInfo(full, 0, 0.0, True))
                    mod_time = emit(full)
                    out[index] = FileInfo(full, 0, mod_time, True)
                    newest = max(newest, mod_time)
            return newest

        emit(path)
        return succeed(out)

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """In-memory objects have no URL."""
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Nothing to release (the objects live as long as the driver)."""
        return succeed(None)


def create(params: Mapping[str, Any], reactor: Any = None) -> InMemoryDriver:
    """Build the driver. It takes no parameters; any given are ignored with a
    warning naming them."""
    warn_unknown_params(NAME, params, known=())
    return InMemoryDriver()
