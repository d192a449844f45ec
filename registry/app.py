"""Build the registry from a configuration: storage driver, data model,
resources, Site, and what runs beside them.

:func:`make_application` returns a :class:`RegistryApplication`: the root
resource, the listeners wanted (``main`` now; a ``debug`` listener later is
one more entry) and the services to run (upload purging; a storage driver's
lifecycle service goes there too).  ``twistd registry`` (``registry.tap``)
turns the listeners into Twisted's endpoint services and starts the services
with them.  Tests that only need a root over some driver use :func:`make_root`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from twisted.application.internet import TimerService
from twisted.application.service import IService, Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IProtocolFactory, IStreamServerEndpoint
from twisted.web.resource import IResource

from registry.auth import IAccessController
from registry.config import Config, ConfigError, HTTPConfig, UploadPurgingConfig, parse_addr
from registry.http import RegistrySite
from registry.observe import Observability
from registry.resources.context import Context
from registry.resources.router import RegistryRoot, build_routes
from registry.storage.driver import IStorageDriver
from registry.storage.model import DataModel
from registry.storage.verify import LayerVerifier

__all__ = [
    "Listener",
    "RegistryApplication",
    "build_model",
    "endpoint_description",
    "make_application",
    "make_root",
    "purge_service",
]


@dataclass(frozen=True)
class Listener:
    """A listening socket the application wants: a name (``main``,
    ``debug``), a Twisted server endpoint (a string, or an endpoint object
    where a string cannot say it: TLS from ``http.tls``) and the factory
    served; ``description`` says where, for logs, when the endpoint is an
    object."""

    name: str
    endpoint: str | IStreamServerEndpoint
    factory: IProtocolFactory
    description: str = ""


@dataclass(frozen=True)
class RegistryApplication:
    """Everything the tap runs: what to listen on and with what, and the
    services that run beside the listeners (started before them, stopped
    after them)."""

    root: IResource
    listeners: list[Listener]
    services: list[IService] = field(default_factory=list)
    #: The storage driver the application was built over.
    driver: IStorageDriver | None = None
    #: The Redis client (``redis`` configured), whose ``status()`` says
    #: whether Redis is reachable (for the health check); else None.
    redis: Any = None
    #: Every health check (``registry.observe.health.HealthChecks``), or None.
    health: Any = None

    def listener(self, name: str) -> Listener:
        """The listener called ``name``; ``KeyError`` if there is none."""
        for listener in self.listeners:
            if listener.name == name:
                return listener
        raise KeyError(name)


def make_root(
    driver: IStorageDriver,
    delete_enabled: bool = False,
    access: IAccessController | None = None,
    readonly: bool = False,
    base_url: str = "",
    prefix: str = "/",
    relative_urls: bool = False,
    extra_headers: dict[str, list[str]] | None = None,
    redirect: bool = True,
    events: Any = None,
    layer_verifier: LayerVerifier | None = None,
    ui: bool = False,
    secret: str | None = None,
    model: DataModel | None = None,
    pull_through: bool = False,
    cache: Any = None,
    lock: Any = None,
    content_cache: Any = "auto",
) -> RegistryRoot:
    """The root resource over ``driver`` (tests use this with any driver);
    ``events``: an ``IEventSink`` told of pushes, pulls and deletes;
    ``layer_verifier``: verified pushes (``validation.manifests.verifylayers``);
    ``ui``: serve the web page under ``<prefix>ui/`` (``secret``, from
    ``http.secret``, signs its form tokens; random when None);
    ``model`` replaces ``DataModel.over(driver)`` (a pull-through cache's,
    with ``pull_through``: pushes and deletes refused); otherwise ``cache``
    (an ``IDescriptorCache``) is put in front of the blob descriptors and
    ``lock`` (an ``IUploadLock``) replaces the process-local upload lock;
    ``content_cache`` is ``DataModel.over``'s (None: off)."""
    if model is None:
        model = build_model(driver, layer_verifier=layer_verifier, cache=cache, lock=lock, content_cache=content_cache)
    ctx = Context(
        model,
        delete_enabled=delete_enabled,
        readonly=readonly,
        base_url=base_url,
        prefix=prefix,
        relative_urls=relative_urls,
        extra_headers=dict(extra_headers or {}),
        redirect=redirect,
        events=events,
        layers=layer_verifier,
        pull_through=pull_through,
    )
    page = None
    if ui:
        from registry.ui import UIResource

        page = UIResource(ctx, access, secret=secret.encode("utf-8") if secret else None)
    return RegistryRoot(build_routes(ctx), ctx.extra_headers, access=access, ui=page)


