"""Prometheus metrics of one registry process (``prometheus-client``).

Every metric lives in the :class:`RegistryMetrics`' own ``CollectorRegistry``
(not the library's global one), so several registries in one process (tests)
do not collide.  Labels are bounded: the route *name* (never a repository or
a digest), a method from the fixed HTTP set (anything else is ``other``), the
status code, the storage driver's name and the driver operation.

Names and labels are Distribution's where Distribution has the metric (2.8's
HTTP, storage and cache metrics; 3.0's notification metrics), so dashboards
and alert rules written for it keep working:

* ``registry_http_requests_total{handler,code,method}``: ``handler`` is
  Distribution's route name (``base``, ``catalog``, ``tags``, ``manifest``,
  ``blob``, ``blob_upload``, ``blob_upload_chunk``; this registry's own
  ``referrers``, ``layer_info``, and ``unknown`` for paths that are no
  endpoint), ``method`` lower case as Go's promhttp writes it
* ``registry_http_request_duration_seconds{handler,method}`` (histogram)
* ``registry_http_request_size_bytes{handler}`` and
  ``registry_http_response_size_bytes{handler}`` (summaries: ``_count``
  and ``_sum``; body bytes received and sent)
* ``registry_uploads_in_progress``: upload requests streaming a body now
  (this registry's)
* ``registry_storage_action_seconds{driver,action}`` (histogram; ``action``
  is Distribution's name of the driver call: ``GetContent``, ``Stat``,
  ``Writer``...) and ``registry_storage_action_errors_total{driver,action}``
* ``registry_storage_cache_total{cache,type}``: lookups of the in-process
  content cache (``cache="content"``), of the in-process tag cache
  (``cache="tags"``: manifest references by tag) and of the blob-descriptor cache
  (``cache="blobdescriptor"``, ``storage.cache.blobdescriptor``), by
  Distribution 2.8's ``type``: ``Request``, ``Hit``, ``Miss``, ``Error``
  (a store that did not answer); read from the caches' own counters at
  scrape time, so a lookup costs nothing more
* ``registry_notifications_pending{endpoint}`` (events queued),
  ``registry_notifications_events_total{type,endpoint}`` (``Events``
  queued, ``Successes`` delivered, ``Failures`` answered other than 2xx,
  ``Errors`` not answered, counted per event and attempt as Distribution
  does, and this registry's ``Dropped``: refused by a full queue) and
  ``registry_notifications_status_total{code,endpoint}`` (answers by
  status, ``"200 OK"``)
* the usual ``process_*``, ``python_gc_*`` and ``python_info``.

One process, one set of numbers; with several worker processes
(``http.workers``) each worker exports its own on a private socket and the
parent's debug listener serves :func:`aggregate_expositions` of them:
samples of equal name and labels summed (so counters, histograms and the
gauges above are registry-wide), per-process facts (``process_*``,
``python_*``) kept apart under a ``worker`` label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    Summary,
    generate_latest,
)

if TYPE_CHECKING:
    from registry.http import RegistryRequest
    from registry.storage.model import DataModel

__all__ = ["CONTENT_TYPE_LATEST", "RegistryMetrics", "action_name", "aggregate_expositions", "handler_name"]

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: Our route names -> Distribution's ``handler`` label (the rest: ``-`` -> ``_``).
_HANDLERS = {"upload-start": "blob_upload", "upload": "blob_upload_chunk"}
#: Driver methods whose Distribution name is not their CamelCase.
_ACTIONS = {"redirect_url": "RedirectURL"}


def handler_name(route: str) -> str:
    """Distribution's ``handler`` label for one of our route names."""
    return _HANDLERS.get(route) or route.replace("-", "_")


def action_name(method: str) -> str:
    """Distribution's ``action`` label for a driver method (``get_content`` -> ``GetContent``)."""
    return _ACTIONS.get(method) or "".join(part.capitalize() for part in method.split("_"))


