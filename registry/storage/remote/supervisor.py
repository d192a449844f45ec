"""The parent side of an out-of-process driver's child: spawn, handshake,
supervise, restart and stop ``registry-storage-<name>``.

``ChildSupervisor`` owns the child process of one ``OutOfProcessDriver``:

* spawns it on first use (``reactor.spawnProcess``; AMP runs over the child's
  stdin/stdout; every line the child writes to stderr is logged with the
  driver name and pid);
* checks the protocol version (major must match, the child's minor may be
  newer, never older) and sends the driver parameters (``Configure``);
* restarts it when it dies: calls in flight fail with ``DriverError`` naming
  the driver and how the child ended; new calls start a fresh child (one is
  also started eagerly after a short, growing back-off);
* ``close()`` stops it (stdin is closed; the child closes its handles and
  exits; it is killed if it has not exited after ``STOP_TIMEOUT`` seconds).
  Nothing else stops it: the application owns the driver's lifecycle
  (``registry.storage.wrapper.DriverService``). A parent that dies without
  closing leaves a child that exits when its stdin reaches EOF.

Why ``spawnProcess`` and not ``ProcessEndpoint``: the endpoint's transport
proxy exposes only ``IProcessTransport``, not the pipes that
``fastpipe.tune_pipe_reader`` tunes (without that, streams cost twice the CPU:
see ``fastpipe``), and its stderr handling logs raw chunks without the
driver's name. The AMP itself is stock ``amp.AMP`` plus the measured parser
of ``fastpipe.FrameParsingAMP``.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

from twisted.internet import error as ierror
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from registry.storage.driver import DriverError, StorageError
from registry.storage.remote import wire
from registry.storage.remote.fastpipe import FrameParsingAMP, tune_child_pipes

_log = Logger()

#: Seconds the child has to answer the handshake.
HANDSHAKE_TIMEOUT = 30.0
#: Seconds ``close()`` waits for the child to exit before SIGKILL.
STOP_TIMEOUT = 5.0
#: Restart back-off: first delay, cap (seconds); a child that lived longer
#: than ``HEALTHY_UPTIME`` resets it.
RESTART_DELAY = 0.1
RESTART_DELAY_MAX = 5.0
HEALTHY_UPTIME = 10.0
#: A stderr "line" longer than this is logged in pieces.
_STDERR_LINE_MAX = 64 * 1024


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


class ChildProtocol(ProcessProtocol):
    """Bridges one child process to an AMP client; logs its stderr lines."""

    def __init__(self, driver_name: str, on_ended: Callable[["ChildProtocol", Failure], None], clock: IReactorTime) -> None:
        self.driver_name = driver_name
        self.amp = FrameParsingAMP()
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
        tune_child_pipes(self.transport)
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


class ChildSupervisor:
    """Runs the child of driver ``name``; see the module docstring.

    ``executable`` is run with ``args``, in ``env`` (default: this process's
    environment); ``params`` (JSON-serialisable) go to the child's driver in
    the ``Configure`` command. A refused handshake (version mismatch, bad
    parameters, no answer within ``handshake_timeout`` seconds) fails the
    waiting calls with ``DriverError``; it is not retried in the background,
    but the next call tries a fresh child (so replacing the executable needs
    no restart).
    """

    def __init__(
        self,
        executable: str,
        params: dict[str, Any],
        name: str,
        reactor: Any,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self.executable = executable
        self._args = list(args)
        self._env = env
        self._handshake_timeout = handshake_timeout
        self.params = params
        self.name = name
        #: Protocol version of the running child, once the handshake is done.
        self.child_version: tuple[int, int] | None = None
        self.restarts = 0
        self._child: ChildProtocol | None = None
        self._starting = False  # a child is spawned but not yet through the handshake
        self._waiting: list[Deferred[ChildProtocol]] = []
        self._closed = False
        self._failures_in_a_row = 0
        self._restart_call: Any = None

    @property
    def child_pid(self) -> int | None:
        """The pid of the running child, or None."""
        child = self._child
        return child.pid if child is not None and child.ended is None else None

    def get_child(self) -> Deferred[ChildProtocol]:
        """Fire with a child that finished the handshake (starting one if
        needed), or fail with ``DriverError``."""
        if self._closed:
            return fail(DriverError(self.name, "driver is closed"))
        child = self._child
        if child is not None and child.ended is None and not self._starting:
            return succeed(child)
        d: Deferred[ChildProtocol] = Deferred()
        self._waiting.append(d)
        if not self._starting:
            self._start()
        return d

    def _start(self) -> None:
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
        self._restart_call = None
        child = ChildProtocol(self.name, self._child_ended, self._reactor)
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

    def _handshake_timed_out(self, child: ChildProtocol) -> None:
        error = DriverError(self.name, f"{self.executable} did not answer the handshake in {self._handshake_timeout:g}s")
        self._handshake_failed(Failure(error), child)

    def _handshake(self, child: ChildProtocol) -> Deferred[Any]:
        d = self.call(child, wire.Hello, major=wire.PROTOCOL_MAJOR, minor=wire.PROTOCOL_MINOR)

        def check(answer: dict[str, Any]) -> Deferred[Any]:
            major, minor = int(answer["major"]), int(answer["minor"])
            if major != wire.PROTOCOL_MAJOR or minor < wire.PROTOCOL_MINOR:
                raise DriverError(
                    self.name,
                    f"{self.executable} speaks storage protocol {major}.{minor}, but this registry "
                    f"speaks {wire.PROTOCOL_MAJOR}.{wire.PROTOCOL_MINOR} (the major must match and the "
                    f"minor must be {wire.PROTOCOL_MINOR} or newer)",
                )
            self.child_version = (major, minor)
            return self.call(child, wire.Configure, params=self.params)

        d.addCallback(check)
        return d

    def _handshake_done(self, _: Any, child: ChildProtocol) -> None:
        if child is not self._child or child.ended is not None:
            return  # it died meanwhile; _child_ended has failed the waiters
        self._starting = False
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(child)

    def _handshake_failed(self, failure: Failure, child: ChildProtocol) -> None:
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

    def _child_ended(self, child: ChildProtocol, reason: Failure) -> None:
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
        d: Deferred[ChildProtocol] = Deferred()
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

    def call(self, child: ChildProtocol, command: type[amp.Command], **kwargs: Any) -> Deferred[Any]:
        """callRemote on ``child``, mapping errors to typed ``StorageError``s."""
        if child.ended is not None:
            return fail(DriverError(self.name, f"{child.describe_end()}; the handle or call was lost"))
        try:
            d = child.amp.callRemote(command, **kwargs)
        except Exception as exc:
            return fail(DriverError(self.name, f"cannot send {command.__name__}: {exc}"))

        def translate(failure: Failure) -> Failure:
            if failure.check(wire.StorageFault):
                return Failure(wire.error_from_json(str(failure.value), self.name))
            if failure.check(StorageError):
                return failure
            if child.ended is not None or failure.check(ierror.ConnectionDone, ierror.ConnectionLost, ierror.ProcessDone, ierror.ProcessTerminated):
                return Failure(DriverError(self.name, f"{child.describe_end()} during {command.__name__}"))
            return Failure(DriverError(self.name, f"{command.__name__} failed: {failure.getErrorMessage()}"))

        d.addErrback(translate)
        return d

