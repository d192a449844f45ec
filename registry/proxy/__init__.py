"""A pull-through cache (``proxy.remoteurl``): the registry serves pulls of
anything its upstream registry has, keeping what it fetched.

:func:`pull_through_model` builds the data model whose blob, manifest and
tag stores read through to the upstream (:mod:`registry.proxy.stores`), with
blobs teed from one shared upstream download to every client and into
storage (:mod:`registry.proxy.tee`), one download per blob on the host when
worker processes share the storage (:mod:`registry.proxy.flights`).
:class:`UpstreamService` closes the
upstream connections when the application stops. Pushes and deletes are
refused by the resources (``Context.pull_through``: 405 ``UNSUPPORTED``).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from registry.proxy.flights import HostFlights
from registry.proxy.stores import ProxyBlobStore, ProxyManifestStore, ProxyTagStore
from registry.proxy.upstream import Upstream, UpstreamUnavailable, split_remote_url
from registry.storage.driver import IStorageDriver
from registry.storage.model import DataModel

__all__ = [
    "HostFlights",
    "ProxyBlobStore",
    "ProxyManifestStore",
    "ProxyTagStore",
    "Upstream",
    "UpstreamService",
    "UpstreamUnavailable",
    "pull_through_model",
    "split_remote_url",
]


def pull_through_model(
    driver: IStorageDriver,
    upstream: Upstream,
    ttl: float,
    clock: Any,
    *,
    flights: HostFlights | None = None,
    **fetch_options: Any,
) -> DataModel:
    """The data model of a pull-through cache over ``driver``: the local
    stores of ``DataModel.over(driver)`` wrapped by the read-through ones
    (uploads and catalog stay local; the proxy writes fetched blobs through
    the upload store, so they are committed and linked as pushes are).
    ``flights`` makes one process of the host fetch each blob (worker
    processes on one storage); None: one fetch per blob per process."""
    local = DataModel.over(driver)
    blobs = ProxyBlobStore(local.blobs, local.uploads, upstream, clock, flights=flights, **fetch_options)
    return DataModel(
        blobs=blobs,
        uploads=local.uploads,
        manifests=ProxyManifestStore(local.manifests, driver, local.blobs, upstream),
        tags=ProxyTagStore(local.tags, driver, local.blobs, upstream, ttl),
        catalog=local.catalog,
    )


class UpstreamService(Service):
    """Closes the upstream client's connections when the application stops."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream = upstream

    def stopService(self) -> "Deferred[None]":
        super().stopService()
        return Deferred.fromCoroutine(self.upstream.close())
