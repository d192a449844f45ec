"""What resources are given: the registry data model and the policy the
configuration sets (deletes, read-only mode, external URL)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from registry import errors
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.storage.model import DataModel
from registry.storage.verify import LayerVerifier

if TYPE_CHECKING:
    from registry.observe.notifications import IEventSink

# Advertised to clients as the smallest non-final chunk we would like; any
# size is accepted.
CHUNK_MIN_LENGTH = 1 << 20

# The most body a request that carries no data (GET, DELETE, mount, unknown
# endpoints) may send; more is refused without being kept.
SMALL_BODY = 64 * 1024


@dataclass
class Context:
    model: DataModel
    delete_enabled: bool = False
    readonly: bool = False
    base_url: str = ""  # http.host: absolute URLs in Location when set
    prefix: str = "/"  # http.prefix: the path before v2/, with both slashes
    relative_urls: bool = False  # http.relativeurls: never absolute URLs
    extra_headers: dict[str, list[str]] = field(default_factory=dict)  # http.headers
    pull_through: bool = False  # proxy.remoteurl: a pull-through cache refuses pushes and deletes
    redirect: bool = True  # storage.redirect.disable: false -> blob GETs may redirect to the driver's URL
    #: Where pushes, pulls, mounts and deletes are reported
    #: (``registry.observe.notifications.IEventSink``); None: nowhere.
    events: IEventSink | None = None

    def notify(self, request: RegistryRequest, action: str, target: dict[str, Any]) -> None:
        """Report ``action`` on ``target`` (queued; never blocks the request)."""
        if self.events is not None:
            self.events.emit(action, target, request)
    layers: LayerVerifier | None = None  # validation.manifests.verifylayers: recorded layer info

    def url(self, path: str) -> str:
        """The URL clients use for the API path ``path`` (``/v2/...``): under
        the prefix, and absolute on ``http.host`` unless relative URLs are
        asked for. Without ``http.host`` it is relative (clients resolve it
        against the URL they used, which stays right behind proxies)."""
        full = self.prefix.rstrip("/") + path
        if self.base_url and not self.relative_urls:
            return self.base_url.rstrip("/") + full
        return full

    def check_writable(self) -> None:
        if self.pull_through:
            raise RegistryError(
                errors.UNSUPPORTED,
                "this registry is a pull-through cache (proxy.remoteurl): pushes and deletes are not supported; "
                "push to the upstream registry instead",
            )
        if self.readonly:
            raise RegistryError(
                errors.UNSUPPORTED,
                "the registry is in read-only mode (storage.maintenance.readonly): pushes and deletes are refused",
            )

    def check_delete(self) -> None:
        self.check_writable()
        if not self.delete_enabled:
            raise RegistryError(
                errors.UNSUPPORTED, "deletes are disabled on this registry (storage.delete.enabled is false)"
            )

    def chunk_headers(self) -> dict[str, str]:
        return {"OCI-Chunk-Min-Length": str(CHUNK_MIN_LENGTH)}


def query_values(request: RegistryRequest) -> dict[str, list[str]]:
    """The query string as str -> [str], percent-decoded."""
    uri = request.uri or b""
    _, _, query = uri.partition(b"?")
    return parse_qs(query.decode("latin-1"), keep_blank_values=True)
