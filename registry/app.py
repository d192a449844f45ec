"""Build the registry from a configuration: storage driver, data model,
resources, Site. ``twistd registry`` (``registry.tap``) calls ``make_site``."""

from __future__ import annotations

from typing import Any

from registry.http import RegistrySite
from registry.resources.context import Context
from registry.resources.router import RegistryRoot, build_routes
from registry.storage.driver import IStorageDriver
from registry.storage.registry import Registry


def make_root(
    driver: IStorageDriver,
    delete_enabled: bool = False,
    readonly: bool = False,
    base_url: str = "",
    prefix: str = "/",
    relative_urls: bool = False,
    extra_headers: dict[str, list[str]] | None = None,
) -> RegistryRoot:
    """The root resource over ``driver`` (tests use this with any driver)."""
    ctx = Context(
        Registry(driver),
        delete_enabled=delete_enabled,
        readonly=readonly,
        base_url=base_url,
        prefix=prefix,
        relative_urls=relative_urls,
        extra_headers=dict(extra_headers or {}),
    )
    extra: dict[str, Any] = {}
    try:
        from registry.resources import manifests
    except ImportError:
        pass
    else:
        extra.update(manifests.handlers(ctx))
    return RegistryRoot(build_routes(ctx, extra), ctx.extra_headers)


def make_site(config: Any, reactor: Any = None) -> RegistrySite:
    """A Site serving the registry described by ``config`` (a
    ``registry.config.Config``)."""
    from registry.storage.factory import create_driver
    from registry.storage.wrapper import DriverService

    driver = create_driver(config.storage.driver, dict(config.storage.params), reactor=reactor)
    root = make_root(
        driver,
        delete_enabled=config.storage.delete_enabled,
        readonly=config.storage.readonly,
        base_url=config.http.host or "",
        prefix=config.http.prefix,
        relative_urls=config.http.relativeurls,
        extra_headers=config.http.headers,
    )
    site = RegistrySite(root)
    site.registry_driver = driver  # type: ignore[attr-defined]
    # The driver's thread pool / child process stops with the application.
    site.background_services = [DriverService(driver), *background_services(config, driver)]  # type: ignore[attr-defined]
    return site


def background_services(config: Any, driver: IStorageDriver) -> list[Any]:
    """Services that run beside the listener (the tap attaches them)."""
    from twisted.application.internet import TimerService
    from twisted.internet.defer import ensureDeferred

    from registry.config import parse_go_duration
    from registry.storage.purge import purge_uploads

    services: list[Any] = []
    purging = config.storage.uploadpurging
    if purging.get("enabled") and not config.storage.readonly:
        age = parse_go_duration(str(purging["age"]))
        interval = parse_go_duration(str(purging["interval"]))
        dry_run = bool(purging.get("dryrun"))
        services.append(TimerService(interval, lambda: ensureDeferred(purge_uploads(driver, age, dry_run))))
    return services