def build_model(
    driver: IStorageDriver,
    *,
    layer_verifier: LayerVerifier | None = None,
    cache: Any = None,
    lock: Any = None,
    content_cache: Any = "auto",
) -> DataModel:
    """The data model over ``driver`` (see :func:`make_root` for the keywords)."""
    from registry.storage.blobs import BlobDescriptors
    from registry.storage.cache import CachedBlobDescriptors, ContentCache
    from registry.storage.generation import Generation

    if content_cache == "auto":
        generation = getattr(driver, "generation", None)
        content_cache = ContentCache(generation) if isinstance(generation, Generation) else None
    # A descriptor cache's misses go to storage through the content cache too.
    descriptors = CachedBlobDescriptors(BlobDescriptors(driver, content_cache), cache) if cache is not None else None
    return DataModel.over(driver, verifier=layer_verifier, descriptors=descriptors, lock=lock, content_cache=content_cache)


def make_application(
    config: Config, reactor: Any = None, *, listen: str | None = None, access: IAccessController | None = None
) -> RegistryApplication:
    """The registry described by ``config``; ``listen`` (a server endpoint
    string, ``--listen``) replaces ``http.addr``/``http.tls`` for the main
    listener.  ``access`` is the access controller already built from
    ``config.auth`` (the tap builds it while checking the options); without
    it, it is built here."""
    from registry.auth.factory import access_controller_from_config
    from registry.storage.factory import create_driver
    from registry.storage.wrapper import DriverService

    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if access is None:
        try:
            access = access_controller_from_config(config.auth.controller_params(), reactor=reactor)
        except ValueError as e:
            raise ConfigError("auth", None, str(e)) from None

    driver = create_driver(config.storage.driver, dict(config.storage.params), reactor=reactor)
    redis, cache, lock = _shared_state(config, reactor)
    if redis is not None:
        _share_generation(driver, redis, reactor)
    observe = Observability.from_config(config, driver, reactor, redis)
    validation = config.validation.manifests
    verifier = (
        LayerVerifier(driver, max_uncompressed=validation.maxuncompressedlayersize, reactor=reactor)
        if validation.verifylayers
        else None
    )
    model: DataModel | None = None
    upstream_service: IService | None = None
    if config.proxy.remoteurl:
        # A pull-through cache: read-through stores over an upstream client
        # (no request is made before the first pull: it starts while the
        # upstream is down), whose connections close with the application.
        from registry.proxy import HostFlights, Upstream, UpstreamService, pull_through_model

        upstream = Upstream(
            config.proxy.remoteurl, username=config.proxy.username, password=config.proxy.password, reactor=reactor
        )
        # Worker processes (and other registry processes on this host) on
        # one storage fetch each blob from the upstream once between them.
        flights = None
        if config.storage.driver != "inmemory":
            from registry.storage.generation import host_path, storage_identity

            identity = storage_identity(config.storage.driver, config.storage.params)
            flights = HostFlights(host_path(identity, "proxy-flights"))
        model = pull_through_model(driver, upstream, config.proxy.ttl, reactor, flights=flights)
        upstream_service = UpstreamService(upstream)
    else:
        model = build_model(
            driver,
            layer_verifier=verifier,
            cache=cache,
            lock=lock,
            # With Redis, several hosts may share the storage: the content
            # cache hears of their deletions through the generation shared
            # in Redis (_share_generation).
            content_cache="auto",
        )
        if observe.metrics is not None:
            observe.metrics.watch_caches(model)
    root = make_root(
        driver,
        delete_enabled=config.storage.delete_enabled,
        readonly=config.storage.readonly,
        base_url=config.http.host or "",
        prefix=config.http.prefix,
        relative_urls=config.http.relativeurls,
        extra_headers=config.http.headers,
        access=access,
        redirect=not config.storage.redirect_disable,
        events=observe.notifier,
        layer_verifier=verifier,
        ui=config.ui.active(config.http, listen),
        secret=config.http.secret,
        model=model,
        pull_through=upstream_service is not None,
    )
    if observe.health is not None:
        root.health = observe.health.gate()
    if config.health.mainlistener:
        from registry.observe.health import HealthChecks, HealthResource

        root.health_page = HealthResource(observe.health or HealthChecks())
        root.health_path = (config.http.prefix + "debug/health").encode()
    site = RegistrySite(root, observer=observe.metrics)
    site.access_log = not config.log.accesslog_disabled
    listeners = [main_listener(config.http, site, reactor, listen)]
    debug = observe.debug_listener(config.http)
    if debug is not None:
        listeners.append(debug)
    # The driver's thread pool / child process stops with the application
    # (after the listeners: the tap stops listeners first).
    services: list[IService] = [DriverService(driver), *observe.services()]
    if access is not None:
        # The access controller's thread pool (bcrypt) stops with the application.
        services.append(_ClosingService(access.close))
    if upstream_service is not None:
        services.append(upstream_service)
    if redis is not None:
        from registry.redis import RedisService

        services.append(RedisService(redis))
    if not config.storage.readonly:
        purging = purge_service(config.storage.uploadpurging, driver)
        if purging is not None:
            services.append(purging)
        # Scheduled garbage collection (storage.maintenance.gc); never in
        # read-only mode. After DriverService, so it stops before the driver.
        from registry.storage.gcservice import gc_schedule_service

        collecting = gc_schedule_service(config.storage.gc, driver, _collect_for(cache))
        if collecting is not None:
            services.append(collecting)
    if verifier is not None:
        # Its thread pool stops after the listeners, before the driver.
        services.append(VerifierService(verifier))
    return RegistryApplication(
        root=root, listeners=listeners, services=services, driver=driver, redis=redis, health=observe.health
    )


