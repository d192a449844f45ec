"""The one wrapper every storage driver goes through.

``StorageDriverWrapper`` does, once, what every driver would otherwise repeat
(the role of Distribution's ``driver/base``):

* validates every path argument with ``check_path`` before the driver sees it,
  and rejects negative reader offsets;
* turns every exception that is not a ``StorageError`` — raised synchronously
  or delivered through the Deferred — into ``DriverError`` naming the driver,
  and fills in the driver name on typed errors that lack one;
* closes the driver once however often ``close`` is called;
* wraps readers and writers in guards that turn misuse (a ``write`` before the
  previous one fired, any use after ``close``/``commit``/``cancel``, a
  ``read`` while another is pending, ``max_bytes < 1``) into ``DriverError``
  instead of undefined driver behaviour; a reader that can ``send_to`` a
  socket (``IZeroCopyReader``) keeps that capability, guarded the same way.

Drivers therefore receive only valid paths and may raise plain ``OSError`` and
friends; callers only ever see ``StorageError`` subclasses.

Read-ahead and small-write gathering are shared too, in
``registry.storage.streams`` (drivers build their readers and writers from
it). ``DriverService`` hands a driver's lifecycle to the application.
"""

from __future__ import annotations

import builtins
import time
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.storage.generation import Generation, storage_identity
from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    IZeroCopyReader,
    InvalidOffsetError,
    StorageError,
    check_path,
)


#: Told of each driver operation: ``(driver, operation, seconds, succeeded)``
#: (``registry.observe.metrics`` records latencies from it).
OperationObserver = Callable[[str, str, float, bool], None]


def _normalise(driver_name: str) -> Callable[[Failure], Failure]:
    """Return an errback mapping any failure to a ``StorageError`` failure."""

    def errback(failure: Failure) -> Failure:
        exc = failure.value
        if isinstance(exc, StorageError):
            if not exc.driver:
                exc.driver = driver_name
            return failure
        detail = f"{type(exc).__name__}: {exc}"
        return Failure(DriverError(driver_name, detail))

    return errback


