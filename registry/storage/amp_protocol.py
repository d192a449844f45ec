"""The wire protocol of out-of-process storage drivers, and its server side.

An executable ``registry-storage-<name>`` serves one ``IStorageDriver`` over
Twisted AMP on its stdin/stdout; ``registry.storage.drivers.outofprocess`` is
the client that spawns it. This module holds what both ends share: the AMP
commands, the encoding of values and errors, and ``DriverServer``, the AMP
responder that serves any ``IStorageDriver``.

Conversation
------------
1. The client sends ``Hello(major, minor)``; the server answers with its own
   ``major``/``minor``, its driver name and pid. The client refuses a server
   whose major differs or whose minor is older than its own.
2. The client sends ``Configure(params)``: the driver parameters as a JSON
   object (the same dict ``create_driver`` would get in-process). The server
   builds its driver; bad parameters come back as a typed error.
3. Driver calls. Readers and writers are *handles* (integers) in the server,
   released by ``CloseHandle``/``Commit``/``Cancel`` or when the connection is
   lost (the server then closes every open reader and writer, keeping written
   bytes for a later append, and exits).

Sizes
-----
AMP limits every value to 65535 bytes. ``LargeBytes`` spreads a byte string
over several keys of one box (``data`` holds the count, ``data.0``…
``data.N`` the frames of at most ``FRAME_BYTES``), so whole-object calls
(``get_content``/``put_content``) and list/walk answers of any size fit in one
command. Streams move in bounded pieces: one ``Read`` answer or ``Write``
argument carries at most ``STREAM_BYTES``; the client pipelines a few of them.

Errors
------
Every command declares one error, ``StorageFault``, whose description is a
JSON object ``{"kind": ..., "path": ..., "driver": ..., ...}``; it is rebuilt
into the same typed ``StorageError`` on the other side (``PathNotFoundError``
stays ``PathNotFoundError``). Anything else the driver raises crosses as
``DriverError``.

Commands on one handle run strictly in the order they arrived (AMP dispatches
each box as it arrives; ``DriverServer`` queues per handle), which is what
lets the client pipeline reads and writes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    StorageError,
)

#: Protocol version. Bump the minor for additions a newer server may offer
#: (an older client ignores them); bump the major for anything incompatible.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

#: Largest single AMP value we send (AMP's hard limit is 65535).
FRAME_BYTES = 60 * 1024
#: Largest payload of one ``Read`` answer or one ``Write`` command.
STREAM_BYTES = 8 * FRAME_BYTES

_log = Logger()


# --- pipes ------------------------------------------------------------------

#: Bytes read from a pipe per wakeup (Twisted's default is 8 KiB, which costs
#: a syscall and a buffer copy per 8 KiB of a 60 KiB frame).
PIPE_READ_BYTES = 1 << 20
#: Pipe capacity asked for with F_SETPIPE_SZ (Linux; 64 KiB by default).
PIPE_CAPACITY = 1 << 20


def enlarge_pipe(fd: int) -> None:
    """Ask the kernel for a ``PIPE_CAPACITY`` pipe buffer; ignore refusal."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is None:
        return
    try:
        fcntl.fcntl(fd, setsz, PIPE_CAPACITY)
    except OSError:
        pass


def tune_pipe_reader(reader: Any) -> None:
    """Make a ``twisted.internet.process.ProcessReader`` read
    ``PIPE_READ_BYTES`` per wakeup, and enlarge its pipe."""
    fd = reader.fileno()
    enlarge_pipe(fd)

    def doRead() -> Any:
        try:
            data = os.read(fd, PIPE_READ_BYTES)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        reader.dataReceived(data)
        return None

    reader.doRead = doRead


# --- box parsing -------------------------------------------------------------


