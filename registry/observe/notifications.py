"""Webhook notifications: Distribution's events, delivered off the request path.

Resources tell an :class:`IEventSink` what happened (a blob or manifest was
pushed, pulled, mounted or deleted; a tag deleted) with the request it
happened in.  The :class:`Notifier` turns that into one event in
Distribution's format and *appends it to a bounded queue per endpoint*; that
is all the request pays.  Each :class:`Endpoint` has one worker that sends
its queue in order, as Distribution's envelope
(``{"events": [...]}``, ``application/vnd.docker.distribution.events.v1+json``),
in batches of up to :data:`BATCH` events, with treq.

A delivery that fails (a connection error, no answer within the endpoint's
``timeout``, an answer other than 2xx) is retried, in order, with
exponential backoff (:data:`FIRST_RETRY` doubling, never longer than
``backoff``) until ``threshold`` deliveries in a row have failed; from then on
the endpoint waits ``backoff`` between attempts.  Events are never dropped
for a failing endpoint -- only when its queue is full: the queue holds
:data:`DEFAULT_QUEUE_LIMIT` events, further events for that endpoint are
dropped (counted in ``registry_notifications_events_total{type="Dropped"}``
and logged once per stretch of drops) so a dead endpoint costs bounded memory.
Events still queued when the registry stops are lost (logged), as in
Distribution.

With several worker processes (``http.workers``) each worker sends the
events of the requests it served from its own queues, and is its own
``source.instanceID`` (a UUID drawn at start, as each Distribution instance
draws one); ``source.addr`` (host name and port) is the same for all.  So
the order holds per endpoint *and instance*: two requests served by two
workers can reach the endpoint in either order (as with two Distribution
instances behind one load balancer); the timestamps say which came first.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import Interface, implementer

from registry.config import EndpointConfig, NotificationsConfig

if TYPE_CHECKING:
    from registry.observe.metrics import RegistryMetrics

__all__ = [
    "BATCH",
    "DEFAULT_QUEUE_LIMIT",
    "EVENTS_MEDIA_TYPE",
    "Endpoint",
    "IEventSink",
    "Notifier",
    "NotificationService",
    "notifier_from_config",
]

EVENTS_MEDIA_TYPE = "application/vnd.docker.distribution.events.v1+json"
#: Events held per endpoint while it is slow or down (about 1 KiB each).
DEFAULT_QUEUE_LIMIT = 1000
#: Most events sent in one envelope.
BATCH = 32
#: The first retry's wait, doubling per failure up to the endpoint's backoff.
FIRST_RETRY = 0.05

_log = Logger(namespace="registry.notifications")


class IEventSink(Interface):
    """Where resources report what happened; never blocks, never fails."""

    def emit(action: str, target: dict[str, Any], request: Any) -> None:
        """Record that ``action`` (``push``, ``pull``, ``mount``, ``delete``)
        happened to ``target`` in ``request`` (a ``RegistryRequest``)."""


def _status_text(status: int) -> str:
    """``"200 OK"``: a status as Distribution's status metric labels it."""
    from http import HTTPStatus

    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _timestamp() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}Z"


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _ip(value: str) -> str | None:
    import ipaddress

    value = value.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return None
    return value


def client_addr(request: Any) -> str:
    """The client's address as Distribution's events give it: the first
    ``X-Forwarded-For`` entry, else ``X-Real-Ip``, when it is an IP address;
    else the connection's peer as ``host:port``."""
    forwarded = request.getHeader(b"x-forwarded-for")
    if forwarded:
        first = _ip(_text(forwarded).split(",")[0])
        if first is not None:
            return first
    real = request.getHeader(b"x-real-ip")
    if real:
        ip = _ip(_text(real))
        if ip is not None:
            return ip
    address = request.getClientAddress()
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    return f"{host}:{port}" if host is not None and port is not None else str(address)


def request_info(request: Any) -> dict[str, str]:
    """The ``request`` part of an event."""
    addr = client_addr(request)
    return {
        "id": getattr(request, "request_id", "") or "",
        "addr": addr,
        "host": _text(request.getHeader(b"host")),
        "method": _text(request.method),
        "useragent": _text(request.getHeader(b"user-agent")),
    }


def absolute_url(request: Any, url: str) -> str:
    """``url`` (a path unless ``http.host`` made it absolute) on the host
    the client used."""
    if "://" in url:
        return url
    scheme = "https" if request.isSecure() else "http"
    host = _text(request.getHeader(b"host"))
    return f"{scheme}://{host}{url}" if host else url


