"""What resources are given: the registry data model and the policy the
configuration sets (deletes, read-only mode, external URL)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs

from registry import errors
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.storage.registry import Registry

# Advertised to clients as the smallest non-final chunk we would like; any
# size is accepted.
CHUNK_MIN_LENGTH = 1 << 20


@dataclass
class Context:
    registry: Registry
    delete_enabled: bool = False
    readonly: bool = False
    base_url: str = ""  # http.host: absolute URLs in Location when set

    def url(self, path: str) -> str:
        return f"{self.base_url.rstrip('/')}{path}" if self.base_url else path

    def check_writable(self) -> None:
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
