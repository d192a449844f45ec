"""Blob uploads: ``POST /v2/<name>/blobs/uploads/`` and
``GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>``.

Bodies of POST, PATCH and PUT never reach ``request.content``: once the
headers are in, ``body_handling`` validates everything it can and returns an
``UploadBody`` sink that hashes and writes chunks as they arrive, pausing the
transport while storage is behind. ``render`` runs when the body is complete
and turns the sink's outcome into the response. A request whose headers are
already wrong gets a sink that only discards, so nothing reaches storage.

A request that announces an empty body (``Content-Length: 0``) and has
nothing to append — the POST that starts a docker push, the PUT that
finishes one — opens no appender at all: the POST only creates the upload,
the PUT only commits it (``commit`` verifies from the stored hash state).
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Callable, Coroutine
from urllib.parse import quote

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.python.failure import Failure

from registry import errors
from registry.digest import Digest
from registry.errors import RegistryError
from registry.http import LimitedBody, RegistryRequest
from registry.resources.base import empty_response, range_header, to_registry_error
from registry.resources.blobs import _blob_target
from registry.resources.context import SMALL_BODY, Context, query_values
from registry.storage.interfaces import IUploadAppender

UPLOAD_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?$")


class UploadBody:
    """A body sink that appends to an upload with backpressure.

    ``done`` fires, once the body is complete (or the connection is lost),
    with the upload's new offset, or fails with the first error. On a lost
    connection the bytes that arrived are kept and their hash state stored,
    so the client can resume from them."""

    def __init__(
        self,
        request: RegistryRequest,
        open_appender: Callable[[], Coroutine[Any, Any, IUploadAppender]] | None,
        expected_length: int | None = None,
        error: BaseException | None = None,
    ) -> None:
        self.request = request
        self.expected_length = expected_length
        self.error: BaseException | None = error
        self.received = 0
        self.upload_id: str | None = None
        self.done: Deferred[int] = Deferred()
        self._appender: IUploadAppender | None = None
        self._pending: deque[bytes] = deque()
        self._busy = open_appender is not None and error is None  # until the appender is open
        self._pumping = False
        self._ended = False
        self._lost = False
        self._finished = False
        if self._busy:
            assert open_appender is not None
            ensureDeferred(open_appender()).addCallbacks(self._opened, self._failed)

    def outcome(self) -> "Deferred[int]":
        """The body's outcome (see ``done``), claimed by the handler."""
        self._claimed = True
        return self.done

    @property
    def committed(self) -> bool:
        """The appender's ``finish`` already stored and linked the blob
        (``IUploadStore.open_for_digest``): no ``commit`` follows."""
        return bool(getattr(self._appender, "committed", False))

    def release(self) -> None:
        """The response is decided without the outcome: let an error that
        nobody will read pass silently instead of as an unhandled failure."""
        if not getattr(self, "_claimed", False):
            self._claimed = True
            self.done.addErrback(lambda _: None)

    # -- BodySink ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.error is not None:
            return  # discarding
        self._pending.append(data)
        self._pump()

    def body_complete(self) -> None:
        self._ended = True
        self._maybe_finish()

    def connection_lost(self, reason: Failure) -> None:
        self._lost = True
        self.done.addErrback(lambda _: None)  # nobody is left to read it
        self._maybe_finish()

    # -- internals -------------------------------------------------------------

    def _opened(self, appender: IUploadAppender) -> None:
        self._appender = appender
        self.upload_id = appender.upload_id
        # The whole body goes to this appender (what arrived meanwhile waits
        # in ``_pending``): its length lets the S3 driver stream parts.
        length = _content_length(self.request)
        hint = getattr(appender, "expect", None)
        if hint is not None and length:
            hint(length)
        self._busy = False
        self._pump()

    def _failed(self, f: Failure) -> None:
        if self.error is None:
            self.error = f.value
        self._busy = False
        self._pending.clear()
        self.request.resume_body()
        self._maybe_finish()

    def _drained(self, _: object) -> None:
        self._busy = False
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._pending and not self._busy and self.error is None and self._appender is not None:
                chunk = self._pending.popleft()
                self._busy = True
                self._appender.write(chunk).addCallbacks(self._drained, self._write_failed)
        finally:
            self._pumping = False
        if self.error is not None or not (self._busy or self._pending):
            self.request.resume_body()
        else:
            self.request.pause_body()
        self._maybe_finish()

    def _write_failed(self, f: Failure) -> None:
        self._failed(f)

    def _maybe_finish(self) -> None:
        if self._finished or not (self._ended or self._lost):
            return
        if self._busy or (self._pending and self.error is None):
            return
        self._finished = True
        ensureDeferred(self._finish()).addCallbacks(self.done.callback, self.done.errback)

    async def _finish(self) -> int:
        appender = self._appender
        if self.error is not None:
            if appender is not None:
                await appender.fail()
            raise self.error
        assert appender is not None
        offset = await appender.finish()
        if self.expected_length is not None and self.received != self.expected_length and not self._lost:
            raise RegistryError(
                errors.RANGE_INVALID,
                f"Content-Range announced {self.expected_length} bytes but the body had {self.received}; "
                f"the upload now holds {offset} bytes: continue from there",
                {"offset": offset},
                headers={"Range": range_header(offset)},
            )
        return offset


