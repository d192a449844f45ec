"""Several worker processes serving one listening socket (``http.workers``).

One Python process uses one core.  With ``http.workers`` (or ``twistd
registry --workers N``) above 1, ``twistd registry`` becomes a small
supervisor:

* **The socket.**  The parent binds the main listener itself (the address
  ``http.addr`` or ``--listen`` names; plain TCP even when ``http.tls`` is
  set) and never accepts on it.  Each worker is ``python -m registry.workers``
  started with ``spawnProcess`` and the socket as its file descriptor 3; it
  adopts it (``reactor.adoptStreamPort``) and, when ``http.tls`` is set,
  wraps its site in TLS itself (``registry.tls.tls_factory`` with the same
  ``CertificateOptions``, mutual TLS included).  The kernel hands each new
  connection to one of the workers waiting on the socket; a worker accepts
  one connection per wake-up, so a burst of connections spreads over the
  workers instead of going to whichever woke first.
* **One of a kind.**  Worker 0 (the *primary*; the index is stable across
  restarts) runs what must run once: upload purging and scheduled garbage
  collection.  The others have them switched off.  Notifications are sent
  by the worker that served the request (each event once).
* **One secret.**  Without ``http.secret`` the parent draws one random
  secret per start and gives it to every worker (in its instructions), so
  the web page's form tokens one worker signs are good at the others.
* **The debug listener** (``http.debug.addr``) is served by the parent.
  Each worker serves its own debug pages on a private unix socket in a
  runtime directory; the parent answers ``/debug/health`` with worker 0's
  (any worker's, when 0 is restarting) and the metrics page with the sum of
  every worker's samples of equal name and labels, so counters and
  histograms are registry-wide; per-process facts (``process_*``,
  ``python_*``) keep one series per worker under a ``worker`` label, and
  ``registry_workers`` says how many workers answered.
* **Restarts.**  A worker that dies is started again (logged).  Workers that
  die soon after starting are restarted after a growing delay; when
  :data:`BURST` of them die within :data:`BURST_WINDOW` seconds the registry
  gives up with an error and exits 1 instead of spinning.
* **Stopping.**  On SIGTERM the parent closes its copy of the socket, sends
  SIGTERM to every worker, waits up to ``stop_timeout`` seconds (then
  SIGKILL) and exits 0.  Each worker reads a pipe from the parent (its
  stdin); end of file, the parent gone, makes it stop too.
* ``storage: inmemory`` cannot be shared: with ``workers`` set above 1 it is
  refused at start, and when ``workers`` is left to the default it runs one
  process.  So does ``--listen ssl:...`` (configure ``http.tls`` instead).

Uploads keep their state in storage, so any worker continues any upload;
the upload lock is per process unless ``redis`` is configured (one client's
requests for an upload come one after another, so this is only a concern
for clients that send chunks of one upload in parallel, which the protocol
does not allow).
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import secrets
import shutil
import signal
import stat
import socket
import sys
import tempfile
import threading
import time
from typing import IO, Any, Callable, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.config import Config

__all__ = [
    "BURST",
    "BURST_WINDOW",
    "SPEC_ENV",
    "AdoptedEndpoint",
    "WorkerSupervisor",
    "cpu_count",
    "resolve_workers",
    "worker_config",
    "worker_main",
]

_log = Logger(namespace="registry.workers")

#: The environment variable carrying a worker's instructions (JSON).
SPEC_ENV = "REGISTRY_WORKER_SPEC"
#: The listening socket's descriptor number in a worker.
LISTEN_FD = 3
#: A worker writes a line here once it serves (its parent reads it).
READY_FD = 4
#: This many quick deaths within BURST_WINDOW seconds: give up.
BURST = 5
BURST_WINDOW = 60.0
#: A worker that died before it served, or less than this many seconds
#: after, died "at once" (counts for back-off and giving up).
QUICK_DEATH = 5.0
#: Connections a worker accepts per wake-up of the shared socket.
ACCEPTS_PER_WAKEUP = 1


def cpu_count() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class WorkersError(ValueError):
    """``workers`` set above 1 where several processes cannot work."""


def resolve_workers(config: Config, requested: int | None, listen: str | None) -> tuple[int, str | None]:
    """``(count, note)``: the number of processes to run and, when the
    default (one per core) was reduced to 1, why.  ``requested`` is
    ``--workers`` (None: ``http.workers``).  Raises :class:`WorkersError`
    when more than one was asked for explicitly but cannot be."""
    source = "--workers" if requested is not None else "http.workers"
    wanted = requested if requested is not None else config.http.workers
    count = wanted if wanted > 0 else cpu_count()
    if count <= 1:
        return 1, None
    reason = None
    if config.storage.driver == "inmemory":
        reason = (
            "storage inmemory keeps the registry in each process's memory, so workers would not see "
            "each other's pushes; use filesystem or s3 storage, or workers: 1"
        )
    elif listen is not None and listen.split(":", 1)[0] not in ("tcp", "tcp6", "unix"):
        reason = (
            f"--listen {listen!r}: workers share only tcp, tcp6 and unix endpoints "
            "(for TLS configure http.tls); or use --workers 1"
        )
    if reason is None:
        return count, None
    if wanted > 0:
        raise WorkersError(f"{source} = {wanted}: {reason}")
    return 1, f"one process: {reason}"


def worker_config(config: Config, primary: bool, secret: str | None = None) -> Config:
    """``config`` as a worker runs it: only the primary purges uploads and
    collects garbage; ``secret`` (the supervisor's random one, shared by
    every worker) stands in for an unset ``http.secret``."""
    if secret and not config.http.secret:
        config = dataclasses.replace(config, http=dataclasses.replace(config.http, secret=secret))
    if primary:
        return config
    storage = dataclasses.replace(
        config.storage,
        uploadpurging=dataclasses.replace(config.storage.uploadpurging, enabled=False),
        gc=dataclasses.replace(config.storage.gc, enabled=False),
    )
    return dataclasses.replace(config, storage=storage)


# --- the parent ----------------------------------------------------------------------


class _NeverServed(Factory):
    """The parent's factory on the shared socket: it never accepts."""

    noisy = False

    def buildProtocol(self, addr: Any) -> Protocol | None:  # pragma: no cover - never reading
        return None


