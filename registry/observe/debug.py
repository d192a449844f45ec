"""The debug listener's pages: ``/debug/health`` and, with
``http.debug.prometheus.enabled``, the metrics (at
``http.debug.prometheus.path``, default ``/metrics``).

With several worker processes (``http.workers``) the parent serves
:class:`WorkersDebugResource`: each worker's own debug pages are on a
private unix socket; health is the first worker's that answers (worker 0,
the primary, first) and the metrics are every answering worker's, summed
(``registry.observe.metrics.aggregate_expositions``)."""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import DeferredList, ensureDeferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.iweb import IAgentEndpointFactory
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from registry.observe.health import HealthChecks, HealthResource
from registry.observe.metrics import CONTENT_TYPE_LATEST, RegistryMetrics, aggregate_expositions

_log = Logger(namespace="registry.observe.debug")

HEALTH_PATH = b"/debug/health"


class MetricsResource(Resource):
    """The Prometheus text exposition of ``metrics``."""

    isLeaf = True

    def __init__(self, metrics: RegistryMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"Content-Type", CONTENT_TYPE_LATEST.encode())
        return self.metrics.render()


class DebugResource(Resource):
    """Routes the debug listener's few exact paths; 404 for the rest."""

    isLeaf = True

    def __init__(self, health: HealthChecks, metrics: RegistryMetrics | None, metrics_path: str = "/metrics") -> None:
        super().__init__()
        self.pages: dict[bytes, Resource] = {HEALTH_PATH: HealthResource(health)}
        if metrics is not None:
            self.pages[metrics_path.encode()] = MetricsResource(metrics)

    def render(self, request: Request) -> bytes:
        page = self.pages.get(request.path)
        if page is None:
            request.setResponseCode(404)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            paths = ", ".join(sorted(p.decode() for p in self.pages))
            return f"not found; this debug listener serves {paths}\n".encode()
        result: bytes = page.render(request)
        return result


class DebugSite(Site):
    """The debug listener's Site: no access log line per scrape or probe
    (Prometheus and load balancers ask every few seconds)."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


#: Seconds the parent waits for a worker's debug page.
WORKER_TIMEOUT = 5.0


def _not_found(request: Request, paths: Sequence[str]) -> bytes:
    request.setResponseCode(404)
    request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
    return f"not found; this debug listener serves {', '.join(sorted(paths))}\n".encode()


class WorkersDebugResource(Resource):
    """The parent's debug pages, from the workers' (``sockets[i]`` is
    worker ``i``'s private unix socket)."""

    isLeaf = True

    def __init__(self, sockets: Sequence[str], reactor: Any, metrics_path: str | None = None) -> None:
        super().__init__()
        from twisted.web.client import Agent

        self.sockets = list(sockets)
        self.reactor = reactor
        self.metrics_path = metrics_path
        self.agent = Agent.usingEndpointFactory(reactor, _UnixSockets(reactor, self.sockets))

    async def _get(self, path: str, page: str) -> tuple[int, bytes, bytes]:
        from twisted.web.client import readBody
        from twisted.web.http_headers import Headers

        # The URL's host names the worker; the endpoint factory its socket.
        url = f"http://worker-{self.sockets.index(path)}{page}".encode()
        d = self.agent.request(b"GET", url, Headers({b"User-Agent": [b"registry-workers"]}))
        d.addTimeout(WORKER_TIMEOUT, self.reactor)
        response = await d
        body = await readBody(response)
        content_type = (response.headers.getRawHeaders(b"Content-Type") or [b"text/plain"])[0]
        return int(response.code), content_type, body

    def render_GET(self, request: Request) -> Any:
        paths = [HEALTH_PATH.decode()] + ([self.metrics_path] if self.metrics_path else [])
        if request.path == HEALTH_PATH:
            work = self._health()
        elif self.metrics_path is not None and request.path == self.metrics_path.encode():
            work = self._metrics()
        else:
            return _not_found(request, paths)

        def answer(result: tuple[int, bytes, bytes]) -> None:
            code, content_type, body = result
            request.setResponseCode(code)
            request.setHeader(b"Content-Type", content_type)
            request.write(body)
            request.finish()

        def failed(failure: Any) -> None:
            _log.failure("the debug page failed", failure)
            request.setResponseCode(500)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            request.write(b"internal error\n")
            request.finish()

        d = ensureDeferred(work)
        d.addCallbacks(answer, failed)
        return NOT_DONE_YET

    async def _health(self) -> tuple[int, bytes, bytes]:
        for path in self.sockets:
            try:
                return await self._get(path, HEALTH_PATH.decode())
            except Exception:
                continue  # restarting: ask the next worker
        return 503, b"text/plain; charset=utf-8", b"no worker process answered\n"

    async def _metrics(self) -> tuple[int, bytes, bytes]:
        assert self.metrics_path is not None
        results = await DeferredList(
            [ensureDeferred(self._get(path, self.metrics_path)) for path in self.sockets], consumeErrors=True
        )
        texts = [
            (index, result[2].decode("utf-8"))
            for index, (ok, result) in enumerate(results)
            if ok and result[0] == 200
        ]
        if not texts:
            return 503, b"text/plain; charset=utf-8", b"no worker process answered\n"
        return 200, CONTENT_TYPE_LATEST.encode(), aggregate_expositions(texts)


@implementer(IAgentEndpointFactory)
class _UnixSockets:
    """Connects an Agent to worker ``i``'s unix socket for ``http://worker-<i>/``."""

    def __init__(self, reactor: Any, sockets: Sequence[str]) -> None:
        self.reactor = reactor
        self.sockets = sockets

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.endpoints import UNIXClientEndpoint

        index = int(uri.host.decode().rpartition("-")[2])
        return UNIXClientEndpoint(self.reactor, self.sockets[index], timeout=WORKER_TIMEOUT)