def parse_content_range(value: str) -> tuple[int, int]:
    """Parse an upload ``Content-Range`` (``a-b``, ``bytes a-b/n``, ``bytes=a-b``).
    Raises ``RegistryError`` RANGE_INVALID."""
    m = _CONTENT_RANGE_RE.match(value.strip())
    if not m:
        raise RegistryError(errors.RANGE_INVALID, f"malformed Content-Range {value[:100]!r}: expected <start>-<end>")
    start, end = int(m.group(1)), int(m.group(2))
    if end < start:
        raise RegistryError(errors.RANGE_INVALID, f"Content-Range {value!r} ends before it starts")
    return start, end


def upload_location(ctx: Context, name: str, upload_id: str) -> str:
    return ctx.url(f"/v2/{name}/blobs/uploads/{upload_id}")


def upload_headers(ctx: Context, name: str, upload_id: str, offset: int) -> dict[str, str]:
    return {
        "Location": upload_location(ctx, name, upload_id),
        "Range": range_header(offset),
        "Docker-Upload-UUID": upload_id,
    }


def blob_created_headers(ctx: Context, name: str, d: Digest) -> dict[str, str]:
    return {"Location": ctx.url(f"/v2/{name}/blobs/{quote(str(d), safe=':')}"), "Docker-Content-Digest": str(d)}


def _content_length(request: RegistryRequest) -> int | None:
    raw = request.requestHeaders.getRawHeaders(b"content-length")
    if not raw:
        return None
    try:
        return int(raw[0])
    except ValueError:
        return None