@implementer(IStreamServerEndpoint)
class SharedSocketEndpoint:
    """Binds ``endpoint`` in the parent and stops reading from it: the
    workers accept; the parent keeps the socket open for new workers."""

    def __init__(self, endpoint: IStreamServerEndpoint) -> None:
        self.endpoint = endpoint
        self._waiting: list[Deferred[IListeningPort]] = []
        self.port: IListeningPort | None = None

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        d = self.endpoint.listen(factory)

        def quiet(port: IListeningPort) -> IListeningPort:
            port.stopReading()  # type: ignore[attr-defined]
            self.port = port
            waiting, self._waiting = self._waiting, []
            for w in waiting:
                w.callback(port)
            return port

        d.addCallback(quiet)
        return d

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the port once bound (never, if binding fails: then
        the registry does not start)."""
        if self.port is not None:
            return succeed(self.port)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d


class _Worker(ProcessProtocol):
    """One worker process as the supervisor sees it."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started = time.monotonic()
        #: When it said it serves (None: not yet).
        self.ready: float | None = None
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        self._partial: dict[int, bytes] = {}

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.pid = self.transport.pid

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == READY_FD:
            if self.ready is None:
                self.ready = time.monotonic()
            return
        # Only when the parent's log goes to a file: relay whole lines.
        data = self._partial.pop(childFD, b"") + data
        *lines, rest = data.split(b"\n")
        if rest:
            self._partial[childFD] = rest
        for line in lines:
            self.supervisor.relay(line)

    def processEnded(self, reason: Failure) -> None:
        for rest in self._partial.values():
            self.supervisor.relay(rest)
        self._partial.clear()
        self.supervisor.worker_ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """Starts ``count`` workers on the shared socket (whose port
    ``port_ready()`` gives), restarts them, stops them."""

    def __init__(
        self,
        count: int,
        port_ready: Callable[[], Deferred[IListeningPort]],
        spec: dict[str, Any],
        reactor: Any,
        *,
        output: IO[str] | None = None,
        command: Sequence[str] | None = None,
        stop_timeout: float = 15.0,
        on_give_up: Callable[[], None] | None = None,
    ) -> None:
        self.count = count
        self.port_ready = port_ready
        self.spec = spec
        self.reactor = reactor
        self.output = output
        self.command = list(command or [sys.executable, "-m", "registry.workers"])
        self.stop_timeout = stop_timeout
        self.on_give_up = on_give_up
        self.workers: dict[int, _Worker] = {}
        self.gave_up = False
        self._fd: int | None = None
        self._stopping = False
        self._quick_deaths: collections.deque[float] = collections.deque()
        self._pending: dict[int, Any] = {}

    # -- starting --

    def startService(self) -> None:
        super().startService()
        self.port_ready().addCallbacks(self._start_all, lambda f: None)

    def _start_all(self, port: IListeningPort) -> None:
        self._fd = port.fileno()  # type: ignore[attr-defined]
        for index in range(self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._pending.pop(index, None)
        if self._stopping or self._fd is None:
            return
        worker = _Worker(self, index)
        spec = {**self.spec, "index": index, "count": self.count, "fd": LISTEN_FD}
        env = {**os.environ, SPEC_ENV: json.dumps(spec)}
        child_fds: dict[int, int | str] = {0: "w", LISTEN_FD: self._fd, READY_FD: "r"}
        out_fd = _plain_fd(self.output)
        if out_fd is not None:
            # The parent's log is a stream (stdout): the workers write
            # their lines to it directly (one write per line).
            child_fds.update({1: out_fd, 2: out_fd})
        else:
            child_fds.update({1: "r", 2: "r"})
        self.reactor.spawnProcess(worker, self.command[0], self.command, env=env, childFDs=child_fds)
        self.workers[index] = worker
        _log.info("worker {index} started (pid {pid})", index=index, pid=worker.pid)

    def relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace")
        if self.output is not None:
            self.output.write(text + "\n")
            self.output.flush()
        else:
            _log.info("{line}", line=text)

    # -- a worker died --

    def worker_ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        if self._stopping or self.gave_up:
            return
        how = _describe_exit(reason)
        now = time.monotonic()
        lived = now - worker.started
        delay = 0.0
        if worker.ready is None or now - worker.ready < QUICK_DEATH:
            self._quick_deaths.append(now)
            while self._quick_deaths and now - self._quick_deaths[0] > BURST_WINDOW:
                self._quick_deaths.popleft()
            if len(self._quick_deaths) >= BURST:
                self._give_up(worker, how)
                return
            delay = min(5.0, 0.25 * 2 ** (len(self._quick_deaths) - 1))
        _log.error(
            "worker {index} (pid {pid}) {how} after {lived:.1f}s; restarting it{later}",
            index=worker.index,
            pid=worker.pid,
            how=how,
            lived=lived,
            later=f" in {delay:.2f}s" if delay else "",
        )
        self._pending[worker.index] = self.reactor.callLater(delay, self._spawn, worker.index)

    def _give_up(self, worker: _Worker, how: str) -> None:
        self.gave_up = True
        _log.critical(
            "worker {index} (pid {pid}) {how}; {burst} workers died within {window:.0f}s as they started, "
            "giving up: the registry stops (the workers' errors are above)",
            index=worker.index,
            pid=worker.pid,
            how=how,
            burst=BURST,
            window=BURST_WINDOW,
        )
        if self.on_give_up is not None:
            self.on_give_up()

    # -- stopping --

    def stopService(self) -> Deferred[None]:
        super().stopService()
        self._stopping = True
        for call in self._pending.values():
            if call.active():
                call.cancel()
        self._pending.clear()
        workers = list(self.workers.values())
        if not workers:
            if not self.gave_up:
                _stopped_cleanly(self.reactor)
            return succeed(None)
        for worker in workers:
            _signal(worker, "TERM")

        def kill() -> None:
            for worker in workers:
                if not worker.ended.called:
                    _log.warn("worker {index} (pid {pid}) did not stop in time; killing it",
                              index=worker.index, pid=worker.pid)
                    _signal(worker, "KILL")

        killer = self.reactor.callLater(self.stop_timeout, kill)
        d = DeferredList([w.ended for w in workers])

        def done(_: Any) -> None:
            if killer.active():
                killer.cancel()
            _log.info("workers stopped")
            _stopped_cleanly(self.reactor)

        d.addCallback(done)
        return d  # type: ignore[return-value]


def _stopped_cleanly(reactor: Any) -> None:
    """Every worker stopped as asked: SIGTERM was handled, so the exit
    status is 0 (twistd would otherwise re-raise the signal it stopped on,
    reading the reactor's ``_exitSignal`` once the reactor has stopped;
    ``tests/test_twisted_pins.py`` fails if Twisted changes that)."""
    if getattr(reactor, "_exitSignal", None) == signal.SIGTERM:
        reactor._exitSignal = None


def _plain_fd(output: IO[str] | None) -> int | None:
    """The descriptor of ``output`` when workers may write to it directly:
    a stream such as stdout; not a rotating log file (written through the
    parent) nor nothing (twistd's own observer: syslog...)."""
    from twisted.python.logfile import BaseLogFile

    if output is None or isinstance(output, BaseLogFile):
        return None
    try:
        return output.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _signal(worker: _Worker, name: str) -> None:
    if worker.transport is None:
        return
    try:
        worker.transport.signalProcess(name)
    except (ProcessExitedAlready, OSError):
        pass


def _describe_exit(reason: Failure) -> str:
    value = reason.value
    if isinstance(value, ProcessDone):
        return "exited with status 0"
    signal_number = getattr(value, "signal", None)
    if signal_number:
        try:
            name = signal.Signals(signal_number).name
        except ValueError:
            name = str(signal_number)
        return f"was killed by {name}"
    return f"exited with status {getattr(value, 'exitCode', '?')}"


RUNTIME_PREFIX = "registry-workers-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_runtime_directories(parent: str | None = None) -> list[str]:
    """Remove the runtime directories of supervisors that died without
    stopping (SIGKILL, a crash): ``registry-workers-<pid>-*`` of this user
    whose ``<pid>`` no longer runs. Returns the paths removed."""
    parent = parent or tempfile.gettempdir()
    removed: list[str] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    uid = os.getuid()
    for name in names:
        if not name.startswith(RUNTIME_PREFIX):
            continue
        pid_text = name[len(RUNTIME_PREFIX):].split("-", 1)[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        path = os.path.join(parent, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if st.st_uid != uid or not stat.S_ISDIR(st.st_mode):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


class RuntimeDirectory(Service):
    """A private directory for the workers' debug sockets, removed at stop
    (and, if this supervisor is killed, by the next one to start)."""

    def __init__(self) -> None:
        remove_stale_runtime_directories()
        self.path = tempfile.mkdtemp(prefix=f"{RUNTIME_PREFIX}{os.getpid()}-")

    def stopService(self) -> None:
        super().stopService()
        shutil.rmtree(self.path, ignore_errors=True)


def worker_debug_socket(rundir: str, index: int) -> str:
    return os.path.join(rundir, f"worker-{index}.sock")


def supervisor_application(config: Config, options: Any, reactor: Any, output: IO[str] | None) -> Any:
    """The parent's side as a ``RegistryApplication`` for ``RegistryService``:
    the shared main socket (bound, never read), the debug listener serving
    the workers' aggregated pages, and the supervisor; the service stops the
    listeners first, then the supervisor (which waits for the workers), then
    removes the runtime directory."""
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource

    from registry.app import Listener, RegistryApplication, endpoint_description

    count = int(options["worker_count"])
    listen = options["listen"]
    plain = dataclasses.replace(config.http, tls_certificate=None, tls_key=None)
    description = listen or endpoint_description(plain)
    shown = description if listen or config.http.tls_settings() is None else f"tls:{config.http.addr}"
    shared = SharedSocketEndpoint(serverFromString(reactor, description))
    listeners = [Listener("main", shared, _NeverServed(), shown)]
    services: list[Any] = []
    spec: dict[str, Any] = {"config": options["config"], "listen": listen, "rundir": None}
    if not config.http.secret:
        # The web page's form tokens are signed with http.secret, random per
        # start when unset: one random secret for every worker, so a form
        # one worker served is accepted by whichever takes its POST.
        spec["secret"] = secrets.token_hex(32)
    if config.http.debug.addr is not None:
        from registry.observe.debug import DebugSite, WorkersDebugResource

        rundir = RuntimeDirectory()
        services.append(rundir)
        spec["rundir"] = rundir.path
        debug_http = dataclasses.replace(plain, addr=config.http.debug.addr, net="tcp")
        resource = WorkersDebugResource(
            [worker_debug_socket(rundir.path, i) for i in range(count)],
            reactor,
            metrics_path=config.http.debug.prometheus.path if config.http.debug.prometheus.enabled else None,
        )
        listeners.append(Listener("debug", endpoint_description(debug_http), DebugSite(resource)))
    supervisor = WorkerSupervisor(
        count, shared.when_listening, spec, reactor, output=output, on_give_up=lambda: _give_up_and_exit(reactor)
    )
    services.append(supervisor)
    return RegistryApplication(root=Resource(), listeners=listeners, services=services)


def _give_up_and_exit(reactor: Any) -> None:
    import atexit

    def exit_failed() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(1)

    atexit.register(exit_failed)
    if reactor.running:
        reactor.stop()


# --- the worker ----------------------------------------------------------------------


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """An endpoint whose ``listen`` adopts an already listening socket
    (inherited from the parent) instead of binding one."""

    def __init__(self, reactor: Any, fd: int) -> None:
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        probe = socket.socket(fileno=self.fd)
        try:
            family = probe.family
        finally:
            probe.detach()
        port = self.reactor.adoptStreamPort(self.fd, family, factory)
        _one_accept_per_wakeup(port)
        return succeed(port)


def _one_accept_per_wakeup(port: Any) -> None:
    """Twisted accepts up to 100+ queued connections per wake-up; with
    several processes on one socket that gives a whole burst to one worker.
    Accepting one at a time lets the next connection go to another.
    ``numberAccepts`` is undeclared Twisted state of ``tcp.Port``;
    ``tests/test_twisted_pins.py`` fails if Twisted stops reading it."""
    if not hasattr(port, "numberAccepts"):
        return
    read = port.doRead

    def doRead() -> Any:
        port.numberAccepts = ACCEPTS_PER_WAKEUP
        return read()

    port.doRead = doRead


def _watch_parent(reactor: Any, fd: int = 0) -> None:
    """Stop the reactor when the parent's pipe (our stdin) closes."""

    def watch() -> None:
        try:
            while os.read(fd, 4096):
                pass
        except OSError:
            pass
        reactor.callFromThread(_parent_gone, reactor)

    os.set_blocking(fd, True)
    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _parent_gone(reactor: Any) -> None:
    if reactor.running:
        _log.warn("the supervising process is gone; this worker stops")
        reactor.stop()


def build_worker_service(spec: dict[str, Any], environ: dict[str, str], reactor: Any) -> Any:
    """The worker's RegistryService: the application ``spec`` describes, its
    main listener on the inherited socket, its debug listener on a private
    unix socket."""
    from registry.app import Listener, RegistryApplication, make_application
    from registry.tap import Options, RegistryService
    from registry.tls import server_options, tls_factory

    args: list[str] = ["--workers", "1"]
    if spec.get("config"):
        args += ["--config", spec["config"]]
    if spec.get("listen"):
        args += ["--listen", spec["listen"]]
    options = Options(environ=environ)
    options.parseOptions(args)
    index = int(spec["index"])
    config = worker_config(options["registry_config"], primary=index == 0, secret=spec.get("secret"))
    app: RegistryApplication = make_application(
        config, reactor, listen=options["listen"], access=options["access_controller"]
    )
    listeners: list[Listener] = []
    for listener in app.listeners:
        if listener.name == "main":
            factory = listener.factory
            if not isinstance(listener.endpoint, str):
                # http.tls: the parent's socket is plain TCP; speak TLS here.
                settings = config.http.tls_settings()
                assert settings is not None
                factory = tls_factory(server_options(settings), factory)
            listeners.append(
                Listener("main", AdoptedEndpoint(reactor, int(spec["fd"])), factory, description=f"worker {index}")
            )
        elif listener.name == "debug":
            if spec.get("rundir"):
                from registry.app import _escape

                path = worker_debug_socket(spec["rundir"], index)
                if os.path.exists(path):
                    os.unlink(path)  # left by this index's previous worker
                listeners.append(Listener("debug", f"unix:{_escape(path)}", listener.factory))
        else:
            listeners.append(listener)
    app = dataclasses.replace(app, listeners=listeners)
    service = RegistryService(config, app, None, reactor)
    service.announce = False
    return config, service


def worker_main() -> None:
    """``python -m registry.workers``: one worker, started by the supervisor."""
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner

    from registry.logs import make_observer

    # Our own process group: a terminal's Ctrl-C (or a group kill) reaches
    # the parent, which stops the workers in order; it never reaches a
    # worker directly, so the parent does not mistake it for a crash.
    os.setpgrp()
    # One write per log line (a pipe or a terminal shared with the parent).
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    spec = json.loads(os.environ[SPEC_ENV])
    environ = {k: v for k, v in os.environ.items() if k != SPEC_ENV}
    try:
        config, service = build_worker_service(spec, environ, reactor)
    except (usage.UsageError, ValueError) as e:
        # The parent checked the options; what is left fails here (the
        # storage driver's own checks): one line, and the parent backs off.
        sys.stderr.write(f"registry worker {spec.get('index')} cannot start: {e}\n")
        sys.stderr.flush()
        sys.exit(1)
    globalLogBeginner.beginLoggingTo([make_observer(config.log, sys.stdout)], redirectStandardIO=False)
    _watch_parent(reactor)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    _log.info("worker {index} serving (pid {pid})", index=spec["index"], pid=os.getpid())
    _tell_parent_ready()
    reactor.run()


def _tell_parent_ready() -> None:
    try:
        os.write(READY_FD, b"ready\n")
        os.close(READY_FD)
    except OSError:
        pass  # started by hand, without the pipe


if __name__ == "__main__":
    worker_main()
