"""Health checks for ``GET /debug/health`` on the debug listener.

Each configured check (``health.storagedriver``, ``health.file[]``,
``health.http[]``, ``health.tcp[]``, as Distribution has them) runs every
``interval`` in the background -- first when the application starts -- and
keeps its last outcome; the page only reads those outcomes, so asking for it
never waits on storage or the network.  A check is failing once it has failed
``threshold`` times in a row (0 or 1: at the first failure) and passes again
at its next success.

The page is Distribution's: a JSON object of the failing checks only (name to
error message), ``{}`` with 200 when all pass, 503 when any fails.  Names are
Distribution's too: ``storagedriver_<driver>``, the file path, the URI, the
address.

With ``redis`` configured there is one more check, ``redis`` (a ``PING``
every :data:`REDIS_INTERVAL` seconds; Distribution has none).  It is
reported on the page but does not close the registry (:meth:`HealthChecks.gate`):
without Redis pulls are still served from storage and uploads are refused
with 503 on their own, which is better than refusing everything.
"""

from __future__ import annotations

import json
import os
from typing import Any, Awaitable, Callable

from twisted.application.internet import TimerService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from registry.config import HealthConfig, parse_addr
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.paths import ROOT

__all__ = ["REDIS_INTERVAL", "HealthCheck", "HealthChecks", "HealthResource", "checks_from_config"]

_log = Logger(namespace="registry.health")

Probe = Callable[[], Awaitable[None]]

#: Seconds between two Redis checks (Distribution's default interval).
REDIS_INTERVAL = 10.0


class HealthCheck:
    """One periodic check: ``probe`` raises (any exception) when unhealthy."""

    def __init__(self, name: str, probe: Probe, interval: float, threshold: int = 0, gates: bool = True) -> None:
        self.name = name
        #: Whether the registry refuses requests while this check fails.
        self.gates = gates
        self.probe = probe
        # Distribution's default for a zero or missing interval.
        self.interval = interval if interval > 0 else 10.0
        self.threshold = max(threshold, 1)
        self.consecutive_failures = 0
        self.last_error: str | None = None
        self._running = False

    @property
    def error(self) -> str | None:
        """The failure message while failing, else None."""
        if self.consecutive_failures >= self.threshold:
            return self.last_error
        return None

    async def run(self) -> None:
        """Probe once and record the outcome (never raises)."""
        if self._running:  # the previous probe is still out: do not pile up
            return
        self._running = True
        try:
            await self.probe()
        except Exception as e:
            was_failing = self.error is not None
            self.consecutive_failures += 1
            self.last_error = str(e) or type(e).__name__
            if self.error is not None and not was_failing:
                _log.warn("health check {check} failing: {error}", check=self.name, error=self.last_error)
        else:
            if self.error is not None:
                _log.info("health check {check} passes again", check=self.name)
            self.consecutive_failures = 0
            self.last_error = None
        finally:
            self._running = False


class HealthChecks:
    """The checks of one registry and the services that run them."""

    def __init__(self, checks: list[HealthCheck] | None = None) -> None:
        self.checks = list(checks or [])

    def failing(self) -> dict[str, str]:
        """Failing checks: name -> error message."""
        return {c.name: c.error for c in self.checks if c.error is not None}

    def gate(self) -> HealthChecks | None:
        """The checks that close the registry while they fail (the router's
        ``health``); None when there are none."""
        gating = [c for c in self.checks if c.gates]
        return HealthChecks(gating) if gating else None

    def service(self) -> IService:
        """Runs every check at its interval (first at start-up)."""
        parent = MultiService()
        for check in self.checks:
            TimerService(check.interval, lambda c=check: ensureDeferred(c.run())).setServiceParent(parent)
        return parent


class HealthResource(Resource):
    """``GET /debug/health``: the failing checks as JSON, 200 or 503."""

    isLeaf = True

    def __init__(self, checks: HealthChecks) -> None:
        super().__init__()
        self.checks = checks

    def render_GET(self, request: Request) -> bytes:
        failing = self.checks.failing()
        body = json.dumps(failing, sort_keys=True).encode() + b"\n"
        request.setResponseCode(503 if failing else 200)
        request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-cache")
        return body

    render_HEAD = render_GET


# --- the probes ---------------------------------------------------------------


def storage_probe(driver: IStorageDriver) -> Probe:
    """Stat the registry's storage root through the driver; an empty
    registry (no root yet) is healthy, any other error is not."""

    async def probe() -> None:
        try:
            await driver.stat(ROOT)
        except PathNotFoundError:
            pass

    return probe


def file_probe(path: str, reactor: Any) -> Probe:
    """Unhealthy while ``path`` exists (Distribution's maintenance switch)."""
    from twisted.internet.threads import deferToThreadPool

    async def probe() -> None:
        # A stat can hang on a dead network mount: never on the reactor.
        exists = await deferToThreadPool(reactor, reactor.getThreadPool(), os.path.exists, path)
        if exists:
            raise RuntimeError("file exists")

    return probe


def http_probe(uri: str, headers: dict[str, list[str]], status: int, timeout: float, reactor: Any) -> Probe:
    """A HEAD request to ``uri`` must answer ``status``."""
    import treq
    from twisted.web.http_headers import Headers

    raw = Headers()
    for name, values in headers.items():
        raw.setRawHeaders(name, list(values))

    async def probe() -> None:
        try:
            response = await treq.head(uri, headers=raw, timeout=timeout, reactor=reactor)
        except Exception as e:
            raise RuntimeError(f"error while checking {uri}: {type(e).__name__}: {e}") from None
        await response.text()  # drain (HEAD has no body)
        if response.code != status:
            raise RuntimeError(f"downstream service returned unexpected status: {response.code}")

    return probe


class _Connected(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.loseConnection()


def tcp_probe(addr: str, timeout: float, reactor: Any) -> Probe:
    """A TCP connection to ``addr`` must open within ``timeout``."""
    host, port = parse_addr(addr)

    async def probe() -> None:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=timeout)
        try:
            await endpoint.connect(Factory.forProtocol(_Connected))
        except Exception as e:
            raise RuntimeError(f"connection to {addr} failed: {type(e).__name__}: {e}") from None

    return probe


def redis_probe(client: Any) -> Probe:
    """A ``PING`` through the registry's Redis client must answer."""

    async def probe() -> None:
        await client.execute("PING")

    return probe


def checks_from_config(health: HealthConfig, driver: IStorageDriver, reactor: Any, redis: Any = None) -> HealthChecks:
    """The checks ``health`` configures (``storagedriver_<name>`` over
    ``driver``), and ``redis`` when the registry has a Redis client."""
    checks: list[HealthCheck] = []
    sd = health.storagedriver
    if sd.enabled:
        name = f"storagedriver_{getattr(driver, 'name', 'unknown')}"
        checks.append(HealthCheck(name, storage_probe(driver), sd.interval, sd.threshold))
    for f in health.file:
        checks.append(HealthCheck(f.file, file_probe(f.file, reactor), f.interval))
    for h in health.http:
        checks.append(
            HealthCheck(h.uri, http_probe(h.uri, h.headers, h.statuscode, h.timeout, reactor), h.interval, h.threshold)
        )
    for t in health.tcp:
        checks.append(HealthCheck(t.addr, tcp_probe(t.addr, t.timeout, reactor), t.interval, t.threshold))
    if redis is not None:
        checks.append(HealthCheck("redis", redis_probe(redis), REDIS_INTERVAL, gates=False))
    return HealthChecks(checks)
