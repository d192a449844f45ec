"""``twistd registry``: command-line options and the service that runs the registry.

``twistd -n registry [--config FILE] [--listen ENDPOINT]``

* ``--config`` names a Distribution-style YAML file; without it the file named
  by ``$REGISTRY_CONFIGURATION_PATH`` is used (as Distribution does), and
  without that the embedded default (filesystem storage under
  ``./var/registry``, 127.0.0.1:5000).  ``REGISTRY_*`` variables override
  either, and every problem is reported as a usage error naming the key and
  the value before anything starts.
* ``--listen`` takes a Twisted server endpoint string (``tcp:5000``,
  ``ssl:443:privateKey=...``, ``unix:/run/registry.sock``) and replaces
  ``http.addr`` (and ``http.tls``).

:func:`makeService` asks ``registry.app.make_application`` for the registry
(its listeners and services), runs each listener with Twisted's
``strports.service`` and the services beside them, and makes the configured
log observer (``registry.logs``) the twistd application's observer, so text or
JSON lines at the configured level are all that is written.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Mapping, Protocol

from twisted.application import strports
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorCore, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

from registry.app import RegistryApplication, endpoint_description
from registry.auth import IAccessController
from registry.auth.factory import access_controller_from_config
from registry.config import CONFIGURATION_PATH_ENV, Config, ConfigError, load_config, load_config_file
from registry.logs import make_observer
from registry.tls import TLSConfigError, server_options
from registry.workers import WorkersError, resolve_workers

__all__ = ["AppFactory", "Options", "RegistryService", "endpoint_description", "makeService"]


class AppFactory(Protocol):
    """Builds the application from the configuration (``registry.app.make_application``)."""

    def __call__(
        self, config: Config, reactor: Any, *, listen: str | None = None, access: IAccessController | None = None
    ) -> RegistryApplication: ...


_log = Logger(namespace="registry.tap")


def _check_readable(key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(f"{key} {path!r}: cannot read: {e.strerror or e}") from None


class Options(usage.Options):
    """Options of ``twistd registry``; after parsing, ``self["registry_config"]``
    holds the validated :class:`~registry.config.Config`."""

    synopsis = "[--config FILE] [--listen ENDPOINT] [--workers N]"
    longdesc = (
        "Run the container image registry.  The configuration is CNCF Distribution's "
        "YAML (version 0.1) with REGISTRY_<SECTION>_<KEY> environment overrides.  "
        "Without a file, the built-in configuration stores blobs under ./var/registry "
        "and listens on 127.0.0.1:5000."
    )

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self["config"] = None
        self["listen"] = None
        self["registry_config"] = None
        self["access_controller"] = None
        self["workers"] = None
        #: The processes to run (``--workers``/``http.workers`` resolved).
        self["worker_count"] = 1
        self["worker_note"] = None

    def opt_config(self, path: str) -> None:
        """YAML config file (Distribution's keys) [default: $REGISTRY_CONFIGURATION_PATH, else built-in]"""
        _check_readable("--config", path)
        self["config"] = path

    opt_c = opt_config

    def opt_listen(self, description: str) -> None:
        """Twisted endpoint to listen on instead of http.addr/http.tls, e.g. tcp:5000"""
        from twisted.internet import reactor
        from twisted.internet.endpoints import serverFromString

        try:
            serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError) as e:
            raise usage.UsageError(f"--listen {description!r}: not a valid server endpoint: {e}") from None
        self["listen"] = description

    opt_l = opt_listen

    def opt_workers(self, value: str) -> None:
        """Worker processes sharing the listening socket (0: one per CPU core, 1: a single process) [default: http.workers]"""
        try:
            count = int(value)
            if count < 0:
                raise ValueError(value)
        except ValueError:
            raise usage.UsageError(f"--workers {value!r}: must be a whole number, 0 or more") from None
        self["workers"] = count

    opt_w = opt_workers

    def postOptions(self) -> None:
        path = self["config"]
        if path is None and self.environ.get(CONFIGURATION_PATH_ENV):
            path = self.environ[CONFIGURATION_PATH_ENV]
            _check_readable(CONFIGURATION_PATH_ENV, path)
            self["config"] = path
        try:
            if path is None:
                config = load_config(None, self.environ)
            else:
                config = load_config_file(path, self.environ)
        except ConfigError as e:
            raise usage.UsageError(f"{path or 'embedded default configuration'}: {e}") from None
        except OSError as e:
            raise usage.UsageError(f"--config {path!r}: cannot read: {e.strerror or e}") from None
        if self["listen"] is None:
            try:
                endpoint_description(config.http)
                settings = config.http.tls_settings()
                if settings is not None:
                    server_options(settings)  # every file read and checked now
            except (ConfigError, TLSConfigError) as e:
                raise usage.UsageError(str(e)) from None
        try:
            # Built now so a bad htpasswd file or key bundle stops start-up
            # with a message; the application takes it over.
            self["access_controller"] = access_controller_from_config(config.auth.controller_params())
        except ValueError as e:
            raise usage.UsageError(f"invalid configuration: {e}") from None
        try:
            self["worker_count"], self["worker_note"] = resolve_workers(config, self["workers"], self["listen"])
        except WorkersError as e:
            raise usage.UsageError(f"invalid configuration: {e}") from None
        self["registry_config"] = config


