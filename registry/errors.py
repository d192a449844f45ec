"""The registry's error codes, registered once with their HTTP status and
default message, and the exception that carries one to the HTTP layer.

Resources raise ``RegistryError(CODE, message, detail)``; one function in
``registry.resources.base`` turns it into the spec's error envelope
``{"errors": [{"code", "message", "detail"}]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorCode:
    code: str
    status: int
    message: str


_CODES: dict[str, ErrorCode] = {}


def _register(code: str, status: int, message: str) -> ErrorCode:
    ec = ErrorCode(code, status, message)
    _CODES[code] = ec
    return ec


BLOB_UNKNOWN = _register("BLOB_UNKNOWN", 404, "blob unknown to registry")
BLOB_UPLOAD_INVALID = _register("BLOB_UPLOAD_INVALID", 400, "blob upload invalid")
BLOB_UPLOAD_UNKNOWN = _register("BLOB_UPLOAD_UNKNOWN", 404, "blob upload unknown to registry")
DIGEST_INVALID = _register("DIGEST_INVALID", 400, "provided digest did not match uploaded content")
# 400, not 404: the request is wrong (it names blobs that must be pushed
# first); Distribution registers it so, and docker and containerd read 400.
MANIFEST_BLOB_UNKNOWN = _register("MANIFEST_BLOB_UNKNOWN", 400, "manifest references a blob unknown to the repository")
MANIFEST_INVALID = _register("MANIFEST_INVALID", 400, "manifest invalid")
MANIFEST_UNKNOWN = _register("MANIFEST_UNKNOWN", 404, "manifest unknown")
NAME_INVALID = _register("NAME_INVALID", 400, "invalid repository name")
NAME_UNKNOWN = _register("NAME_UNKNOWN", 404, "repository name not known to registry")
SIZE_INVALID = _register("SIZE_INVALID", 400, "provided length did not match content length")
TAG_INVALID = _register("TAG_INVALID", 400, "manifest tag did not match URI")
UNAUTHORIZED = _register("UNAUTHORIZED", 401, "authentication required")
DENIED = _register("DENIED", 403, "requested access to the resource is denied")
UNSUPPORTED = _register("UNSUPPORTED", 405, "the operation is unsupported")
RANGE_INVALID = _register("RANGE_INVALID", 416, "invalid content range")
PAGINATION_NUMBER_INVALID = _register("PAGINATION_NUMBER_INVALID", 400, "invalid number of results requested")
TOOMANYREQUESTS = _register("TOOMANYREQUESTS", 429, "too many requests")
UNAVAILABLE = _register("UNAVAILABLE", 503, "service unavailable")
UNKNOWN = _register("UNKNOWN", 500, "unknown error")


def lookup(code: str) -> ErrorCode:
    return _CODES[code]


class RegistryError(Exception):
    """An error with a registered code, a human-actionable message and an
    optional JSON-able detail. ``status`` overrides the code's default
    (e.g. 413 for an oversized manifest) and ``headers`` are added to the
    response (e.g. ``Range`` on a 416)."""

    def __init__(
        self,
        code: ErrorCode,
        message: str | None = None,
        detail: Any = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message or code.message)
        self.code = code
        self.message = message or code.message
        self.detail = detail
        self.status = status or code.status
        self.headers = headers or {}

    def envelope(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code.code, "message": self.message}
        entry["detail"] = self.detail if self.detail is not None else {}
        return {"errors": [entry]}
