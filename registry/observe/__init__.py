"""Operating the registry: request ids, Prometheus metrics, health checks
and webhook notifications (issue 14)."""

from __future__ import annotations

import dataclasses
import socket
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from twisted.application.service import IService

    from registry.app import Listener
    from registry.config import Config, HTTPConfig
    from registry.observe.health import HealthChecks
    from registry.observe.metrics import RegistryMetrics
    from registry.observe.notifications import Notifier
    from registry.storage.driver import IStorageDriver

__all__ = ["Observability"]


@dataclasses.dataclass
class Observability:
    """What the configuration asks for beside the registry itself: metrics
    (when the debug listener serves them), health checks, notifications."""

    debug_addr: str | None = None
    metrics_path: str = "/metrics"
    metrics: RegistryMetrics | None = None
    health: HealthChecks | None = None
    notifier: Notifier | None = None

    @classmethod
    def from_config(cls, config: Config, driver: IStorageDriver, reactor: Any, redis: Any = None) -> Observability:
        """``redis``: the registry's Redis client, if any (checked too)."""
        from registry.config import parse_addr
        from registry.observe.health import checks_from_config
        from registry.observe.metrics import RegistryMetrics
        from registry.observe.notifications import notifier_from_config
        from registry.storage.wrapper import StorageDriverWrapper

        debug = config.http.debug
        metrics = None
        if debug.addr is not None and debug.prometheus.enabled:
            metrics = RegistryMetrics()
            if isinstance(driver, StorageDriverWrapper):
                driver.observer = metrics.driver_operation
        source = socket.gethostname()
        if config.http.net != "unix":
            source = f"{source}:{parse_addr(config.http.addr)[1]}"
        return cls(
            debug_addr=debug.addr,
            metrics_path=debug.prometheus.path,
            metrics=metrics,
            health=checks_from_config(config.health, driver, reactor, redis),
            notifier=notifier_from_config(config.notifications, reactor, metrics, source_addr=source),
        )

    def services(self) -> list[IService]:
        """Health checks and notification workers, run with the application."""
        from registry.observe.notifications import NotificationService

        services: list[IService] = []
        if self.health is not None and self.health.checks:
            services.append(self.health.service())
        if self.notifier is not None:
            services.append(NotificationService(self.notifier))
        return services

    def debug_listener(self, http: HTTPConfig) -> Listener | None:
        """``http.debug.addr``'s listener (None when it is not set)."""
        from registry.app import Listener, endpoint_description
        from registry.observe.debug import DebugResource, DebugSite
        from registry.observe.health import HealthChecks

        if self.debug_addr is None:
            return None
        plain = dataclasses.replace(http, addr=self.debug_addr, net="tcp", tls_certificate=None, tls_key=None)
        resource = DebugResource(self.health or HealthChecks(), self.metrics, self.metrics_path)
        return Listener("debug", endpoint_description(plain), DebugSite(resource))
