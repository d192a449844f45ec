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

:func:`makeService` builds the site with ``registry.app.make_site`` and a
listener for it, and makes the configured log observer (``registry.logs``)
the twistd application's observer, so text or JSON lines at the configured
level are all that is written.
"""

from __future__ import annotations

import os
import sys
from typing import IO, Any, Callable, Mapping

from twisted.application.service import MultiService, Service
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IReactorCore, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from twisted.web.server import Site

from registry.config import (
    CONFIGURATION_PATH_ENV,
    Config,
    ConfigError,
    HTTPConfig,
    load_config,
    load_config_file,
    parse_addr,
)
from registry.logs import make_observer

__all__ = ["Options", "RegistryService", "endpoint_description", "makeService"]

SiteFactory = Callable[[Config, Any], Site]

_log = Logger(namespace="registry.tap")


def _escape(value: str) -> str:
    """Quote a value for a Twisted endpoint string (``:``, ``=``, ``\\``)."""
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def endpoint_description(http: HTTPConfig) -> str:
    """The server endpoint string for ``http.net``/``http.addr``/``http.tls``.

    ``127.0.0.1:5000`` → ``tcp:5000:interface=127.0.0.1``; ``:5000`` → all
    IPv4 interfaces; ``[::1]:5000`` → ``tcp6``; with a certificate and key →
    ``ssl:``; ``net: unix`` → ``unix:<addr>``.  Raises :class:`ConfigError`
    for TLS on a unix socket, which Twisted's endpoints do not offer.
    """
    if http.net == "unix":
        if http.tls_certificate:
            raise ConfigError("http.tls.certificate", http.tls_certificate, "TLS on a unix socket is not supported")
        return f"unix:{_escape(http.addr)}"
    host, port = parse_addr(http.addr)
    if not host and http.net == "tcp6":
        host = "::"
    if http.tls_certificate and http.tls_key:
        parts = ["ssl", str(port), f"certKey={_escape(http.tls_certificate)}", f"privateKey={_escape(http.tls_key)}"]
    else:
        parts = ["tcp6" if ":" in host else "tcp", str(port)]
    if host:
        parts.append(f"interface={_escape(host)}")
    return ":".join(parts)


def _check_readable(key: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise usage.UsageError(f"{key} {path!r}: cannot read: {e.strerror or e}") from None


class Options(usage.Options):
    """Options of ``twistd registry``; after parsing, ``self["registry_config"]``
    holds the validated :class:`~registry.config.Config`."""

    synopsis = "[--config FILE] [--listen ENDPOINT]"
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
            if config.http.tls_certificate and config.http.tls_key:
                _check_readable("http.tls.certificate", config.http.tls_certificate)
                _check_readable("http.tls.key", config.http.tls_key)
            try:
                endpoint_description(config.http)
            except ConfigError as e:
                raise usage.UsageError(str(e)) from None
        self["registry_config"] = config


class _ListenerService(Service):
    """Listens with one endpoint for one factory; binds in
    ``privilegedStartService`` and raises there if it cannot, so twistd stops."""

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Site, description: str) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self._port: IListeningPort | None = None
        self._failure: Failure | None = None
        self._waiting: list[Deferred[IListeningPort]] = []
        self._listen_started = False

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._listen_started:
            return
        self._listen_started = True
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, self._not_listening)
        if self._failure is not None:
            self._failure.raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self._port = port
        host = port.getHost()
        if isinstance(host, (IPv4Address, IPv6Address)):
            address = f"[{host.host}]:{host.port}" if ":" in host.host else f"{host.host}:{host.port}"
        else:
            address = str(getattr(host, "name", host))
        _log.info("registry listening on {address}", address=address, endpoint=self.description)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def _not_listening(self, failure: Failure) -> None:
        self._failure = failure
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(failure)

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once bound; fails with the listen error."""
        if self._port is not None:
            return succeed(self._port)
        if self._failure is not None:
            return fail(self._failure)
        d: Deferred[IListeningPort] = Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._listen_started = False
        port, self._port = self._port, None
        if port is None:
            return None
        return port.stopListening()


class RegistryService(MultiService):
    """The registry: the HTTP listener, and the log observer for twistd.

    When twistd makes this service a child of its application, the
    configured observer becomes the application's ``ILogObserver`` (twistd
    reads it when it starts logging), replacing twistd's default text file
    observer.
    """

    def __init__(
        self,
        config: Config,
        listener: _ListenerService,
        observer: ILogObserver | None,
    ) -> None:
        super().__init__()
        self.config = config
        self.listener = listener
        self.observer = observer
        listener.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        if (
            self.observer is not None
            and isinstance(parent, Componentized)
            and parent.getComponent(ILogObserver, None) is None
        ):
            parent.setComponent(ILogObserver, self.observer)
        super().setServiceParent(parent)

    _announced = False

    def privilegedStartService(self) -> None:
        self._announce()
        super().privilegedStartService()

    def startService(self) -> None:
        self._announce()
        super().startService()

    def _announce(self) -> None:
        """Log the configuration warnings and a summary, once, before listening."""
        if self._announced:
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

    def when_listening(self) -> Deferred[IListeningPort]:
        """Fires with the listening port once bound (see ``_ListenerService``)."""
        return self.listener.when_listening()


def _log_output(options: usage.Options) -> IO[Any] | None:
    """Where twistd would have written its log, or ``None`` to leave
    twistd's own observer in charge (syslog, or a ``--logger`` factory)."""
    parent = getattr(options, "parent", None)
    if parent is None:
        return sys.stdout
    if parent.get("syslog") or parent.get("logger"):
        return None
    logfile = parent.get("logfile") or ""
    if logfile == "-" or (not logfile and parent.get("nodaemon")):
        return sys.stdout
    return LogFile.fromFullPath(logfile or "twistd.log")


def makeService(
    options: Options,
    site_factory: SiteFactory | None = None,
    reactor: IReactorCore | None = None,
) -> RegistryService:
    """Build the registry service (an ``IService``) from parsed ``options``.

    ``site_factory(config, reactor)`` makes the ``twisted.web`` site; it
    defaults to ``registry.app.make_site``.  The service listens on
    ``--listen`` if given, else on ``http.addr`` (TLS when ``http.tls`` has a
    certificate and key).
    """
    from twisted.internet.endpoints import serverFromString

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    config: Config | None = options["registry_config"]
    if config is None:
        raise usage.UsageError("options were not parsed")
    if site_factory is None:
        from registry.app import make_site

        site_factory = make_site
    site = site_factory(config, reactor)
    description = options["listen"] or endpoint_description(config.http)
    endpoint = serverFromString(reactor, description)
    out = _log_output(options)
    observer = make_observer(config.log, out) if out is not None else None
    service = RegistryService(config, _ListenerService(endpoint, site, description), observer)
    for background in getattr(site, "background_services", []):
        background.setServiceParent(service)
    return service