#: Request durations: from a cached HEAD (ms) to a multi-GiB layer (minutes).
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: Driver operations: local disk (sub-ms) to an object store under load.
_DRIVER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class RegistryMetrics:
    """The metrics of one registry; a ``RequestObserver`` for the Site and
    an ``OperationObserver`` for the storage driver wrapper."""

    def __init__(self, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "registry_http_requests", "HTTP requests answered", ["handler", "code", "method"], registry=r
        )
        self.duration = Histogram(
            "registry_http_request_duration_seconds",
            "Time from the request's arrival to its last response byte",
            ["handler", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.received = Summary(
            "registry_http_request_size_bytes", "Request body bytes received", ["handler"], registry=r
        )
        self.sent = Summary("registry_http_response_size_bytes", "Response body bytes sent", ["handler"], registry=r)
        self.uploads = Gauge(
            "registry_uploads_in_progress", "Upload requests streaming a body now", registry=r
        )
        self.driver_ops = Histogram(
            "registry_storage_action_seconds",
            "Storage driver call latency (opening a reader/writer, not each read/write)",
            ["driver", "action"],
            buckets=_DRIVER_BUCKETS,
            registry=r,
        )
        self.driver_errors = Counter(
            "registry_storage_action_errors",
            "Storage driver calls that failed (a missing path counts)",
            ["driver", "action"],
            registry=r,
        )
        self.pending = Gauge(
            "registry_notifications_pending", "Events waiting for delivery", ["endpoint"], registry=r
        )
        self.events = Counter(
            "registry_notifications_events",
            "Events by outcome: Events (queued), Successes, Failures (non-2xx), Errors (no answer), Dropped (queue full)",
            ["type", "endpoint"],
            registry=r,
        )
        self.statuses = Counter(
            "registry_notifications_status", "Endpoint answers by status", ["code", "endpoint"], registry=r
        )
        #: ``(label, cache)``: objects with ``hits`` and ``misses`` (and
        #: maybe ``errors``) counters, read at scrape time.
        self.caches: list[tuple[str, Any]] = []
        r.register(_CacheCollector(self.caches))
        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def watch_caches(self, model: DataModel) -> None:
        """Count ``model``'s caches' lookups: its content cache, its tag
        cache and its blob-descriptor cache, whichever it has."""
        from registry.storage.cache import CachedBlobDescriptors
        from registry.storage.tags import CachedTagStore

        content = getattr(model.manifests, "cache", None)
        if content is not None:
            self.caches.append(("content", content))
        if isinstance(model.tags, CachedTagStore):
            self.caches.append(("tags", model.tags))
        descriptors = model.blobs.descriptors
        if isinstance(descriptors, CachedBlobDescriptors):
            self.caches.append(("blobdescriptor", descriptors))

    # -- the Site's RequestObserver --

    def upload_started(self, request: RegistryRequest) -> None:
        self.uploads.inc()
        request.notifyFinish().addBoth(lambda _: self.uploads.dec())

    def request_finished(self, request: RegistryRequest, duration_s: float) -> None:
        match = request.route_match
        handler = handler_name(match.route.name) if match is not None else "unknown"
        method = request.method.decode("ascii", "replace").upper() if request.method else "OTHER"
        method = method.lower() if method in _METHODS else "other"
        self.requests.labels(handler, str(int(request.code)), method).inc()
        self.duration.labels(handler, method).observe(duration_s)
        self.received.labels(handler).observe(request.received_bytes)
        self.sent.labels(handler).observe(request.sentLength)

    # -- the storage wrapper's OperationObserver --

    def driver_operation(self, driver: str, operation: str, seconds: float, succeeded: bool) -> None:
        action = action_name(operation)
        self.driver_ops.labels(driver, action).observe(seconds)
        if not succeeded:
            self.driver_errors.labels(driver, action).inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


class _CacheCollector:
    """``registry_storage_cache_total{cache,type}`` from the caches' counters."""

    def __init__(self, caches: list[tuple[str, Any]]) -> None:
        self.caches = caches

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily

        family = CounterMetricFamily(
            "registry_storage_cache", "Cache lookups by outcome (Request = Hit + Miss + Error)", labels=["cache", "type"]
        )
        for name, cache in self.caches:
            hits, misses, errors = int(cache.hits), int(cache.misses), int(getattr(cache, "errors", 0))
            family.add_metric([name, "Request"], hits + misses)
            family.add_metric([name, "Hit"], hits)
            family.add_metric([name, "Miss"], misses - errors)
            family.add_metric([name, "Error"], errors)
        return [family]

    def describe(self) -> Iterable[Any]:
        return []


#: Metric families that describe one process, not the registry: never summed.
_PER_PROCESS = ("process_", "python_")


class _Families:
    """A collector that yields fixed metric families (for ``generate_latest``)."""

    def __init__(self, families: Iterable[Any]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[Any]:
        return self.families


def aggregate_expositions(expositions: Sequence[tuple[int, str]]) -> bytes:
    """One text exposition from several workers' ``(index, text)``: samples
    with equal name and labels are added (``*_created`` timestamps: the
    earliest); ``process_*``/``python_*`` samples get a ``worker="<index>"``
    label instead; ``registry_workers`` counts the expositions."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for index, text in expositions:
        for family in text_string_to_metric_families(text):
            per_process = family.name.startswith(_PER_PROCESS)
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            samples = values[family.name]
            for sample in family.samples:
                labels = dict(sample.labels)
                if per_process:
                    labels["worker"] = str(index)
                key = (sample.name, tuple(labels.items()))
                if key not in samples:
                    samples[key] = sample.value
                elif sample.name.endswith("_created"):
                    samples[key] = min(samples[key], sample.value)
                else:
                    samples[key] += sample.value
    workers = Metric("registry_workers", "Worker processes whose metrics are included", "gauge")
    workers.add_sample("registry_workers", {}, float(len(expositions)))
    out = [workers]
    for name, family in families.items():
        for (sample_name, label_items), value in values[name].items():
            family.add_sample(sample_name, dict(label_items), value)
        out.append(family)
    return generate_latest(_Families(out))
