"""The child side of out-of-process storage drivers: serve a driver over AMP.

``DriverServer`` is the AMP responder that serves any ``IStorageDriver`` to
one client (the protocol is ``registry.storage.remote.wire``); ``serve`` runs
it on stdin/stdout. ``main_filesystem`` and ``main_inmemory`` are the
``registry-storage-filesystem`` and ``registry-storage-inmemory`` console
scripts: they serve the in-process driver of that name, built by
``registry.storage.factory.create_driver`` when the client's ``Configure``
arrives. Parameters arrive in that command, not the environment or argv, so a
restarted child gets them again without the parent exposing them to ``ps``.

This is the only part of the out-of-process machinery that uses the factory
(the client side is imported *by* the factory).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from registry.storage.driver import DriverError, IFileReader, IFileWriter, IStorageDriver, StorageError
from registry.storage.remote import wire
from registry.storage.remote.fastpipe import FrameParsingAMP, tune_stdio
from registry.storage.remote.wire import (
    STREAM_BYTES,
    Cancel,
    CloseHandle,
    Commit,
    Configure,
    Delete,
    GetContent,
    Hello,
    List,
    Move,
    OpenReader,
    OpenWriter,
    PutContent,
    PutScratch,
    Read,
    RedirectURL,
    Stat,
    StorageFault,
    Walk,
    Write,
    error_to_json,
    fileinfo_to_json,
)

_log = Logger()


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
        driver = self.driver  # None: the client left before Configure
        dl = DeferredList(ds)
        if driver is not None:
            dl.addCallback(lambda _: driver.close())  # close() is part of IStorageDriver
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
        return {"major": wire.PROTOCOL_MAJOR, "minor": wire.PROTOCOL_MINOR, "driver": self.driver_name, "pid": os.getpid()}

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

    @PutScratch.responder
    def put_scratch(self, path: str, data: bytes) -> Deferred[dict[str, Any]]:
        d = self._guard(lambda: self._driver().put_content(path, data, durable=False))
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


# --- console scripts ------------------------------------------------------------


def serve(driver_name: str, make_driver: Callable[[dict[str, Any]], IStorageDriver] | None = None) -> None:
    """Serve driver ``driver_name`` over AMP on stdin/stdout until stdin closes.

    ``make_driver(params)`` builds the driver when the client's ``Configure``
    arrives; by default ``registry.storage.factory.create_driver(driver_name,
    params, reactor)``. Log output (and anything printed) goes to stderr,
    which the parent logs; stdout carries only AMP.
    """
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Keep stdout for AMP alone: stray prints land on stderr.
    stdout_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)

    if make_driver is None:

        def make_driver(params: dict[str, Any]) -> IStorageDriver:
            from registry.storage.factory import create_driver

            return create_driver(driver_name, params, reactor=reactor)

    def on_lost() -> None:
        if reactor.running:
            reactor.stop()

    protocol = DriverServer(driver_name, make_driver, on_lost)
    # mypy resolves twisted.internet.stdio to the Windows StandardIO; the POSIX
    # one this runs on takes stdin/stdout descriptors.
    stdio = StandardIO(protocol, stdin=0, stdout=stdout_fd, reactor=reactor)  # type: ignore[call-arg]
    tune_stdio(stdio)
    reactor.run()


def main_filesystem() -> None:
    """Entry point of ``registry-storage-filesystem``."""
    serve("filesystem")


def main_inmemory() -> None:
    """Entry point of ``registry-storage-inmemory``."""
    serve("inmemory")