class FrameParsingAMP(amp.AMP):
    """``amp.AMP`` with a box parser that copies each key and value once.

    ``Int16StringReceiver.dataReceived`` concatenates every incoming chunk
    to the unparsed rest and then slices each string out of the result: two
    copies of every byte. This parser slices strings straight out of the
    chunk and only carries the one string split across two chunks. Boxes,
    states and limits are AMP's own (``stringReceived``/``MAX_LENGTH``).
    """

    _carry: bytearray | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.innerProtocol is not None or self._locked:
            super().dataReceived(data)
            return
        n = len(data)
        pos = 0
        carry = self._carry
        if carry:
            # Finish the string that the previous chunk left incomplete.
            if len(carry) < 2:
                take = min(2 - len(carry), n)
                carry += data[:take]
                pos = take
                if len(carry) < 2:
                    return
            length = (carry[0] << 8) | carry[1]
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            need = 2 + length - len(carry)
            if n - pos < need:
                carry += data[pos:]
                return
            carry += data[pos : pos + need]
            pos += need
            self._carry = None
            self.stringReceived(bytes(carry[2:]))
        while n - pos >= 2:
            length = (data[pos] << 8) | data[pos + 1]
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            start = pos + 2
            stop = start + length
            if stop > n:
                break
            pos = stop
            self.stringReceived(data[start:stop])
        if pos < n:
            self._carry = bytearray(data[pos:])


# --- values -----------------------------------------------------------------


class LargeBytes(amp.Argument):
    """A byte string of any length, spread over several keys of one box.

    ``name`` carries the number of frames as ASCII digits and ``name.<i>``
    the i-th frame (at most ``FRAME_BYTES`` each).
    """

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        count = int(strings[name])
        if count == 1:
            value = strings[name + b".0"]
        else:
            value = b"".join(strings[b"%s.%d" % (name, i)] for i in range(count))
        objects[str(name, "ascii")] = value

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        # Any bytes-like value (a memoryview is framed without a copy first).
        value = objects[str(name, "ascii")]
        if len(value) <= FRAME_BYTES:
            strings[name] = b"1"
            strings[name + b".0"] = value if isinstance(value, bytes) else bytes(value)
            return
        view = memoryview(value).cast("B")
        count = 0
        for start in range(0, len(view), FRAME_BYTES):
            # A view, not a copy: AmpBox.serialize joins the frames into the
            # wire bytes at once (synchronously, while ``value`` is alive).
            strings[b"%s.%d" % (name, count)] = view[start : start + FRAME_BYTES]  # type: ignore[assignment]  # typed bytes; join takes views
            count += 1
        strings[name] = b"%d" % count


class JSONValue(LargeBytes):
    """Any JSON-serialisable value, carried as ``LargeBytes`` of UTF-8 JSON."""

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = str(name, "ascii")
        objects[key] = json.loads(objects[key])

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        key = str(name, "ascii")
        encoded = dict(objects)
        encoded[key] = json.dumps(objects[key], separators=(",", ":")).encode("utf-8")
        super().toBox(name, strings, encoded, proto)


def fileinfo_to_json(info: FileInfo) -> dict[str, Any]:
    """Encode a ``FileInfo`` as a JSON object (pure)."""
    return {"path": info.path, "size": info.size, "mod_time": info.mod_time, "is_dir": info.is_dir}


def fileinfo_from_json(obj: dict[str, Any]) -> FileInfo:
    """Decode ``fileinfo_to_json``'s output (pure)."""
    return FileInfo(
        path=str(obj["path"]), size=int(obj["size"]), mod_time=float(obj["mod_time"]), is_dir=bool(obj["is_dir"])
    )


# --- errors -----------------------------------------------------------------


class StorageFault(Exception):
    """The one AMP error of every command; its text is an encoded StorageError."""


def error_to_json(exc: BaseException, default_driver: str) -> str:
    """Encode ``exc`` (typed or not) as the JSON text of a ``StorageFault``."""
    if isinstance(exc, PathNotFoundError):
        obj: dict[str, Any] = {"kind": "path_not_found", "path": exc.path}
    elif isinstance(exc, InvalidPathError):
        obj = {"kind": "invalid_path", "path": exc.path, "reason": exc.reason}
    elif isinstance(exc, InvalidOffsetError):
        obj = {"kind": "invalid_offset", "path": exc.path, "offset": exc.offset}
    elif isinstance(exc, DriverError):
        obj = {"kind": "driver", "detail": exc.detail}
    else:
        obj = {"kind": "driver", "detail": f"{type(exc).__name__}: {exc}"}
    driver = exc.driver if isinstance(exc, StorageError) and exc.driver else default_driver
    obj["driver"] = driver
    return json.dumps(obj)