class Endpoint:
    """One webhook: its filter, its bounded queue and the worker that sends it."""

    def __init__(
        self,
        config: EndpointConfig,
        reactor: Any,
        metrics: RegistryMetrics | None = None,
        queue_limit: int = DEFAULT_QUEUE_LIMIT,
    ) -> None:
        self.config = config
        self.name = config.name
        self.reactor = reactor
        self.metrics = metrics
        self.queue_limit = queue_limit
        self.queue: deque[dict[str, Any]] = deque()
        self.ignored_types = frozenset(config.ignoredmediatypes) | frozenset(config.ignore.mediatypes)
        self.ignored_actions = frozenset(config.ignore.actions)
        self.consecutive_failures = 0
        self.sent = 0
        self.dropped = 0
        self._dropping = False
        self._wake: Deferred[None] | None = None
        self._worker: Deferred[None] | None = None
        self._stopping = False

    # -- the request side: filter and enqueue, nothing else --

    def wants(self, event: dict[str, Any]) -> bool:
        if event["action"] in self.ignored_actions:
            return False
        return event["target"].get("mediaType") not in self.ignored_types

    def enqueue(self, event: dict[str, Any]) -> None:
        if not self.wants(event):
            return
        if len(self.queue) >= self.queue_limit:
            self.dropped += 1
            if self.metrics is not None:
                self.metrics.events.labels("Dropped", self.name).inc()
            if not self._dropping:
                self._dropping = True
                _log.warn(
                    "notification endpoint {endpoint}: queue full ({limit} events waiting); dropping new events "
                    "until it drains",
                    endpoint=self.name,
                    limit=self.queue_limit,
                )
            return
        if self._dropping:
            self._dropping = False
            _log.warn("notification endpoint {endpoint}: queue has room again", endpoint=self.name)
        self.queue.append(event)
        if self.metrics is not None:
            self.metrics.events.labels("Events", self.name).inc()
        self._set_queue_gauge()
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.callback(None)

    def _set_queue_gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.pending.labels(self.name).set(len(self.queue))

    # -- the worker --

    def start(self) -> None:
        if self._worker is None:
            self._stopping = False
            self._worker = ensureDeferred(self._run())

    def stop(self) -> Deferred[None]:
        """Stop the worker (cancelling a delivery in flight)."""
        self._stopping = True
        worker, self._worker = self._worker, None
        if self._wake is not None:
            wake, self._wake = self._wake, None
            wake.callback(None)
        if self.queue:
            _log.warn(
                "notification endpoint {endpoint}: {count} events not delivered at shutdown",
                endpoint=self.name,
                count=len(self.queue),
            )
        if worker is None:
            return succeed(None)
        worker.cancel()
        return worker.addErrback(lambda f: f.trap(CancelledError))

    async def _run(self) -> None:
        while not self._stopping:
            if not self.queue:
                self._wake = Deferred()
                await self._wake
                continue
            batch = [self.queue[i] for i in range(min(BATCH, len(self.queue)))]
            error, status = await self._deliver(batch)
            if self.metrics is not None:
                if status is not None:
                    self.metrics.statuses.labels(_status_text(status), self.name).inc()
                outcome = "Successes" if error is None else "Failures" if status is not None else "Errors"
                self.metrics.events.labels(outcome, self.name).inc(len(batch))
            if error is None:
                for _ in batch:
                    self.queue.popleft()
                self._set_queue_gauge()
                self.sent += len(batch)
                if self.consecutive_failures >= max(self.config.threshold, 1):
                    _log.info("notification endpoint {endpoint} delivers again", endpoint=self.name)
                self.consecutive_failures = 0
                continue
            self.consecutive_failures += 1
            await deferLater(self.reactor, self._retry_delay(error), lambda: None)

    def _retry_delay(self, error: str) -> float:
        n, threshold, backoff = self.consecutive_failures, self.config.threshold, self.config.backoff
        if n >= max(threshold, 1):
            if n == max(threshold, 1):
                _log.warn(
                    "notification endpoint {endpoint}: {failures} deliveries failed in a row ({error}); "
                    "retrying every {backoff}s",
                    endpoint=self.name,
                    failures=n,
                    error=error,
                    backoff=backoff,
                )
            return backoff
        return min(FIRST_RETRY * 2 ** (n - 1), backoff)

    async def _deliver(self, batch: list[dict[str, Any]]) -> tuple[str | None, int | None]:
        """Send one envelope: ``(why it failed or None, the answer's status
        or None when there was no answer)``."""
        body = json.dumps({"events": batch}).encode()
        attempt = Deferred.fromCoroutine(self._post(body))
        attempt.addTimeout(self.config.timeout, self.reactor)
        try:
            status = await attempt
        except CancelledError:
            if self._stopping:
                raise
            return f"no answer within {self.config.timeout}s", None
        except Exception as e:  # connection refused, reset, DNS...
            return f"{type(e).__name__}: {e}", None
        if 200 <= status < 300:
            return None, status
        return f"answered {status}", status

    async def _post(self, body: bytes) -> int:
        import treq

        from twisted.web.http_headers import Headers

        headers = Headers()
        for name, values in self.config.headers.items():
            headers.setRawHeaders(name, list(values))
        headers.setRawHeaders("Content-Type", [EVENTS_MEDIA_TYPE])
        assert self.config.url is not None  # endpoints without one are not built
        response = await treq.post(
            self.config.url, data=body, headers=headers, reactor=self.reactor, persistent=False
        )
        await response.content()
        return int(response.code)


