"""Out-of-process storage drivers: a driver served by a child process over AMP.

Client side
-----------
``OutOfProcessDriver`` implements ``IStorageDriver`` by forwarding every call
to a child process running ``registry-storage-<name>`` (see
``registry.storage.amp_protocol`` for the wire protocol). It

* spawns the child on first use (``reactor.spawnProcess``; AMP runs over the
  child's stdin/stdout; every line the child writes to stderr is logged with
  the driver name and pid);
* checks the protocol version (major must match, the child's minor may be
  newer, never older) and sends the driver parameters (``Configure``);
* restarts the child when it dies: calls in flight fail with ``DriverError``
  naming the driver and how the child ended; readers and writers of the dead
  child fail the same way from then on; new calls start a fresh child (one is
  also started eagerly after a short, growing back-off);
* streams readers and writers in bounded pieces of ``STREAM_BYTES`` (480 KiB,
  eight AMP values) with a few pieces in flight: a reader holds at most
  ``READ_AHEAD`` pieces (prefetched or buffered), and a writer gathers small
  writes into pieces and its ``write`` Deferred fires once no more than
  ``WRITE_WINDOW`` bytes are unacknowledged by the child. Write errors of
  pipelined pieces surface on the next ``write``, ``close`` or ``commit``;
  ``commit`` waits for every acknowledgement and cancels instead of
  committing if any write failed.

``close()`` stops the child (stdin is closed; the child closes its handles and
exits; it is killed if it has not exited after ``STOP_TIMEOUT`` seconds).

Server side (console scripts)
-----------------------------
``main_filesystem`` and ``main_inmemory`` are the ``registry-storage-filesystem``
and ``registry-storage-inmemory`` entry points: they serve the in-process
driver of that name (built by ``registry.storage.factory.create_driver``) on
stdin/stdout. Parameters arrive in the ``Configure`` command, not the
environment or argv, so a restarted child gets them again without the parent
exposing them to ``ps``.

Factory hooks
-------------
``find_executable(name)`` locates ``registry-storage-<name>`` next to
``sys.executable`` (the venv's bin) or on ``PATH``. ``registry.storage.factory``
calls ``create(executable, name, params, reactor)`` for driver names it does
not know in-process but finds that way (``params`` go to the child as they
are), and ``create_explicit(params, reactor)`` for the name ``outofprocess``:
``{"executable": <path or driver name>, "params": {...}, "name": <label>}``.

Performance (see ``scripts/bench_outofprocess.py``): every byte crosses two
pipes' worth of Python; each side spends roughly 1.5-2.5 ms of CPU per MiB
(AMP framing, copies, syscalls), so streams run at a few hundred MB/s rather
than the in-process driver's page-cache speed.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.storage import amp_protocol as P
from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    StorageError,
)

_log = Logger()

#: Pieces a reader keeps in flight ahead of the caller.
READ_AHEAD = 8
#: Unacknowledged bytes after which a writer's ``write`` waits.
WRITE_WINDOW = 8 * P.STREAM_BYTES
#: Seconds the child has to answer the handshake.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds ``close()`` waits for the child to exit before SIGKILL.
STOP_TIMEOUT = 5.0
#: Restart back-off: first delay, cap (seconds); a child that lived longer
#: than ``HEALTHY_UPTIME`` resets it.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 5.0
HEALTHY_UPTIME = 10.0

EXECUTABLE_PREFIX = "registry-storage-"
#: A stderr "line" longer than this is logged in pieces.
_STDERR_LINE_MAX = 64 * 1024


# --- locating executables ----------------------------------------------------


def find_executable(name: str) -> str | None:
    """Return the path of ``registry-storage-<name>``, or ``None``.

    Looks next to ``sys.executable`` first (a venv's ``bin``, where console
    scripts land even when the venv is not on ``PATH``), then on ``PATH``.
    """
    exe = EXECUTABLE_PREFIX + name
    beside = Path(sys.executable).parent / exe
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(exe)


def create_outofprocess_driver(
    name: str, params: dict[str, Any], reactor: Any = None
) -> "OutOfProcessDriver | None":
    """Build the out-of-process driver for factory name ``name``.

    ``name == "outofprocess"``: ``params`` must hold ``executable`` (a path,
    or a driver name looked up with ``find_executable``) and may hold
    ``params`` (a dict sent to the child) and ``name`` (the driver name used
    in errors; default: derived from the executable). Otherwise returns
    ``None`` when no ``registry-storage-<name>`` exists, else a driver whose
    child gets ``params`` unchanged. Raises ``ValueError`` naming the
    parameter when ``params`` are malformed.
    """
    if name != "outofprocess":
        exe = find_executable(name)
        if exe is None:
            return None
        return OutOfProcessDriver(exe, params, name=name, reactor=reactor)
    unknown = set(params) - {"executable", "params", "name"}
    if unknown:
        raise ValueError(f"storage.outofprocess.{sorted(unknown)[0]}: unknown parameter")
    executable = params.get("executable")
    if not isinstance(executable, str) or not executable:
        raise ValueError("storage.outofprocess.executable: must be a non-empty string")
    child_params = params.get("params", {})
    if not isinstance(child_params, dict):
        raise ValueError("storage.outofprocess.params: must be a mapping")
    if os.sep not in executable:
        found = find_executable(executable) if not executable.startswith(EXECUTABLE_PREFIX) else shutil.which(executable)
        if found is None:
            raise ValueError(f"storage.outofprocess.executable: no {EXECUTABLE_PREFIX}{executable} found")
        executable = found
    elif not os.access(executable, os.X_OK):
        raise ValueError(f"storage.outofprocess.executable: {executable} is not an executable file")
    label = params.get("name")
    if label is None:
        base = os.path.basename(executable)
        label = base[len(EXECUTABLE_PREFIX) :] if base.startswith(EXECUTABLE_PREFIX) else base
    return OutOfProcessDriver(executable, child_params, name=str(label), reactor=reactor)


def create(executable: str, name: str, params: Any, reactor: Any = None) -> "OutOfProcessDriver":
    """The hook ``registry.storage.factory`` calls for a driver ``name`` it
    found as the executable ``executable``: a driver whose child gets
    ``params`` unchanged (they must be JSON-serialisable)."""
    return OutOfProcessDriver(executable, dict(params), name=name, reactor=reactor)


def create_explicit(params: Any, reactor: Any = None) -> "OutOfProcessDriver":
    """``DriverFactory`` of the factory name ``outofprocess`` (params:
    ``executable``, optional ``params`` and ``name``); raises ``ValueError``
    naming the parameter."""
    driver = create_outofprocess_driver("outofprocess", dict(params), reactor)
    assert driver is not None
    return driver


# --- the child process --------------------------------------------------------


class _StdinTransport:
    """The transport AMP writes to: the child's stdin."""

    def __init__(self, process: Any) -> None:
        self._process = process
        self.disconnecting = False

    def write(self, data: bytes) -> None:
        self._process.write(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self._process.writeSequence(data)

    def loseConnection(self) -> None:
        self.disconnecting = True
        self._process.closeStdin()

    def getPeer(self) -> str:
        return f"child process {self._process.pid}"

    def getHost(self) -> str:
        return "registry"


class _ChildProtocol(ProcessProtocol):
    """Bridges one child process to an AMP client; logs its stderr lines."""

    def __init__(self, driver_name: str, on_ended: Callable[["_ChildProtocol", Failure], None], clock: IReactorTime) -> None:
        self.driver_name = driver_name
        self.amp = P.FrameParsingAMP()
        self.pid: int | None = None
        self.ended: Failure | None = None
        self.started_at = clock.seconds()
        self._clock = clock
        self._on_ended = on_ended
        self._stderr = b""
        self._ended_waiters: list[Deferred[None]] = []

    def connectionMade(self) -> None:
        assert self.transport is not None  # makeConnection set it
        self.pid = self.transport.pid
        pipes = getattr(self.transport, "pipes", {})
        if 1 in pipes:
            P.tune_pipe_reader(pipes[1])
        if 0 in pipes:
            P.enlarge_pipe(pipes[0].fileno())
        self.amp.makeConnection(_StdinTransport(self.transport))

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            try:
                self.amp.dataReceived(data)
            except Exception:
                # Not AMP on stdout (a stray print, a broken child): this
                # conversation cannot continue; the restart logic takes over.
                _log.failure("storage driver {driver} (pid {pid}) broke the protocol", driver=self.driver_name, pid=self.pid)
                self.kill()
        elif childFD == 2:
            self._stderr += data
            *lines, self._stderr = self._stderr.split(b"\n")
            if len(self._stderr) > _STDERR_LINE_MAX:
                lines.append(self._stderr)
                self._stderr = b""
            for line in lines:
                self._log_line(line)

    def _log_line(self, line: bytes) -> None:
        _log.warn(
            "storage driver {driver} (pid {pid}) stderr: {line}",
            driver=self.driver_name,
            pid=self.pid,
            line=line.decode("utf-8", "replace").rstrip("\r"),
        )

    def processEnded(self, reason: Failure) -> None:
        if self._stderr:
            self._log_line(self._stderr)
            self._stderr = b""
        self.ended = reason
        # The driver learns of the death before the calls in flight fail, so
        # a caller reacting to the failure already gets a fresh child.
        self._on_ended(self, reason)
        self.amp.connectionLost(reason)
        waiters, self._ended_waiters = self._ended_waiters, []
        for d in waiters:
            d.callback(None)

    def when_ended(self) -> Deferred[None]:
        """Fire (with None) once the process has exited and been reaped."""
        if self.ended is not None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._ended_waiters.append(d)
        return d

    def uptime(self) -> float:
        return self._clock.seconds() - self.started_at

    def describe_end(self) -> str:
        """Say how the child ended, for error messages."""
        if self.ended is None:
            return f"child process {self.pid} is gone"
        value = self.ended.value
        if isinstance(value, ierror.ProcessTerminated):
            if value.signal is not None:
                return f"child process {self.pid} was killed by signal {value.signal}"
            return f"child process {self.pid} exited with status {value.exitCode}"
        return f"child process {self.pid} exited with status 0"

    def kill(self) -> None:
        """SIGKILL the child unless it has already exited."""
        if self.ended is None and self.pid is not None:
            assert self.transport is not None  # a pid means connectionMade ran
            try:
                self.transport.signalProcess("KILL")
            except ierror.ProcessExitedAlready:
                pass


# --- readers and writers ------------------------------------------------------


@implementer(IFileReader)
class _RemoteReader:
    """A reader handle in the child, prefetching up to ``READ_AHEAD`` pieces."""

    def __init__(self, driver: "OutOfProcessDriver", child: _ChildProtocol, handle: int) -> None:
        self._driver = driver
        self._child = child
        self._handle = handle
        self._buffer: deque[bytes] = deque()
        self._head = 0  # bytes of self._buffer[0] already returned
        self._in_flight = 0
        self._eof = False
        self._error: Failure | None = None
        self._waiter: tuple[Deferred[bytes], int] | None = None
        self._closed = False

    def _prefetch(self) -> None:
        # Pieces buffered count against the read-ahead, so a slow consumer
        # holds at most READ_AHEAD pieces in memory.
        while (
            not self._eof
            and self._error is None
            and not self._closed
            and self._in_flight + len(self._buffer) < READ_AHEAD
        ):
            self._in_flight += 1
            d = self._driver._remote(self._child, P.Read, handle=self._handle, max_bytes=P.STREAM_BYTES)
            d.addCallbacks(self._got, self._failed)

    def _got(self, response: dict[str, Any]) -> None:
        self._in_flight -= 1
        if self._closed:
            return
        data = response["data"]
        if data:
            self._buffer.append(data)
        else:
            self._eof = True
        self._wake()
        self._prefetch()

    def _failed(self, failure: Failure) -> None:
        self._in_flight -= 1
        if self._error is None:
            self._error = failure
        self._wake()

    def _take(self, max_bytes: int) -> bytes:
        """Remove and return up to ``max_bytes`` buffered bytes (at least 1)."""
        first = self._buffer[0]
        start = self._head
        if len(first) - start > max_bytes:
            self._head = start + max_bytes
            return first[start : start + max_bytes]
        self._buffer.popleft()
        self._head = 0
        part = first[start:] if start else first
        if not self._buffer or len(part) + len(self._buffer[0]) > max_bytes:
            return part
        parts = [part]
        size = len(part)
        while self._buffer and size + len(self._buffer[0]) <= max_bytes:
            chunk = self._buffer.popleft()
            parts.append(chunk)
            size += len(chunk)
        return b"".join(parts)

    def _wake(self) -> None:
        if self._waiter is None:
            return
        d, max_bytes = self._waiter
        if self._buffer:
            self._waiter = None
            d.callback(self._take(max_bytes))
        elif self._error is not None:
            self._waiter = None
            d.errback(self._error)
        elif self._eof:
            self._waiter = None
            d.callback(b"")

    def read(self, max_bytes: int) -> Deferred[bytes]:
        """Fire with 1..``max_bytes`` bytes, or ``b""`` at the end.

        Fails with the typed error the child reported, or ``DriverError``
        when the child died since the reader was opened.
        """
        if self._closed:
            return fail(DriverError(self._driver.name, "read() on a closed reader"))
        if self._buffer:
            data = self._take(max_bytes)
            self._prefetch()
            return succeed(data)
        if self._error is not None:
            return fail(self._error)
        if self._eof:
            return succeed(b"")
        if self._waiter is not None:
            return fail(DriverError(self._driver.name, "read() before the previous read fired"))
        d: Deferred[bytes] = Deferred()
        self._waiter = (d, max_bytes)
        self._prefetch()
        return d

    def close(self) -> Deferred[None]:
        """Release the handle in the child. Idempotent; fires with None."""
        if self._closed:
            return succeed(None)
        self._closed = True
        self._buffer.clear()
        self._head = 0
        if self._child.ended is not None:
            return succeed(None)  # the child's death released it
        d = self._driver._remote(self._child, P.CloseHandle, handle=self._handle)
        d.addCallback(lambda _: None)
        return d


@implementer(IFileWriter)
class _RemoteWriter:
    """A writer handle in the child.

    Small writes gather into pieces of ``STREAM_BYTES``; ``write`` fires once
    at most ``WRITE_WINDOW`` bytes are unacknowledged; ``close``/``commit``
    send what is gathered first.
    """

    def __init__(self, driver: "OutOfProcessDriver", child: _ChildProtocol, handle: int, size: int) -> None:
        self._driver = driver
        self._child = child
        self._handle = handle
        self.size = size
        self._unacked = 0
        self._error: Failure | None = None
        self._waiter: Deferred[None] | None = None
        self._drained: list[Deferred[None]] = []
        self._done: str | None = None
        self._buffer: list[bytes] = []
        self._buffered = 0

    def _acked(self, _: Any, n: int) -> None:
        self._unacked -= n
        self._wake()

    def _failed(self, failure: Failure, n: int) -> None:
        self._unacked -= n
        if self._error is None:
            self._error = failure
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and (self._error is not None or self._unacked <= WRITE_WINDOW):
            d, self._waiter = self._waiter, None
            d.errback(self._error) if self._error is not None else d.callback(None)
        if self._unacked == 0:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def write(self, data: bytes) -> Deferred[None]:
        """Gather ``data`` and send it in pieces of ``STREAM_BYTES``; fire when
        at most ``WRITE_WINDOW`` bytes are unacknowledged. Fails with the first error the child reported for
        any earlier piece, or ``DriverError`` when the child died."""
        if self._done is not None:
            return fail(DriverError(self._driver.name, f"write() on a {self._done} writer"))
        if self._error is not None:
            return fail(self._error)
        if self._waiter is not None:
            return fail(DriverError(self._driver.name, "write() before the previous write fired"))
        self.size += len(data)
        if self._buffered + len(data) < P.STREAM_BYTES:
            # Small writes gather into one piece: one command per STREAM_BYTES.
            if data:
                self._buffer.append(bytes(data))
                self._buffered += len(data)
            return succeed(None)
        # Pieces are framed straight from memoryviews of ``data`` (AMP copies
        # them into frames synchronously, inside callRemote).
        view = memoryview(data).cast("B")
        pos = 0
        if self._buffer:
            pos = P.STREAM_BYTES - self._buffered
            self._buffer.append(bytes(view[:pos]))
            self._send(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0
        whole = pos + (len(view) - pos) // P.STREAM_BYTES * P.STREAM_BYTES
        for start in range(pos, whole, P.STREAM_BYTES):
            self._send(view[start : start + P.STREAM_BYTES])
        if whole < len(view):
            self._buffer.append(bytes(view[whole:]))
            self._buffered = len(view) - whole
        if self._error is not None:
            return fail(self._error)
        if self._unacked <= WRITE_WINDOW:
            return succeed(None)
        self._waiter = Deferred()
        return self._waiter

    def _send(self, piece: bytes | memoryview) -> None:
        n = len(piece)
        self._unacked += n
        d = self._driver._remote(self._child, P.Write, handle=self._handle, data=piece)
        d.addCallbacks(self._acked, self._failed, callbackArgs=(n,), errbackArgs=(n,))

    def _flush(self) -> None:
        """Send what small writes left gathered."""
        if self._buffer:
            piece = b"".join(self._buffer)
            self._buffer, self._buffered = [], 0
            self._send(piece)

    def _drain(self) -> Deferred[None]:
        """Fire once every piece sent so far has been acknowledged."""
        if self._unacked == 0:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._drained.append(d)
        return d

    def _finish(self, state: str, command: type[amp.Command]) -> Deferred[None]:
        op = {"closed": "close", "committed": "commit", "cancelled": "cancel"}[state]
        if self._done is not None:
            if state == "closed":
                return succeed(None)
            return fail(DriverError(self._driver.name, f"{op}() on a {self._done} writer"))
        self._done = state
        if self._child.ended is not None and state != "committed":
            return succeed(None)  # the child's death released the handle
        if state == "cancelled":
            self._buffer, self._buffered = [], 0
        else:
            self._flush()
        if state != "committed":
            # The child runs commands on one handle in order, so close and
            # cancel can follow the unacknowledged writes at once; by the
            # time their answer arrives, every write's answer has too.
            d = self._driver._remote(self._child, command, handle=self._handle)

            def report(_: Any) -> Failure | None:
                if state == "closed" and self._error is not None:
                    return self._error  # a write failed: say so on close too
                return None

            return d.addCallback(report)

        # Commit only once every write is known to have succeeded: a failed
        # write must never be followed by committing what the child has.
        def send(_: Any) -> Deferred[None]:
            if self._error is not None:
                error = self._error
                cancel = self._driver._remote(self._child, P.Cancel, handle=self._handle)
                cancel.addErrback(lambda f: None)
                return cancel.addCallback(lambda _: error)
            return self._driver._remote(self._child, command, handle=self._handle).addCallback(lambda _: None)

        return self._drain().addCallback(send)

    def close(self) -> Deferred[None]:
        """Close the handle, keeping the bytes for a later append."""
        return self._finish("closed", P.CloseHandle)

    def commit(self) -> Deferred[None]:
        """Make the object final; fails if any write failed."""
        return self._finish("committed", P.Commit)

    def cancel(self) -> Deferred[None]:
        """Discard the object in the child."""
        return self._finish("cancelled", P.Cancel)


# --- the driver ---------------------------------------------------------------


@implementer(IStorageDriver)
class OutOfProcessDriver:
    """``IStorageDriver`` served by a ``registry-storage-<name>`` child process.

    ``executable`` is run with ``args``, in ``env`` (default: this process's
    environment); ``params`` (JSON-serialisable) go to the child's driver in
    the ``Configure`` command; ``name`` names the driver in errors (default:
    the executable's name without ``registry-storage-``). A refused handshake
    (version mismatch, bad parameters, no answer within
    ``handshake_timeout`` seconds) fails the waiting calls with
    ``DriverError``; it is not retried in the background, but the next call
    tries a fresh child (so replacing the executable needs no restart).
    """

    def __init__(
        self,
        executable: str,
        params: dict[str, Any],
        name: str | None = None,
        reactor: Any = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self.executable = executable
        self._args = list(args)
        self._env = env
        self._handshake_timeout = handshake_timeout
        self.params = dict(params)
        json.dumps(self.params)  # fail early on parameters that cannot cross the wire
        base = os.path.basename(executable)
        self.name: str = name or (base[len(EXECUTABLE_PREFIX) :] if base.startswith(EXECUTABLE_PREFIX) else base)
        #: Protocol version of the running child, once the handshake is done.
        self.child_version: tuple[int, int] | None = None
        self.restarts = 0
        self._child: _ChildProtocol | None = None
        self._starting = False  # a child is spawned but not yet through the handshake
        self._waiting: list[Deferred[_ChildProtocol]] = []
        self._closed = False
        self._failures_in_a_row = 0
        self._restart_call: Any = None
        self._shutdown_trigger: Any = None

    # process management ------------------------------------------------------

    @property
    def child_pid(self) -> int | None:
        """The pid of the running child, or None."""
        child = self._child
        return child.pid if child is not None and child.ended is None else None

    def _get_child(self) -> Deferred[_ChildProtocol]:
        """Fire with a child that finished the handshake (starting one if
        needed), or fail with ``DriverError``."""
        if self._closed:
            return fail(DriverError(self.name, "driver is closed"))
        child = self._child
        if child is not None and child.ended is None and not self._starting:
            return succeed(child)
        d: Deferred[_ChildProtocol] = Deferred()
        self._waiting.append(d)
        if not self._starting:
            self._start()
        return d

    def _start(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self._shutdown_trigger is None and IReactorCore.providedBy(self._reactor):
            self._shutdown_trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self.close)
        child = _ChildProtocol(self.name, self._child_ended, self._reactor)
        self._child = child
        self._starting = True
        try:
            IReactorProcess(self._reactor).spawnProcess(
                child,
                self.executable,
                [self.executable, *self._args],
                env=self._env if self._env is not None else dict(os.environ),
                childFDs={0: "w", 1: "r", 2: "r"},
            )
        except Exception as exc:  # e.g. the executable vanished
            self._child = None
            self._starting = False
            self._release(Failure(DriverError(self.name, f"cannot start {self.executable}: {exc}")))
            return
        _log.info("storage driver {driver}: started {exe} (pid {pid})", driver=self.name, exe=self.executable, pid=child.pid)
        timer = self._reactor.callLater(self._handshake_timeout, self._handshake_timed_out, child)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d = self._handshake(child)
        d.addBoth(stop_timer)
        d.addCallbacks(self._handshake_done, self._handshake_failed, callbackArgs=(child,), errbackArgs=(child,))

    def _handshake_timed_out(self, child: _ChildProtocol) -> None:
        error = DriverError(self.name, f"{self.executable} did not answer the handshake in {self._handshake_timeout:g}s")
        self._handshake_failed(Failure(error), child)

    def _handshake(self, child: _ChildProtocol) -> Deferred[Any]:
        d = self._remote(child, P.Hello, major=P.PROTOCOL_MAJOR, minor=P.PROTOCOL_MINOR)

        def check(answer: dict[str, Any]) -> Deferred[Any]:
            major, minor = int(answer["major"]), int(answer["minor"])
            if major != P.PROTOCOL_MAJOR or minor < P.PROTOCOL_MINOR:
                raise DriverError(
                    self.name,
                    f"{self.executable} speaks storage protocol {major}.{minor}, but this registry "
                    f"speaks {P.PROTOCOL_MAJOR}.{P.PROTOCOL_MINOR} (the major must match and the "
                    f"minor must be {P.PROTOCOL_MINOR} or newer)",
                )
            self.child_version = (major, minor)
            return self._remote(child, P.Configure, params=self.params)

        d.addCallback(check)
        return d

    def _handshake_done(self, _: Any, child: _ChildProtocol) -> None:
        if child is not self._child or child.ended is not None:
            return  # it died meanwhile; _child_ended has failed the waiters
        self._starting = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(child)

    def _handshake_failed(self, failure: Failure, child: _ChildProtocol) -> None:
        if child is not self._child:
            return
        if not failure.check(StorageError):
            failure = Failure(DriverError(self.name, f"handshake with {self.executable} failed: {failure.getErrorMessage()}"))
        _log.error("storage driver {driver}: {error}", driver=self.name, error=failure.getErrorMessage())
        self._starting = False
        self._child = None
        if child.amp.transport is not None:
            child.amp.transport.loseConnection()
        child.kill()
        self._release(failure)

    def _release(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def _child_ended(self, child: _ChildProtocol, reason: Failure) -> None:
        if child is not self._child:
            return  # a child we already gave up on (failed handshake)
        how = child.describe_end()
        self._child = None
        if self._starting:
            self._starting = False
            self._release(Failure(DriverError(self.name, f"{how} during the handshake (its stderr is in the log)")))
            return
        if self._closed:
            return
        _log.error("storage driver {driver}: {how}; restarting it", driver=self.name, how=how)
        self.restarts += 1
        if child.uptime() > HEALTHY_UPTIME:
            self._failures_in_a_row = 0
        self._failures_in_a_row += 1
        delay = min(RESTART_DELAY * 2 ** (self._failures_in_a_row - 1), RESTART_DELAY_MAX)
        self._restart_call = self._reactor.callLater(delay, self._eager_restart)

    def _eager_restart(self) -> None:
        self._restart_call = None
        if self._closed or self._child is not None:
            return
        d: Deferred[_ChildProtocol] = Deferred()
        self._waiting.append(d)
        d.addErrback(lambda f: None)  # logged by _handshake_failed
        self._start()

    def close(self) -> Deferred[None]:
        """Stop the child: close its stdin so it closes its handles and exits;
        SIGKILL it after ``STOP_TIMEOUT`` seconds. Fires with None once it has
        exited. Later calls fail with ``DriverError``."""
        self._closed = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        if self._shutdown_trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass
            self._shutdown_trigger = None
        self._release(Failure(DriverError(self.name, "driver is closed")))
        child = self._child
        if child is None or child.ended is not None:
            return succeed(None)
        try:
            if child.transport is not None:
                child.transport.closeStdin()
        except Exception:
            pass
        killer = self._reactor.callLater(STOP_TIMEOUT, child.kill)
        d = child.when_ended()

        def done(_: Any) -> None:
            if killer.active():
                killer.cancel()

        d.addCallback(done)
        return d

    # calls -------------------------------------------------------------------

    def _remote(self, child: _ChildProtocol, command: type[amp.Command], **kwargs: Any) -> Deferred[Any]:
        """callRemote on ``child``, mapping errors to typed ``StorageError``s."""
        if child.ended is not None:
            return fail(DriverError(self.name, f"{child.describe_end()}; the handle or call was lost"))
        try:
            d = child.amp.callRemote(command, **kwargs)
        except Exception as exc:
            return fail(DriverError(self.name, f"cannot send {command.__name__}: {exc}"))

        def translate(failure: Failure) -> Failure:
            if failure.check(P.StorageFault):
                return Failure(P.error_from_json(str(failure.value), self.name))
            if failure.check(StorageError):
                return failure
            if child.ended is not None or failure.check(ierror.ConnectionDone, ierror.ConnectionLost, ierror.ProcessDone, ierror.ProcessTerminated):
                return Failure(DriverError(self.name, f"{child.describe_end()} during {command.__name__}"))
            return Failure(DriverError(self.name, f"{command.__name__} failed: {failure.getErrorMessage()}"))

        d.addErrback(translate)
        return d

    def _call(self, command: type[amp.Command], **kwargs: Any) -> Deferred[tuple[_ChildProtocol, dict[str, Any]]]:
        def call(child: _ChildProtocol) -> Deferred[tuple[_ChildProtocol, dict[str, Any]]]:
            return self._remote(child, command, **kwargs).addCallback(lambda r: (child, r))

        return self._get_child().addCallback(call)

    def get_content(self, path: str) -> Deferred[bytes]:
        """Fire with the whole object; ``PathNotFoundError``, ``DriverError``."""
        return self._call(P.GetContent, path=path).addCallback(lambda cr: cr[1]["data"])

    def put_content(self, path: str, data: bytes) -> Deferred[None]:
        """Store ``data`` atomically (one command, however large)."""
        return self._call(P.PutContent, path=path, data=bytes(data)).addCallback(lambda _: None)

    def reader(self, path: str, offset: int = 0) -> Deferred[IFileReader]:
        """Fire with a prefetching reader handle in the child."""
        d = self._call(P.OpenReader, path=path, offset=offset)
        return d.addCallback(lambda cr: _RemoteReader(self, cr[0], int(cr[1]["handle"])))

    def writer(self, path: str, append: bool = False) -> Deferred[IFileWriter]:
        """Fire with a windowed writer handle in the child."""
        d = self._call(P.OpenWriter, path=path, append=bool(append))
        return d.addCallback(lambda cr: _RemoteWriter(self, cr[0], int(cr[1]["handle"]), int(cr[1]["size"])))

    def stat(self, path: str) -> Deferred[FileInfo]:
        """Fire with the ``FileInfo`` the child reports."""
        return self._call(P.Stat, path=path).addCallback(lambda cr: P.fileinfo_from_json(cr[1]["info"]))

    def list(self, path: str) -> Deferred[list[str]]:
        """Fire with the sorted child paths of directory ``path``."""
        return self._call(P.List, path=path).addCallback(lambda cr: [str(p) for p in cr[1]["paths"]])

    def move(self, source: str, dest: str) -> Deferred[None]:
        """Move ``source`` to ``dest`` in the child."""
        return self._call(P.Move, source=source, dest=dest).addCallback(lambda _: None)

    def delete(self, path: str) -> Deferred[None]:
        """Delete an object or tree in the child."""
        return self._call(P.Delete, path=path).addCallback(lambda _: None)

    def walk(self, path: str) -> Deferred[builtins.list[FileInfo]]:
        """Fire with every ``FileInfo`` below ``path``."""
        return self._call(P.Walk, path=path).addCallback(lambda cr: [P.fileinfo_from_json(o) for o in cr[1]["infos"]])

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """Fire with the child driver's redirect URL, or None."""
        return self._call(P.RedirectURL, path=path, method=method).addCallback(lambda cr: cr[1]["url"])


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

    protocol = P.DriverServer(driver_name, make_driver, on_lost)
    # mypy resolves twisted.internet.stdio to the Windows StandardIO; the POSIX
    # one this runs on takes stdin/stdout descriptors.
    stdio = StandardIO(protocol, stdin=0, stdout=stdout_fd, reactor=reactor)  # type: ignore[call-arg]
    reader = getattr(stdio, "_reader", None)
    if reader is not None:
        P.tune_pipe_reader(reader)
    reactor.run()


def main_filesystem() -> None:
    """Entry point of ``registry-storage-filesystem``."""
    serve("filesystem")


def main_inmemory() -> None:
    """Entry point of ``registry-storage-inmemory``."""
    serve("inmemory")