def error_from_json(text: str, default_driver: str) -> StorageError:
    """Rebuild the typed ``StorageError`` that ``error_to_json`` encoded.

    Text that is not such an encoding becomes a ``DriverError`` quoting it.
    """
    try:
        obj = json.loads(text)
        kind = obj["kind"]
        driver = str(obj.get("driver") or default_driver)
        if kind == "path_not_found":
            return PathNotFoundError(str(obj["path"]), driver)
        if kind == "invalid_path":
            return InvalidPathError(str(obj["path"]), driver, str(obj.get("reason", "")))
        if kind == "invalid_offset":
            return InvalidOffsetError(str(obj["path"]), int(obj["offset"]), driver)
        if kind == "driver":
            return DriverError(driver, str(obj["detail"]))
    except (ValueError, KeyError, TypeError):
        pass
    return DriverError(default_driver, f"undecodable error from driver process: {text!r}")


# --- commands ---------------------------------------------------------------

_ERRORS: dict[type[Exception], bytes] = {StorageFault: b"STORAGE"}


class _Command(amp.Command):
    errors = _ERRORS


class Hello(_Command):
    """Version handshake. Answered before ``Configure``."""

    arguments = [(b"major", amp.Integer()), (b"minor", amp.Integer())]
    response = [
        (b"major", amp.Integer()),
        (b"minor", amp.Integer()),
        (b"driver", amp.Unicode()),
        (b"pid", amp.Integer()),
    ]


class Configure(_Command):
    """Build the driver from JSON parameters; answers with its name."""

    arguments = [(b"params", JSONValue())]
    response = [(b"driver", amp.Unicode())]


class GetContent(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"data", LargeBytes())]


class PutContent(_Command):
    arguments = [(b"path", amp.Unicode()), (b"data", LargeBytes())]
    response = []


class OpenReader(_Command):
    arguments = [(b"path", amp.Unicode()), (b"offset", amp.Integer())]
    response = [(b"handle", amp.Integer())]


class OpenWriter(_Command):
    arguments = [(b"path", amp.Unicode()), (b"append", amp.Boolean())]
    response = [(b"handle", amp.Integer()), (b"size", amp.Integer())]


class Read(_Command):
    """Up to ``max_bytes`` (capped at ``STREAM_BYTES``) from a reader; b"" at EOF."""

    arguments = [(b"handle", amp.Integer()), (b"max_bytes", amp.Integer())]
    response = [(b"data", LargeBytes())]


class Write(_Command):
    """Append ``data`` (at most ``STREAM_BYTES``) to a writer; answered once written."""

    arguments = [(b"handle", amp.Integer()), (b"data", LargeBytes())]
    response = []


class CloseHandle(_Command):
    """Close a reader, or close a writer keeping its bytes for an append."""

    arguments = [(b"handle", amp.Integer())]
    response = []


class Commit(_Command):
    arguments = [(b"handle", amp.Integer())]
    response = []


class Cancel(_Command):
    arguments = [(b"handle", amp.Integer())]
    response = []


class Stat(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"info", JSONValue())]


class List(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"paths", JSONValue())]


class Move(_Command):
    arguments = [(b"source", amp.Unicode()), (b"dest", amp.Unicode())]
    response = []


class Delete(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = []


class Walk(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"infos", JSONValue())]


class RedirectURL(_Command):
    arguments = [(b"path", amp.Unicode()), (b"method", amp.Unicode())]
    response = [(b"url", amp.Unicode(optional=True))]


# --- server -----------------------------------------------------------------