@implementer(IEventSink)
class Notifier:
    """Builds events and hands them to every endpoint's queue."""

    def __init__(
        self,
        endpoints: list[Endpoint],
        *,
        source_addr: str = "",
        include_references: bool = False,
    ) -> None:
        self.endpoints = endpoints
        self.include_references = include_references
        self.source = {"addr": source_addr, "instanceID": str(uuid.uuid4())}

    def emit(self, action: str, target: dict[str, Any], request: Any) -> None:
        if not self.endpoints:
            return
        target = dict(target)
        if not self.include_references:
            target.pop("references", None)
        elif "references" in target and callable(target["references"]):
            try:
                target["references"] = target["references"]()
            except Exception:
                target.pop("references")
        if "url" in target:
            target["url"] = absolute_url(request, target["url"])
        identity = getattr(request, "identity", None)
        name = getattr(identity, "name", None)
        event = {
            "id": str(uuid.uuid4()),
            "timestamp": _timestamp(),
            "action": action,
            "target": target,
            "request": request_info(request),
            "actor": {"name": name} if name else {},
            "source": self.source,
        }
        for endpoint in self.endpoints:
            endpoint.enqueue(event)


class NotificationService(Service):
    """Runs the endpoints' workers with the application."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def startService(self) -> None:
        super().startService()
        for endpoint in self.notifier.endpoints:
            endpoint.start()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        from twisted.internet.defer import gatherResults

        return gatherResults([e.stop() for e in self.notifier.endpoints])


def notifier_from_config(
    config: NotificationsConfig,
    reactor: Any,
    metrics: RegistryMetrics | None = None,
    source_addr: str = "",
    queue_limit: int = DEFAULT_QUEUE_LIMIT,
) -> Notifier | None:
    """The notifier for the enabled endpoints (None when there are none)."""
    endpoints = [Endpoint(e, reactor, metrics, queue_limit) for e in config.endpoints if not e.disabled and e.url]
    if not endpoints:
        return None
    if not source_addr:
        source_addr = socket.gethostname()
    return Notifier(endpoints, source_addr=source_addr, include_references=config.events.includereferences)



#: The media type Distribution gives blobs in events.
BLOB_MEDIA_TYPE = "application/octet-stream"


def blob_target(repository: str, digest: str, size: int, url: str, **extra: Any) -> dict[str, Any]:
    """An event's ``target`` for a blob."""
    return {
        "mediaType": BLOB_MEDIA_TYPE,
        "size": size,
        "digest": digest,
        "length": size,
        "repository": repository,
        "url": url,
        **extra,
    }


def manifest_target(
    repository: str, digest: str, media_type: str, size: int, url: str, tag: str | None, references: Any = None
) -> dict[str, Any]:
    """An event's ``target`` for a manifest; ``references``: a callable
    giving the descriptors it references (only called when
    ``notifications.events.includereferences`` is on)."""
    target: dict[str, Any] = {
        "mediaType": media_type,
        "size": size,
        "digest": digest,
        "length": size,
        "repository": repository,
        "url": url,
    }
    if tag:
        target["tag"] = tag
    if references is not None:
        target["references"] = references
    return target


def manifest_references(body: bytes, media_type: str) -> list[dict[str, Any]]:
    """The descriptors a manifest references (config and layers, or an
    index's manifests), as ``{mediaType, size, digest}``."""
    from registry.manifest_types import parse_manifest

    manifest = parse_manifest(body, media_type)
    if manifest.is_index:
        descriptors = list(manifest.children)
    else:
        descriptors = ([manifest.config] if manifest.config is not None else []) + list(manifest.layers)
    return [{"mediaType": d.media_type, "size": d.size, "digest": str(d.digest)} for d in descriptors]