class UploadStartResource:
    """``POST /v2/<name>/blobs/uploads/``: start, mount, or upload in one go."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def body_handling(self, request: RegistryRequest, method: bytes, params: dict[str, str], query: dict[str, list[str]], length: int | None) -> object:
        if method != b"POST" or "mount" in query:
            return LimitedBody(SMALL_BODY)
        name = params["name"]
        digest_values = query.get("digest")
        if length == 0 and digest_values is None:
            return LimitedBody(SMALL_BODY)  # nothing to append: POST only creates (see POST)
        try:
            self.ctx.check_writable()
            d = Digest.parse(digest_values[0]) if digest_values is not None else None
        except Exception as e:
            return UploadBody(request, None, error=e)
        uploads = self.ctx.model.uploads

        async def open_new() -> IUploadAppender:
            if d is not None:  # may go straight to the blob (``open_for_digest``)
                return await uploads.open_for_digest(name, None, d)
            upload_id = await uploads.create(name)
            return await uploads.open_appender(name, upload_id)

        return UploadBody(request, open_new)

    async def POST(self, request: RegistryRequest, name: str) -> None:
        ctx = self.ctx
        ctx.check_writable()
        q = query_values(request)
        request.log_fields["repository"] = name
        if "mount" in q:
            mount = Digest.parse(q["mount"][0])
            source = q.get("from", [None])[0]
            # Under access control: a source the caller may not pull is never
            # mounted from (a plain upload starts instead, so nothing about it
            # leaks), and an automatic mount needs a caller who may read
            # every repository.
            identity = request.identity
            automatic = identity is None or identity.granted is None
            mounted = request.mount_allowed and await ctx.model.try_mount(name, mount, source, automatic=automatic)
            if mounted:
                request.log_fields["digest"] = str(mount)
                if ctx.events is not None:
                    size = await ctx.model.blobs.descriptors.size(mount) or 0
                    extra = {"fromRepository": source} if source else {}
                    ctx.notify(request, "mount", _blob_target(ctx, name, mount, size, **extra))
                empty_response(request, 201, blob_created_headers(ctx, name, mount))
                return
            upload_id = await ctx.model.uploads.create(name)
            request.log_fields["upload"] = upload_id
            empty_response(request, 202, {**upload_headers(ctx, name, upload_id, 0), **ctx.chunk_headers()})
            return
        sink = request.body_sink
        if not isinstance(sink, UploadBody):
            if "digest" in q:
                raise RegistryError(errors.BLOB_UPLOAD_INVALID, "the request body could not be received")
            # An empty body without a digest (``body_handling``): just start.
            upload_id = await ctx.model.uploads.create(name)
            request.log_fields["upload"] = upload_id
            empty_response(request, 202, {**upload_headers(ctx, name, upload_id, 0), **ctx.chunk_headers()})
            return
        offset = await sink.outcome()
        if sink.upload_id is not None:
            request.log_fields["upload"] = sink.upload_id
        if "digest" in q:
            d = Digest.parse(q["digest"][0])
            request.log_fields["digest"] = str(d)
            if sink.committed:
                size = offset
            else:
                assert sink.upload_id is not None
                size = await ctx.model.uploads.commit(name, sink.upload_id, d)
            ctx.notify(request, "push", _blob_target(ctx, name, d, size))
            empty_response(request, 201, blob_created_headers(ctx, name, d))
            return
        assert sink.upload_id is not None
        empty_response(request, 202, {**upload_headers(ctx, name, sink.upload_id, offset), **ctx.chunk_headers()})


class UploadResource:
    """``GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def body_handling(self, request: RegistryRequest, method: bytes, params: dict[str, str], query: dict[str, list[str]], length: int | None) -> object:
        if method not in (b"PATCH", b"PUT"):
            return LimitedBody(SMALL_BODY)
        name, upload_id = params["name"], params["upload_id"]
        expect_start: int | None = None
        expected_length: int | None = None
        d: Digest | None = None
        cr = request.requestHeaders.getRawHeaders(b"content-range")
        if method == b"PUT" and length == 0 and not cr:
            return LimitedBody(SMALL_BODY)  # nothing to append: PUT only commits (see PUT)
        try:
            self.ctx.check_writable()
            check_upload_id(upload_id)
            if method == b"PUT":
                d = finish_digest(query)
            if cr:
                start, end = parse_content_range(cr[0].decode("latin-1"))
                expect_start, expected_length = start, end - start + 1
                if length is not None and length != expected_length:
                    raise RegistryError(
                        errors.SIZE_INVALID,
                        f"Content-Length {length} does not match Content-Range {cr[0].decode('latin-1')!r} "
                        f"({expected_length} bytes)",
                    )
        except Exception as e:
            return UploadBody(request, None, error=e)
        uploads = self.ctx.model.uploads

        async def open_existing() -> IUploadAppender:
            if d is not None:  # may go straight to the blob (``open_for_digest``)
                return await uploads.open_for_digest(name, upload_id, d, expect_start)
            return await uploads.open_appender(name, upload_id, expect_start)

        return UploadBody(request, open_existing, expected_length)

    async def GET(self, request: RegistryRequest, name: str, upload_id: str) -> None:
        check_upload_id(upload_id)
        request.log_fields.update(repository=name, upload=upload_id)
        offset = await self.ctx.model.uploads.status(name, upload_id)
        empty_response(request, 204, upload_headers(self.ctx, name, upload_id, offset))

    HEAD = GET

    async def PATCH(self, request: RegistryRequest, name: str, upload_id: str) -> None:
        request.log_fields.update(repository=name, upload=upload_id)
        offset = await self._body_outcome(request, name, upload_id)
        empty_response(request, 202, upload_headers(self.ctx, name, upload_id, offset))

    async def PUT(self, request: RegistryRequest, name: str, upload_id: str) -> None:
        request.log_fields.update(repository=name, upload=upload_id)
        committed: int | None = None
        if isinstance(request.body_sink, UploadBody):
            offset = await self._body_outcome(request, name, upload_id)
            if request.body_sink.committed:
                committed = offset
            d = Digest.parse(query_values(request)["digest"][0])
        else:
            # An empty body (``body_handling``): the checks its sink would
            # have made, then straight to the commit.
            self.ctx.check_writable()
            check_upload_id(upload_id)
            d = finish_digest(query_values(request))
        request.log_fields["digest"] = str(d)
        size = committed if committed is not None else await self.ctx.model.uploads.commit(name, upload_id, d)
        self.ctx.notify(request, "push", _blob_target(self.ctx, name, d, size))
        empty_response(request, 201, blob_created_headers(self.ctx, name, d))

    async def DELETE(self, request: RegistryRequest, name: str, upload_id: str) -> None:
        self.ctx.check_writable()
        check_upload_id(upload_id)
        request.log_fields.update(repository=name, upload=upload_id)
        await self.ctx.model.uploads.cancel(name, upload_id)
        empty_response(request, 204)

    async def _body_outcome(self, request: RegistryRequest, name: str, upload_id: str) -> int:
        """The new offset after the request body, or the error it met. A range
        error always tells the client where the upload really stands."""
        sink = request.body_sink
        if not isinstance(sink, UploadBody):
            raise RegistryError(errors.BLOB_UPLOAD_INVALID, "the request body could not be received")
        try:
            return await sink.outcome()
        except Exception as e:
            err = to_registry_error(e)
            if err.code is errors.RANGE_INVALID:
                if "Range" not in err.headers:
                    offset = await self.ctx.model.uploads.status(name, upload_id)
                    err.headers["Range"] = range_header(offset)
                err.headers.update({"Location": upload_location(self.ctx, name, upload_id), "Docker-Upload-UUID": upload_id})
            raise err from e


def finish_digest(query: dict[str, list[str]]) -> Digest:
    """The ``?digest=`` a PUT finishing an upload needs (DIGEST_INVALID without it)."""
    if "digest" not in query:
        raise RegistryError(errors.DIGEST_INVALID, "PUT to finish an upload needs ?digest=<algorithm>:<hex>")
    return Digest.parse(query["digest"][0])


def check_upload_id(upload_id: str) -> None:
    if not UPLOAD_ID_RE.match(upload_id):
        raise RegistryError(errors.BLOB_UPLOAD_INVALID, f"malformed upload id {upload_id[:100]!r}")
