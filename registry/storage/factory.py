"""Build storage drivers by name.

``create_driver(name, params, reactor)`` returns a driver wrapped in
``StorageDriverWrapper`` (path validation, error normalisation, reader/writer
guards). Names are resolved in this order:

1. built-in drivers: ``inmemory``, ``filesystem`` (and any added at run time
   with ``register_driver``);
2. third-party drivers published as Python entry points in the group
   ``registry.storage.drivers``; the entry point names the driver and loads a
   ``DriverFactory``;
3. out-of-process drivers: an executable ``registry-storage-<name>`` on
   ``PATH``, served through ``registry.storage.drivers.outofprocess`` (see
   ``_out_of_process_factory``, the one hook that module plugs into).

A ``DriverFactory`` is ``(params: Mapping[str, Any], reactor) -> IStorageDriver``.
It validates its parameters and raises ``ValueError`` whose message starts
with the parameter's configuration key, e.g.
``"storage.filesystem.rootdirectory: must be an absolute path, got 'x'"``.
Unknown parameters are ignored with a warning naming them
(``registry.storage.params.warn_unknown_params``, re-exported here), as the
configuration does for unknown keys.

Import order: this module imports the drivers lazily; drivers never import
it (their helpers are in ``registry.storage.params``), and of the
out-of-process machinery only the child-side server
(``registry.storage.remote.server``) does.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Callable

from zope.interface.verify import verifyObject

from registry.storage.driver import IStorageDriver
from registry.storage.params import param_key, warn_unknown_params
from registry.storage.wrapper import StorageDriverWrapper

__all__ = ["DriverFactory", "available_drivers", "create_driver", "param_key", "register_driver", "warn_unknown_params"]

DriverFactory = Callable[[Mapping[str, Any], Any], IStorageDriver]

ENTRY_POINT_GROUP = "registry.storage.drivers"
EXECUTABLE_PREFIX = "registry-storage-"

# name -> "module:function" (imported lazily) or a factory callable
_BUILTIN: dict[str, str | DriverFactory] = {
    "inmemory": "registry.storage.drivers.inmemory:create",
    "filesystem": "registry.storage.drivers.filesystem:create",
    "outofprocess": "registry.storage.drivers.outofprocess:create_explicit",
    "s3": "registry.storage.drivers.s3:create",
}


def register_driver(name: str, factory: DriverFactory) -> None:
    """Register (or replace) a driver factory under ``name``."""
    _BUILTIN[name] = factory


def _load(spec: str | DriverFactory) -> DriverFactory:
    if callable(spec):
        return spec
    module_name, _, attr = spec.partition(":")
    factory: DriverFactory = getattr(importlib.import_module(module_name), attr)
    return factory


def _entry_point_factory(name: str) -> DriverFactory | None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            factory: DriverFactory = ep.load()
            return factory
    return None


def _out_of_process_factory(name: str) -> DriverFactory | None:
    """The hook for out-of-process drivers.

    If an executable ``registry-storage-<name>`` is on ``PATH``, return a
    factory that calls ``outofprocess.create(executable, name, params,
    reactor)``; that function starts and supervises the child and returns an
    ``IStorageDriver``. The module is part of this package and imported
    lazily (it imports the supervisor); an error importing it is a broken
    install and propagates, rather than turning into "unknown driver".
    """
    outofprocess = importlib.import_module("registry.storage.drivers.outofprocess")
    # On PATH, or next to sys.executable (a venv's bin need not be on PATH).
    executable = outofprocess.find_executable(name)
    if executable is None:
        return None
    create = outofprocess.create

    def factory(params: Mapping[str, Any], reactor: Any) -> IStorageDriver:
        driver: IStorageDriver = create(executable, name, params, reactor)
        return driver

    return factory


def available_drivers() -> list[str]:
    """Names ``create_driver`` can build without searching ``PATH``."""
    names = set(_BUILTIN)
    names.update(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return sorted(names)


def create_driver(name: str, params: Mapping[str, Any] | None = None, reactor: Any = None) -> IStorageDriver:
    """Build the driver registered as ``name`` with ``params``, wrapped.

    ``reactor`` defaults to the global reactor. Raises ``ValueError`` for an
    unknown driver name or an invalid parameter (the message names the
    configuration key).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"storage.{name}: parameters must be a mapping, got {type(params).__name__}")
    spec = _BUILTIN.get(name)
    factory = _load(spec) if spec is not None else None
    if factory is None:
        factory = _entry_point_factory(name)
    if factory is None:
        factory = _out_of_process_factory(name)
    if factory is None:
        raise ValueError(
            f"storage: unknown driver {name!r} (known: {', '.join(available_drivers())}; "
            f"or put an executable {EXECUTABLE_PREFIX}{name} on PATH)"
        )
    driver = factory(params, reactor)
    verifyObject(IStorageDriver, driver)
    if isinstance(driver, StorageDriverWrapper):
        return driver
    from registry.storage.generation import Generation, storage_identity

    return StorageDriverWrapper(driver, Generation.shared(storage_identity(name, params)))
