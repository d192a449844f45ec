"""The debug listener's pages: ``/debug/health`` and, with
``http.debug.prometheus.enabled``, the metrics (at
``http.debug.prometheus.path``, default ``/metrics``)."""

from __future__ import annotations

from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from registry.observe.health import HealthChecks, HealthResource
from registry.observe.metrics import CONTENT_TYPE_LATEST, RegistryMetrics

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