class _SerialQueue:
    """Runs operations one after another, in submission order."""

    def __init__(self) -> None:
        self._pending: deque[tuple[Callable[[], Any], Deferred[Any]]] = deque()
        self._running = False

    def run(self, op: Callable[[], Any]) -> Deferred[Any]:
        """Fire with ``op()``'s result once every earlier op has finished."""
        d: Deferred[Any] = Deferred()
        self._pending.append((op, d))
        if not self._running:
            self._next()
        return d

    def _next(self) -> None:
        while self._pending:
            op, d = self._pending.popleft()
            self._running = True
            result = maybeDeferred(op)
            if result.called:
                # Synchronous result: deliver and loop, no recursion.
                result.addBoth(self._deliver, d)
                self._running = False
                continue
            result.addBoth(self._deliver_then_next, d)
            return
        self._running = False

    @staticmethod
    def _deliver(result: Any, d: Deferred[Any]) -> None:
        d.callback(result) if not isinstance(result, Failure) else d.errback(result)

    def _deliver_then_next(self, result: Any, d: Deferred[Any]) -> None:
        self._deliver(result, d)
        self._running = False
        self._next()


class _Handle:
    """A reader or writer open in the server, with its per-handle op queue."""

    def __init__(self, obj: IFileReader | IFileWriter, is_writer: bool) -> None:
        self.obj = obj
        self.is_writer = is_writer
        self.queue = _SerialQueue()