def _share_generation(driver: IStorageDriver, client: Any, reactor: Any) -> None:
    """Share the storage's deletion generation through Redis
    (``registry.storage.generation.SharedGeneration``): a deletion on any
    instance empties every instance's content cache before it answers."""
    from registry.storage.generation import TAG_REDIS_KEY, Generation, SharedGeneration

    generation = getattr(driver, "generation", None)
    # A generation private to this process (path None: the in-memory
    # driver, which no other process can reach) has nothing to share.
    if isinstance(generation, Generation) and generation.path is not None and generation.remote is None:
        generation.attach(SharedGeneration(client, reactor))
        # The tag cache's generation (``CachedTagStore``): every tag write
        # empties every instance's tag cache before it answers.
        generation.companion("tags").attach(SharedGeneration(client, reactor, key=TAG_REDIS_KEY))


def _collect_for(cache: Any) -> Any:
    """A scheduled collection that forgets what it sweeps in ``cache``
    (either kind: this process's or Redis). With a generation shared through
    Redis, the collector's deletions do not each wait for every instance
    (a batch would outlive its fence): the run waits once, at its end."""
    from registry.storage.gc import collect
    from registry.storage.generation import Generation
    from registry.storage.wrapper import StorageDriverWrapper

    invalidate = None
    if cache is not None:
        from registry.storage.cache import collector_invalidate

        invalidate = collector_invalidate(cache)

    async def collect_and_invalidate(driver: IStorageDriver, **kwargs: Any) -> Any:
        if invalidate is not None:
            kwargs["invalidate"] = invalidate
        generation = getattr(driver, "generation", None)
        if not (isinstance(driver, StorageDriverWrapper) and isinstance(generation, Generation) and generation.remote):
            return await collect(driver, **kwargs)
        view = StorageDriverWrapper(driver.wrapped, generation.without_waiting())
        try:
            return await collect(view, **kwargs)
        finally:
            await generation.settle()

    return collect_and_invalidate


