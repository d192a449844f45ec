"""Build the registry from a configuration: storage driver, data model,
resources, Site. ``twistd registry`` (``registry.tap``) calls ``make_site``."""

from __future__ import annotations

from typing import Any

from registry.http import RegistrySite
from registry.resources.context import Context
from registry.resources.router import RegistryRoot, build_routes
from registry.storage.driver import IStorageDriver
from registry.storage.registry import Registry


def make_root(driver: IStorageDriver, delete_enabled: bool = False, readonly: bool = False, base_url: str = "") -> RegistryRoot:
    """The root resource over ``driver`` (tests use this with any driver)."""
    ctx = Context(Registry(driver), delete_enabled=delete_enabled, readonly=readonly, base_url=base_url)
    extra: dict[str, Any] = {}
    try:
        from registry.resources import manifests
    except ImportError:
        pass
    else:
        extra.update(manifests.handlers(ctx))
    return RegistryRoot(build_routes(ctx, extra))


def make_site(config: Any, reactor: Any = None) -> RegistrySite:
    """A Site serving the registry described by ``config`` (a
    ``registry.config.Config``)."""
    from registry.storage.factory import create_driver

    driver = create_driver(config.storage.driver, dict(config.storage.params), reactor=reactor)
    root = make_root(
        driver,
        delete_enabled=config.storage.delete_enabled,
        readonly=config.storage.readonly,
        base_url=config.http.host or "",
    )
    site = RegistrySite(root)
    site.registry_driver = driver  # type: ignore[attr-defined]
    return site
