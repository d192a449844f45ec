"""What every resource shares: one table from exceptions to OCI errors, one
function that writes the error envelope, and the async render path.

Handlers are coroutines ``async def handler(request, **params)``. They raise
``RegistryError`` or data-model errors; ``render_async`` maps any exception
through ``to_registry_error`` and writes it with ``write_error``. Unknown
exceptions become a logged 500 whose body has no traceback.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Coroutine

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET

from registry import errors
from registry.digest import DigestError
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.manifest_types import ManifestError
from registry.reference import InvalidNameError, InvalidTagError
from registry.storage import errors as model
from registry.storage.driver import InvalidPathError, StorageError

log = Logger(namespace="registry.http")


def _blob_unknown(e: model.BlobUnknown) -> RegistryError:
    return RegistryError(errors.BLOB_UNKNOWN, str(e), {"digest": str(e.digest)})


def _upload_unknown(e: model.UploadUnknown) -> RegistryError:
    return RegistryError(errors.BLOB_UPLOAD_UNKNOWN, str(e), {"uuid": e.upload_id})


def _digest_mismatch(e: model.DigestMismatch) -> RegistryError:
    return RegistryError(
        errors.DIGEST_INVALID, str(e), {"expected": str(e.expected), "actual": str(e.actual), "size": e.size}
    )


def _offset_mismatch(e: model.UploadOffsetMismatch) -> RegistryError:
    return RegistryError(
        errors.RANGE_INVALID,
        str(e),
        {"offset": e.offset},
        headers={"Range": range_header(e.offset)},
    )


def _name_unknown(e: model.NameUnknown) -> RegistryError:
    return RegistryError(errors.NAME_UNKNOWN, str(e), {"name": e.name})


def _manifest_blob_unknown(e: model.ManifestBlobUnknown) -> RegistryError:
    return RegistryError(errors.MANIFEST_BLOB_UNKNOWN, str(e), {"digest": str(e.digest), "missing": [str(d) for d in e.missing]})


def _digest_error(e: DigestError) -> RegistryError:
    return RegistryError(errors.DIGEST_INVALID, str(e))


def _storage_error(e: StorageError) -> RegistryError:
    log.failure("storage error", Failure(e))
    return RegistryError(errors.UNAVAILABLE, "the storage backend failed; try again", status=503)


# The one table: data-model and parsing exceptions -> OCI errors.
ERROR_TABLE: list[tuple[type[BaseException], Callable[[Any], RegistryError]]] = [
    (model.BlobUnknown, _blob_unknown),
    (model.UploadUnknown, _upload_unknown),
    (model.DigestMismatch, _digest_mismatch),
    (model.UploadOffsetMismatch, _offset_mismatch),
    (model.NameUnknown, _name_unknown),
    (model.ManifestUnknown, lambda e: RegistryError(errors.MANIFEST_UNKNOWN, str(e), {"name": e.name, "reference": e.reference})),
    (model.ManifestBlobUnknown, _manifest_blob_unknown),
    (model.ManifestInvalid, lambda e: RegistryError(errors.MANIFEST_INVALID, str(e))),
    (ManifestError, lambda e: RegistryError(errors.MANIFEST_INVALID, str(e))),
    (DigestError, _digest_error),
    (InvalidNameError, lambda e: RegistryError(errors.NAME_INVALID, str(e))),
    (InvalidTagError, lambda e: RegistryError(errors.TAG_INVALID, str(e))),
    (InvalidPathError, lambda e: RegistryError(errors.NAME_INVALID, "the request names a path this registry cannot store")),
    (StorageError, _storage_error),
]


def to_registry_error(exc: BaseException) -> RegistryError:
    if isinstance(exc, RegistryError):
        return exc
    for exc_type, convert in ERROR_TABLE:
        if isinstance(exc, exc_type):
            return convert(exc)
    log.failure("unhandled error", Failure(exc))
    return RegistryError(errors.UNKNOWN, "internal server error; the registry logged the cause", status=500)


def range_header(offset: int) -> str:
    """The upload ``Range`` value for ``offset`` bytes received, as Docker
    parses it (``%d-%d``, no ``bytes=``; ``0-0`` when empty)."""
    return f"0-{max(offset - 1, 0)}"


def write_error(request: RegistryRequest, err: RegistryError) -> None:
    """Write the spec's error envelope as the whole response."""
    body = json.dumps(err.envelope()).encode()
    request.setResponseCode(err.status)
    for k, v in err.headers.items():
        request.setHeader(k, v)
    request.setHeader(b"Content-Type", b"application/json; charset=utf-8")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    request.log_fields["error"] = err.code.code
    if request.method != b"HEAD":
        request.write(body)


def write_json(request: RegistryRequest, obj: Any, status: int = 200, content_type: str = "application/json") -> None:
    body = json.dumps(obj, separators=(",", ":")).encode()
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type.encode())
    request.setHeader(b"Content-Length", str(len(body)).encode())
    if request.method != b"HEAD":
        request.write(body)


def empty_response(request: RegistryRequest, status: int, headers: dict[str, str] | None = None) -> None:
    request.setResponseCode(status)
    for k, v in (headers or {}).items():
        request.setHeader(k, v)
    request.setHeader(b"Content-Length", b"0")


def render_async(request: RegistryRequest, handler: Callable[[], Coroutine[Any, Any, None]]) -> object:
    """Run ``handler`` and finish the request; errors go down one path.

    Mutating handlers are not cancelled when the client goes away (a commit
    runs to its end so storage stays consistent); nothing is written to a
    request that is already gone."""

    def failed(f: Failure) -> None:
        if f.check(CancelledError) or request.gone:
            return
        err = to_registry_error(f.value)
        if request.startedWriting:
            log.error("error after the response started: {err}", err=str(f.value))
            request.loseConnection()
            return
        write_error(request, err)

    def done(_: object) -> None:
        if not request.gone:
            request.finish()

    def release_body(result: object) -> object:
        release = getattr(request.body_sink, "release", None)
        if release is not None:
            release()
        return result

    d = ensureDeferred(handler())
    d.addBoth(release_body)
    d.addErrback(failed)
    d.addCallback(done)
    d.addErrback(lambda f: log.failure("while finishing a response", f))
    return NOT_DONE_YET