def _shared_state(config: Config, reactor: Any) -> tuple[Any, Any, Any]:
    """``(redis client, descriptor cache, upload lock)`` for ``redis`` and
    ``storage.cache``: with ``redis`` the upload locks are shared through
    it (instances on one storage never interleave an upload's requests);
    without it they are shared by the processes of this host."""
    cache_kind = config.storage.cache_blobdescriptor
    if config.redis is None:
        if cache_kind == "redis":
            raise ConfigError("storage.cache.blobdescriptor", cache_kind, "needs the redis section (redis.addr)")
        # Worker processes (and any other registry process on this host
        # serving the same storage) exclude each other per upload.
        host_lock = None
        if config.storage.driver != "inmemory":
            from registry.storage.generation import host_path, storage_identity
            from registry.storage.hostlock import HostUploadLocks

            identity = storage_identity(config.storage.driver, config.storage.params)
            host_lock = HostUploadLocks(host_path(identity, "locks"), reactor)
        if cache_kind == "inmemory":
            from registry.storage.cache import InMemoryDescriptorCache

            return None, InMemoryDescriptorCache(), host_lock
        return None, None, host_lock
    from registry.redis import RedisClient, settings_from_config
    from registry.storage.cache import InMemoryDescriptorCache, RedisDescriptorCache
    from registry.storage.redislock import RedisUploadLocks

    client = RedisClient(reactor, settings_from_config(config.redis))
    cache: Any = None
    if cache_kind == "redis":
        cache = RedisDescriptorCache(client)
    elif cache_kind == "inmemory":
        cache = InMemoryDescriptorCache()
    return client, cache, RedisUploadLocks(client, reactor=reactor)


class _ClosingService(Service):
    """Calls ``close`` when the application stops (after the listeners)."""

    def __init__(self, close: Callable[[], Deferred[None]]) -> None:
        self._close = close

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return self._close()


def main_listener(http: HTTPConfig, site: RegistrySite, reactor: Any, listen: str | None = None) -> Listener:
    """The main listener: ``--listen`` as given, TLS from ``http.tls`` (an
    endpoint object: the chain, client CAs and minimum version), else the
    endpoint string for ``http.addr``."""
    settings = http.tls_settings()
    if listen is not None or settings is None or http.net == "unix":
        return Listener("main", listen or endpoint_description(http), site)
    from registry.tls import server_endpoint

    host, port = parse_addr(http.addr)
    if not host and http.net == "tcp6":
        host = "::"
    endpoint = server_endpoint(reactor, port, settings, interface=host)
    return Listener("main", endpoint, site, description=f"tls:{http.addr}")


def purge_service(purging: UploadPurgingConfig, driver: IStorageDriver) -> IService | None:
    """``storage.maintenance.uploadpurging`` as a timer service (None when disabled)."""
    from registry.storage.purge import purge_uploads

    if not purging.enabled:
        return None
    age, dry_run = purging.age, purging.dryrun
    return TimerService(purging.interval, lambda: ensureDeferred(purge_uploads(driver, age, dry_run)))


class VerifierService(Service):
    """Stops a ``LayerVerifier``'s thread pool when the application stops."""

    def __init__(self, verifier: LayerVerifier) -> None:
        self.verifier = verifier

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self.verifier.close())


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