@implementer(IStreamServerEndpoint)
class _AnnouncedEndpoint:
    """Wraps a listener's endpoint: logs where it listens, and lets callers
    wait for the port (:meth:`RegistryService.when_listening`).  Twisted's
    ``StreamServerEndpointService`` does the listening and the stopping."""

    def __init__(self, name: str, endpoint: IStreamServerEndpoint, description: str) -> None:
        self.name = name
        self.endpoint = endpoint
        self.description = description
        self.port: IListeningPort | None = None
        self.failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        self.port = self.failure = None
        d = self.endpoint.listen(factory)
        d.addCallbacks(self._listening, self._not_listening)
        return d

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        host = port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            address = f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"
        else:
            name = getattr(host, "name", host)
            address = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        _log.info(
            "registry {which}listening on {address}",
            which="" if self.name == "main" else f"{self.name} ",
            listener=self.name,
            address=address,
            endpoint=self.description,
        )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)
        return port

    def _not_listening(self, failure: Failure) -> Failure:
        self.failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)
        return failure

    def when_listening(self) -> Deferred[IListeningPort]:
        if self.port is not None:
            return succeed(self.port)
        if self.failure is not None:
            return fail(self.failure)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d


class RegistryService(MultiService):
    """The registry: its services, its listeners, and the log observer for twistd.

    The application's services (upload purging, ...) start before the
    listeners and stop after them.  When twistd makes this service a child
    of its application, the configured observer becomes the application's
    ``ILogObserver`` (twistd reads it when it starts logging), replacing
    twistd's default text file observer.
    """

    def __init__(
        self,
        config: Config,
        application: RegistryApplication,
        observer: ILogObserver | None,
        reactor: IReactorCore | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.application = application
        self.observer = observer
        self._endpoints: dict[str, _AnnouncedEndpoint] = {}
        self._listening: list[IService] = []
        for service in application.services:
            service.setServiceParent(self)
        for listener in application.listeners:
            if isinstance(listener.endpoint, str):
                listening = strports.service(listener.endpoint, listener.factory, reactor=reactor)
                description = listener.endpoint
            else:
                # A TLS listener: built from http.tls (chain, client CAs,
                # minimum version), which endpoint strings cannot say.
                listening = StreamServerEndpointService(listener.endpoint, listener.factory)
                description = listener.description
            announced = _AnnouncedEndpoint(listener.name, listening.endpoint, description)
            listening.endpoint = announced
            self._listening.append(listening)
            self._endpoints[listener.name] = announced
            listening.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if (
            self.observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)

    _announced = False
    #: Log the warnings and the start-up summary (a worker leaves it to its parent).
    announce = True

    def privilegedStartService(self) -> None:
        self._announce()
        super().privilegedStartService()

    def startService(self) -> None:
        self._announce()
        super().startService()

    def _announce(self) -> None:
        """Log the configuration warnings and a summary, once, before listening."""
        if self._announced or not self.announce:
            return
        self._announced = True
        for warning in self.config.warnings:
            _log.warn("{warning}", warning=warning)
        storage = self.config.storage
        _log.info(
            "registry starting: storage driver {driver}, delete {delete}, read-only {readonly}",
            driver=storage.driver,
            delete="enabled" if storage.delete_enabled else "disabled",
            readonly="yes" if storage.readonly else "no",
        )

    def stopService(self) -> Deferred[None]:
        """Stop the listeners first and wait for them, then the services
        (the storage driver's pool or child last of all), so no request
        still being served finds its driver closed."""
        Service.stopService(self)
        services = [s for s in reversed(list(self)) if s not in self._listening]

        def stop_all(group: list[IService]) -> Deferred[Any]:
            return DeferredList([maybeDeferred(s.stopService) for s in group], consumeErrors=True)

        async def stop_in_turn(_: Any) -> None:
            # Reverse order of addition, each waited for: later services
            # (purging, GC, access control) stop before the storage driver.
            for service in services:
                try:
                    await maybeDeferred(service.stopService)
                except Exception:
                    _log.failure("stopping a service failed")

        d = stop_all(list(self._listening))
        d.addCallback(lambda _: ensureDeferred(stop_in_turn(_)))
        d.addCallback(lambda _: None)
        return d

    def when_listening(self, name: str = "main") -> Deferred[IListeningPort]:
        """Fires with listener ``name``'s port once bound; fails with the listen error."""
        return self._endpoints[name].when_listening()


def _log_output(options: usage.Options) -> IO[Any] | None:
    """Where twistd would have written its log, or ``None`` to leave
    twistd's own observer in charge (syslog, or a ``--logger`` factory).

    twistd builds its destination only inside its text observer, which the
    registry's formats (json, logstash, fields) replace; so its rules are
    kept here, as twistd's ``UnixAppLogger`` has them, including SIGUSR1
    rotating a log file (``tests/test_twisted_pins.py`` compares the two)."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return sys.stdout
    if parent.get("syslog") or parent.get("logger"):
        return None
    logfile = parent.get("logfile") or ""
    if logfile == "-" or (not logfile and parent.get("nodaemon")):
        return sys.stdout
    log_file = LogFile.fromFullPath(logfile or "twistd.log")
    _rotate_on_sigusr1(log_file)
    return log_file


def _rotate_on_sigusr1(log_file: LogFile) -> None:
    """``kill -USR1`` rotates ``log_file``, as it does twistd's own log file
    (unless something else handles SIGUSR1); without this, SIGUSR1's default
    action would end the registry."""
    import signal

    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(number: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(log_file.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)


def makeService(
    options: Options,
    app_factory: AppFactory | None = None,
    reactor: IReactorCore | None = None,
) -> RegistryService:
    """Build the registry service (an ``IService``) from parsed ``options``.

    ``app_factory(config, reactor, listen=...)`` builds the
    :class:`~registry.app.RegistryApplication` (default:
    ``registry.app.make_application``); ``listen`` is ``--listen``, which
    replaces ``http.addr`` for the main listener.  Each listener the
    application wants becomes a Twisted ``StreamServerEndpointService``.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: Config | None = options["registry_config"]
    if config is None:
        raise usage.UsageError("options were not parsed")
    if app_factory is None:
        from registry.app import make_application

        app_factory = make_application
    out = _log_output(options)
    observer = make_observer(config.log, out) if out is not None else None
    if options.get("worker_note"):
        _log.info("{note}", note=options["worker_note"])
    if options.get("worker_count", 1) > 1:
        # The parent of http.workers processes (registry.workers): it binds
        # the socket, serves the debug listener and supervises the workers.
        from registry.workers import supervisor_application

        return RegistryService(config, supervisor_application(config, options, reactor, out), observer, reactor)
    application = app_factory(config, reactor, listen=options["listen"], access=options.get("access_controller"))
    return RegistryService(config, application, observer, reactor)