def _call(driver_name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
    """Call ``fn`` and normalise its (sync or async) failure."""
    d: Deferred[Any] = maybeDeferred(fn, *args, **kwargs)
    d.addErrback(_normalise(driver_name))
    return d


def _invalid(driver_name: str, exc: StorageError) -> Deferred[Any]:
    if not exc.driver:
        exc.driver = driver_name
    return fail(exc)


@implementer(IFileReader)
class GuardedReader:
    """An ``IFileReader`` that enforces the reader protocol on a driver's reader."""

    def __init__(self, driver_name: str, inner: IFileReader) -> None:
        self._driver = driver_name
        self._inner = inner
        self._closed = False
        self._pending = False

    def read(self, max_bytes: int) -> Deferred[bytes]:
        """Fire with 1..``max_bytes`` bytes, or ``b""`` at EOF.

        Fails with ``DriverError`` on misuse (closed reader, concurrent read,
        ``max_bytes < 1``) or when the driver breaks the size promise.
        """
        if self._closed:
            return fail(DriverError(self._driver, "read() on a closed reader"))
        if self._pending:
            return fail(DriverError(self._driver, "read() before the previous read fired"))
        if not isinstance(max_bytes, int) or max_bytes < 1:
            return fail(DriverError(self._driver, f"read(): max_bytes must be >= 1, got {max_bytes!r}"))
        self._pending = True
        try:
            d = self._inner.read(max_bytes)
        except BaseException:
            d = fail()
        # One callback pair per read: this is the hot path of every download.
        return d.addCallbacks(self._read_done, self._read_failed, callbackArgs=(max_bytes,))

    def _read_done(self, data: Any, max_bytes: int) -> bytes:
        self._pending = False
        if type(data) is not bytes or len(data) > max_bytes:
            size = len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__
            raise DriverError(self._driver, f"reader returned {size} bytes for read({max_bytes})")
        return data

    def _read_failed(self, failure: Failure) -> Failure:
        self._pending = False
        return _normalise(self._driver)(failure)

    def close(self) -> Deferred[None]:
        """Close the driver's reader once; later calls fire at once."""
        if self._closed:
            return succeed(None)
        self._closed = True
        return _call(self._driver, self._inner.close)


@implementer(IZeroCopyReader)
class GuardedZeroCopyReader(GuardedReader):
    """A ``GuardedReader`` over a driver's ``IZeroCopyReader``: ``send_to``
    is guarded like ``read`` (not after ``close``, not while a ``read`` or
    another ``send_to`` is pending) and its failures are normalised."""

    _inner: IZeroCopyReader

    def send_to(self, socket_fd: int, offset: int, count: int) -> Deferred[int]:
        """See ``IZeroCopyReader.send_to``."""
        if self._closed:
            return fail(DriverError(self._driver, "send_to() on a closed reader"))
        if self._pending:
            return fail(DriverError(self._driver, "send_to() before the previous call fired"))
        if not isinstance(count, int) or count < 1 or not isinstance(offset, int) or offset < 0:
            return fail(DriverError(self._driver, f"send_to(): bad offset {offset!r} or count {count!r}"))
        self._pending = True
        try:
            d = self._inner.send_to(socket_fd, offset, count)
        except BaseException:
            d = fail()
        return d.addCallbacks(self._sent, self._read_failed, callbackArgs=(count,))

    def _sent(self, result: Any, count: int) -> int:
        self._pending = False
        if type(result) is not int or not -1 <= result <= count:
            raise DriverError(self._driver, f"send_to() returned {result!r} for {count} bytes")
        return result


@implementer(IFileWriter)
class GuardedWriter:
    """An ``IFileWriter`` that enforces the writer protocol on a driver's writer.

    After ``close``, ``commit`` or ``cancel`` has been called the writer is
    finished: ``write``, ``commit`` and ``cancel`` fail with ``DriverError``
    and ``close`` is a no-op (so ``finally: yield w.close()`` is always safe).
    A ``write``, ``close``, ``commit`` or ``cancel`` issued while an earlier
    ``write`` has not fired fails with ``DriverError``.
    """

    def __init__(self, driver_name: str, inner: IFileWriter) -> None:
        self._driver = driver_name
        self._inner = inner
        self._state: str | None = None  # None, "closed", "committed", "cancelled"
        self._writing = False

    @property
    def size(self) -> int:
        """Total bytes in the object so far (from the driver's writer)."""
        return int(self._inner.size)

    def _misuse(self, op: str) -> Deferred[None] | None:
        if self._state is not None:
            return fail(DriverError(self._driver, f"{op}() on a {self._state} writer"))
        if self._writing:
            return fail(DriverError(self._driver, f"{op}() before the previous write fired"))
        return None

    def write(self, data: bytes) -> Deferred[None]:
        """Append ``data``; fires when the writer can take more."""
        bad = self._misuse("write")
        if bad is not None:
            return bad
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return fail(DriverError(self._driver, f"write() takes bytes, not {type(data).__name__}"))
        self._writing = True
        try:
            d = self._inner.write(data if type(data) is bytes else bytes(data))
        except BaseException:
            d = fail()
        # One callback pair per write: this is the hot path of every upload.
        return d.addCallbacks(self._write_done, self._write_failed)

    def _write_done(self, result: Any) -> None:
        self._writing = False

    def _write_failed(self, failure: Failure) -> Failure:
        self._writing = False
        return _normalise(self._driver)(failure)

    def _finish(self, op: str, state: str, fn: Callable[[], Deferred[None]]) -> Deferred[None]:
        if op == "close" and self._state is not None and not self._writing:
            return succeed(None)
        bad = self._misuse(op)
        if bad is not None:
            return bad
        self._state = state
        return _call(self._driver, fn)

    def expect(self, nbytes: int) -> None:
        """Pass a length hint to a driver's writer that takes one (``S3Writer.expect``)."""
        hint = getattr(self._inner, "expect", None)
        if hint is not None and self._state is None:
            hint(nbytes)

    @property
    def note(self) -> bytes | None:
        """The note a driver's writer found stored with the bytes it
        continues (``S3Writer.note``; None where the driver keeps none)."""
        note = getattr(self._inner, "note", None)
        return note if isinstance(note, bytes) else None

    def set_note(self, note: bytes) -> None:
        """Pass a note to store with the bytes at ``close`` to a driver's
        writer that keeps one (``S3Writer.set_note``); a no-op elsewhere."""
        setter = getattr(self._inner, "set_note", None)
        if setter is not None and self._state is None:
            setter(note)

    def close(self) -> Deferred[None]:
        """Flush and release, keeping the bytes for a later append."""
        return self._finish("close", "closed", self._inner.close)

    def commit(self) -> Deferred[None]:
        """Flush and make the object final and durable."""
        return self._finish("commit", "committed", self._inner.commit)

    def cancel(self) -> Deferred[None]:
        """Discard the object; nothing is left at the path."""
        return self._finish("cancel", "cancelled", self._inner.cancel)


@implementer(IStorageDriver)
class StorageDriverWrapper:
    """Validate paths, normalise errors and guard readers/writers of ``driver``."""

    def __init__(self, driver: IStorageDriver, generation: Generation | None = None) -> None:
        self._driver = driver
        self.name: str = str(driver.name)
        #: The storage's deletion generation (``registry.storage.generation``):
        #: bumped after every deletion of content (anything but an upload's
        #: files), which in-process content caches watch. Default: the
        #: host-wide one of a filesystem driver's root, else one private to
        #: this process (``create_driver`` passes the host-wide one of every
        #: storage it builds).
        self.generation: Generation = generation if generation is not None else _default_generation(driver)
        self._errback = _normalise(self.name)
        self._closing: Deferred[None] | None = None
        self._close_result: Failure | bool | None = None
        self._close_waiters: list[Deferred[None]] = []
        #: Times every operation (not each read/write of a stream: those are
        #: the hot path); None: nothing is timed.
        self.observer: OperationObserver | None = None

    @property
    def writer_notes(self) -> bool:
        """Whether the driver's writers keep a note with their bytes
        (``GuardedWriter.note``/``set_note``; the S3 driver's do)."""
        return bool(getattr(self._driver, "writer_notes", False))

    @property
    def staged_writes(self) -> bool:
        """Whether the driver provides ``staged_writer`` (``IStagedWriting``:
        bytes invisible at the path until ``commit``; the S3 driver's)."""
        return bool(getattr(self._driver, "staged_writes", False))

    def staged_writer(self, path: str) -> Deferred[IFileWriter]:
        """See ``IStagedWriting.staged_writer``; the writer is a
        ``GuardedWriter``. ``DriverError`` if the driver has no staged writes."""
        if not self.staged_writes:
            return fail(DriverError(self.name, "this driver has no staged writes"))
        d = self._run("staged_writer", [(path, False)], path)
        d.addCallback(lambda w: GuardedWriter(self.name, w))
        return d

    @property
    def wrapped(self) -> IStorageDriver:
        """The driver inside (for driver-specific tests and tools)."""
        return self._driver

    def _run(self, method: str, paths: list[tuple[Any, bool]], *args: Any, **kwargs: Any) -> Deferred[Any]:
        for path, allow_root in paths:
            try:
                check_path(path, allow_root=allow_root)
            except StorageError as exc:
                return _invalid(self.name, exc)
        observer = self.observer
        if observer is None:
            try:
                d: Deferred[Any] = getattr(self._driver, method)(*args, **kwargs)
            except BaseException:
                return fail().addErrback(self._errback)
            if not isinstance(d, Deferred):
                d = succeed(d)
            return d.addErrback(self._errback)
        started = time.monotonic()
        d = _call(self.name, getattr(self._driver, method), *args, **kwargs)

        def timed(result: Any) -> Any:
            observer(self.name, method, time.monotonic() - started, not isinstance(result, Failure))
            return result

        return d.addBoth(timed)

    def get_content(self, path: str) -> Deferred[bytes]:
        """See ``IStorageDriver.get_content``."""
        return self._run("get_content", [(path, False)], path).addCallback(self._check_bytes)

    def _check_bytes(self, data: Any) -> bytes:
        if type(data) is not bytes:
            raise DriverError(self.name, f"get_content returned {type(data).__name__}")
        return data

    def put_content(self, path: str, data: bytes, durable: bool = True) -> Deferred[None]:
        """See ``IStorageDriver.put_content``."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return fail(DriverError(self.name, f"put_content takes bytes, not {type(data).__name__}"))
        if durable:
            return self._run("put_content", [(path, False)], path, bytes(data))
        return self._run("put_content", [(path, False)], path, bytes(data), durable=False)

    def reader(self, path: str, offset: int = 0) -> Deferred[IFileReader]:
        """See ``IStorageDriver.reader``; the reader is a ``GuardedReader``."""
        if not isinstance(offset, int) or offset < 0:
            try:
                check_path(path)
            except StorageError as exc:
                return _invalid(self.name, exc)
            return fail(InvalidOffsetError(path, offset if isinstance(offset, int) else -1, self.name))
        d = self._run("reader", [(path, False)], path, offset)
        d.addCallback(self._guard_reader)
        return d

    def _guard_reader(self, reader: IFileReader) -> GuardedReader:
        if IZeroCopyReader.providedBy(reader):
            return GuardedZeroCopyReader(self.name, reader)
        return GuardedReader(self.name, reader)

    def writer(self, path: str, append: bool = False) -> Deferred[IFileWriter]:
        """See ``IStorageDriver.writer``; the writer is a ``GuardedWriter``."""
        d = self._run("writer", [(path, False)], path, bool(append))
        d.addCallback(lambda w: GuardedWriter(self.name, w))
        return d

    def stat(self, path: str) -> Deferred[FileInfo]:
        """See ``IStorageDriver.stat``."""
        return self._run("stat", [(path, False)], path)

    def list(self, path: str) -> Deferred[list[str]]:
        """See ``IStorageDriver.list``."""
        return self._run("list", [(path, True)], path)

    def move(self, source: str, dest: str) -> Deferred[None]:
        """See ``IStorageDriver.move``."""
        return self._run("move", [(source, False), (dest, False)], source, dest)

    def delete(self, path: str) -> Deferred[None]:
        """See ``IStorageDriver.delete``. Deleting anything but an upload's
        files or a tag's bumps ``generation`` once the driver is done (succeeded or
        not: a failed delete may have removed part), before the caller hears
        (with a generation shared through Redis, the caller hears once every
        instance has dropped its cache: ``Generation.settled``)."""
        d = self._run("delete", [(path, True)], path)
        if not isinstance(path, str) or "/_uploads/" in path or path.endswith("/_uploads"):
            return d  # refused before the driver saw it, or an upload's files
        if "/_manifests/tags/" in path:
            # The content cache holds no tags, so an untag need not empty it
            # nor wait for it; the tag cache has a generation of its own,
            # which the tag store bumps (``CachedTagStore``).
            return d
        return d.addBoth(self._bump)

    def _bump(self, result: Any) -> Any:
        waiting = self.generation.changed()
        if waiting is None:
            return result
        return waiting.addCallback(lambda _: result)

    def walk(self, path: str) -> Deferred[builtins.list[FileInfo]]:
        """See ``IStorageDriver.walk``."""
        return self._run("walk", [(path, True)], path)

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """See ``IStorageDriver.redirect_url``."""
        return self._run("redirect_url", [(path, False)], path, method)

    def close(self) -> Deferred[None]:
        """See ``IStorageDriver.close``; closes the driver once."""
        if self._closing is None:
            self._closing = _call(self.name, self._driver.close)
            self._closing.addBoth(self._closed)
        if self._close_result is not None:
            return fail(self._close_result) if isinstance(self._close_result, Failure) else succeed(None)
        d: Deferred[None] = Deferred()
        self._close_waiters.append(d)
        return d

    def _closed(self, result: object) -> None:
        self._close_result = result if isinstance(result, Failure) else True
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            d.errback(result) if isinstance(result, Failure) else d.callback(None)


def _default_generation(driver: IStorageDriver) -> Generation:
    root = getattr(driver, "root", None)
    if driver.name == "filesystem" and isinstance(root, str):
        return Generation.shared(storage_identity("filesystem", {"rootdirectory": root}))
    return Generation.local()


class DriverService(Service):
    """A driver's lifecycle as a Twisted service: ``stopService`` closes it.

    The application adds one to the services it owns (next to the listener)
    so that stopping the application stops the driver's thread pool or child
    process, after waiting for the work in progress.
    """

    def __init__(self, driver: IStorageDriver) -> None:
        self.driver = driver

    def stopService(self) -> Deferred[None]:
        """Mark the service stopped and close the driver."""
        super().stopService()
        return self.driver.close()