class DriverServer(FrameParsingAMP):
    """Serves one ``IStorageDriver`` to one client over AMP.

    ``make_driver(params)`` builds the driver when ``Configure`` arrives (it
    may raise; the error goes back to the client). ``on_lost`` is called with
    no arguments after the connection is gone and every open handle has been
    closed (the console scripts stop the reactor there).
    """

    def __init__(
        self,
        driver_name: str,
        make_driver: Callable[[dict[str, Any]], IStorageDriver],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        super().__init__()
        self.driver_name = driver_name
        self._make_driver = make_driver
        self._on_lost = on_lost
        self.driver: IStorageDriver | None = None
        self._handles: dict[int, _Handle] = {}
        self._next_handle = 1

    # connection ------------------------------------------------------------

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Close every open handle, release the driver, then call ``on_lost``."""
        super().connectionLost(reason)
        handles = list(self._handles.values())
        self._handles.clear()
        ds = [h.queue.run(h.obj.close) for h in handles]
        for d in ds:
            d.addErrback(lambda f: _log.failure("closing a handle after the client left", f))
        closer = getattr(self.driver, "close", None)
        dl = DeferredList(ds)
        if closer is not None:
            dl.addCallback(lambda _: closer())
        dl.addErrback(lambda f: _log.failure("closing the driver", f))
        if self._on_lost is not None:
            on_lost = self._on_lost
            dl.addBoth(lambda _: on_lost())

    # plumbing --------------------------------------------------------------

    def _guard(self, fn: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """Call ``fn`` and turn any failure into a ``StorageFault``."""
        d = maybeDeferred(fn, *args)
        d.addErrback(self._fault)
        return d

    def _fault(self, failure: Failure) -> Failure:
        exc = failure.value
        if not isinstance(exc, StorageError):
            _log.failure("driver call failed", failure)
        return Failure(StorageFault(error_to_json(exc, self.driver_name)))

    def _driver(self) -> IStorageDriver:
        if self.driver is None:
            raise DriverError(self.driver_name, "driver process not configured (Configure not sent)")
        return self.driver

    def _handle(self, handle: int, writer: bool) -> _Handle:
        h = self._handles.get(handle)
        if h is None or h.is_writer != writer:
            kind = "writer" if writer else "reader"
            raise DriverError(self.driver_name, f"no open {kind} with handle {handle}")
        return h

    def _add_handle(self, obj: IFileReader | IFileWriter, is_writer: bool) -> int:
        handle = self._next_handle
        self._next_handle += 1
        self._handles[handle] = _Handle(obj, is_writer)
        return handle

    def _on_handle(self, handle: int, writer: bool, op: Callable[[Any], Any], release: bool = False) -> Deferred[Any]:
        def start() -> Deferred[Any]:
            h = self._handle(handle, writer)
            if release:
                # Later commands on this handle fail at once.
                del self._handles[handle]
            return h.queue.run(lambda: op(h.obj))

        return self._guard(start)

    # responders ------------------------------------------------------------

    @Hello.responder
    def hello(self, major: int, minor: int) -> dict[str, Any]:
        return {"major": PROTOCOL_MAJOR, "minor": PROTOCOL_MINOR, "driver": self.driver_name, "pid": os.getpid()}

    @Configure.responder
    def configure(self, params: Any) -> Deferred[dict[str, Any]]:
        def build() -> dict[str, Any]:
            if self.driver is not None:
                raise DriverError(self.driver_name, "driver process already configured")
            if not isinstance(params, dict):
                raise DriverError(self.driver_name, "parameters must be a JSON object")
            self.driver = self._make_driver(params)
            return {"driver": str(self.driver.name)}

        return self._guard(build)

    @GetContent.responder
    def get_content(self, path: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().get_content(path))
        d.addCallback(lambda data: {"data": data})
        return d

    @PutContent.responder
    def put_content(self, path: str, data: bytes) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().put_content(path, data))
        d.addCallback(lambda _: {})
        return d

    @OpenReader.responder
    def open_reader(self, path: str, offset: int) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().reader(path, offset))
        d.addCallback(lambda r: {"handle": self._add_handle(r, False)})
        return d

    @OpenWriter.responder
    def open_writer(self, path: str, append: bool) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().writer(path, append))
        d.addCallback(lambda w: {"handle": self._add_handle(w, True), "size": int(w.size)})
        return d

    @Read.responder
    def read(self, handle: int, max_bytes: int) -> Deferred[dict[str, Any]]:
        n = max(1, min(int(max_bytes), STREAM_BYTES))
        d = self._on_handle(handle, False, lambda r: r.read(n))
        d.addCallback(lambda data: {"data": data})
        return d

    @Write.responder
    def write(self, handle: int, data: bytes) -> Deferred[dict[str, Any]]:
        d = self._on_handle(handle, True, lambda w: w.write(data))
        d.addCallback(lambda _: {})
        return d

    @CloseHandle.responder
    def close_handle(self, handle: int) -> Deferred[dict[str, Any]]:
        def start() -> Deferred[Any]:
            h = self._handles.pop(handle, None)
            if h is None:
                return succeed(None)  # closing is idempotent
            return h.queue.run(h.obj.close)

        d = self._guard(start)
        d.addCallback(lambda _: {})
        return d

    @Commit.responder
    def commit(self, handle: int) -> Deferred[dict[str, Any]]:
        d = self._on_handle(handle, True, lambda w: w.commit(), release=True)
        d.addCallback(lambda _: {})
        return d

    @Cancel.responder
    def cancel(self, handle: int) -> Deferred[dict[str, Any]]:
        d = self._on_handle(handle, True, lambda w: w.cancel(), release=True)
        d.addCallback(lambda _: {})
        return d

    @Stat.responder
    def stat(self, path: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().stat(path))
        d.addCallback(lambda info: {"info": fileinfo_to_json(info)})
        return d

    @List.responder
    def list(self, path: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().list(path))
        d.addCallback(lambda paths: {"paths": [str(p) for p in paths]})
        return d

    @Move.responder
    def move(self, source: str, dest: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().move(source, dest))
        d.addCallback(lambda _: {})
        return d

    @Delete.responder
    def delete(self, path: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().delete(path))
        d.addCallback(lambda _: {})
        return d

    @Walk.responder
    def walk(self, path: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().walk(path))
        d.addCallback(lambda infos: {"infos": [fileinfo_to_json(i) for i in infos]})
        return d

    @RedirectURL.responder
    def redirect_url(self, path: str, method: str) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().redirect_url(path, method))
        d.addCallback(lambda url: {"url": url})
        return d
