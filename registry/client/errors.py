"""Typed exceptions of the registry client.

Every failure the client reports is a :class:`ClientError`.  An error answer
from a registry becomes a :class:`RegistryAPIError` (or the subclass for its
first error code, e.g. :class:`ManifestUnknown`) carrying the HTTP status and
each entry of the spec's envelope ``{"errors": [{"code", "message",
"detail"}]}``.  ``str()`` of any of them is one line a person can act on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any


class ClientError(Exception):
    """Base class of everything the registry client raises on purpose."""


class TransportError(ClientError):
    """The registry could not be reached or the connection failed (after retries)."""


class AuthenticationError(ClientError):
    """Credentials are missing or were refused (by the registry or its token server)."""


class DigestMismatch(ClientError):
    """Content did not hash to the digest it was asked for (or had the wrong size)."""


class ProtocolError(ClientError):
    """The registry answered something the API does not allow (bad header, bad JSON)."""


@dataclass(frozen=True)
class ErrorEntry:
    """One entry of the error envelope."""

    code: str
    message: str
    detail: Any = None


class RegistryAPIError(ClientError):
    """The registry answered an error status; ``errors`` holds its envelope entries.

    ``code``, ``message`` and ``detail`` are those of the first entry (``code``
    is ``""`` when the answer had no envelope, e.g. a HEAD or a proxy's page).
    """

    def __init__(self, status: int, errors: list[ErrorEntry], context: str = "") -> None:
        self.status = status
        self.errors = errors
        self.context = context
        first = errors[0] if errors else ErrorEntry("", "")
        self.code = first.code
        self.message = first.message
        self.detail = first.detail
        super().__init__(self._describe())

    def _describe(self) -> str:
        where = f"{self.context}: " if self.context else ""
        if not self.errors:
            return f"{where}HTTP {self.status}"
        parts = []
        for entry in self.errors:
            text = f"{entry.code}: {entry.message}" if entry.code else entry.message
            if entry.detail not in (None, {}, [], ""):
                detail = entry.detail if isinstance(entry.detail, str) else json.dumps(entry.detail, sort_keys=True)
                text += f" ({detail[:300]})"
            parts.append(text)
        return f"{where}HTTP {self.status}: " + "; ".join(parts)


class BlobUnknown(RegistryAPIError):
    """BLOB_UNKNOWN"""


class BlobUploadUnknown(RegistryAPIError):
    """BLOB_UPLOAD_UNKNOWN"""


class BlobUploadInvalid(RegistryAPIError):
    """BLOB_UPLOAD_INVALID"""


class DigestInvalid(RegistryAPIError):
    """DIGEST_INVALID"""


class ManifestUnknown(RegistryAPIError):
    """MANIFEST_UNKNOWN"""


class ManifestInvalid(RegistryAPIError):
    """MANIFEST_INVALID"""


class ManifestBlobUnknown(RegistryAPIError):
    """MANIFEST_BLOB_UNKNOWN"""


class NameUnknown(RegistryAPIError):
    """NAME_UNKNOWN"""


class NameInvalid(RegistryAPIError):
    """NAME_INVALID"""


class TagInvalid(RegistryAPIError):
    """TAG_INVALID"""


class Unauthorized(RegistryAPIError, AuthenticationError):
    """UNAUTHORIZED (401 after authenticating, or no way to authenticate)."""


class Denied(RegistryAPIError, AuthenticationError):
    """DENIED (403)."""


class Unsupported(RegistryAPIError):
    """UNSUPPORTED (405, or a registry refusing an operation)."""


class RangeInvalid(RegistryAPIError):
    """RANGE_INVALID (416)."""


class TooManyRequests(RegistryAPIError):
    """TOOMANYREQUESTS (429)."""


class Unavailable(RegistryAPIError):
    """UNAVAILABLE (503)."""


_BY_CODE: dict[str, type[RegistryAPIError]] = {
    "BLOB_UNKNOWN": BlobUnknown,
    "BLOB_UPLOAD_UNKNOWN": BlobUploadUnknown,
    "BLOB_UPLOAD_INVALID": BlobUploadInvalid,
    "DIGEST_INVALID": DigestInvalid,
    "MANIFEST_UNKNOWN": ManifestUnknown,
    "MANIFEST_INVALID": ManifestInvalid,
    "MANIFEST_BLOB_UNKNOWN": ManifestBlobUnknown,
    "NAME_UNKNOWN": NameUnknown,
    "NAME_INVALID": NameInvalid,
    "TAG_INVALID": TagInvalid,
    "UNAUTHORIZED": Unauthorized,
    "DENIED": Denied,
    "UNSUPPORTED": Unsupported,
    "RANGE_INVALID": RangeInvalid,
    "TOOMANYREQUESTS": TooManyRequests,
    "UNAVAILABLE": Unavailable,
}

_BY_STATUS: dict[int, type[RegistryAPIError]] = {
    401: Unauthorized,
    403: Denied,
    405: Unsupported,
    416: RangeInvalid,
    429: TooManyRequests,
    503: Unavailable,
}


def parse_envelope(body: bytes) -> list[ErrorEntry]:
    """The entries of an error envelope, or ``[]`` if ``body`` is not one. Pure."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(document, dict) or not isinstance(document.get("errors"), list):
        return []
    entries = []
    for item in document["errors"]:
        if isinstance(item, dict):
            entries.append(
                ErrorEntry(str(item.get("code", "") or ""), str(item.get("message", "") or ""), item.get("detail"))
            )
    return entries


def api_error(status: int, body: bytes, context: str = "") -> RegistryAPIError:
    """The typed exception for an error answer: by its first code, else by status. Pure.

    A body that is not an envelope becomes one entry holding its first line
    of text (so a proxy's HTML error still says something).
    """
    entries = parse_envelope(body)
    if not entries:
        text = body.decode("utf-8", "replace").strip().splitlines()
        if text and not text[0].lstrip().startswith("<"):
            entries = [ErrorEntry("", text[0][:300])]
    cls = _BY_CODE.get(entries[0].code) if entries else None
    if cls is None:
        cls = _BY_STATUS.get(status, RegistryAPIError)
    return cls(status, entries, context)
