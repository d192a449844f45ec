"""``GET|HEAD|DELETE /v2/<name>/blobs/<digest>``: blobs streamed from the
driver with backpressure, single-range requests, redirects where the driver
can sign a URL."""

from __future__ import annotations

import re

from twisted.internet.defer import Deferred
from zope.interface import implementer
from twisted.internet.interfaces import IPushProducer

from registry import errors
from registry.digest import Digest
from registry.errors import RegistryError
from registry.http import RegistryRequest
from registry.resources.base import empty_response
from registry.resources.context import Context
from registry.sendfile import PausableProducer, SendfileProducer, zero_copy_transport
from registry.storage.driver import IFileReader, IZeroCopyReader
from registry.transport import widen_sends

READ_CHUNK = 1 << 20  # drivers read 1 MiB pieces; smaller reads cost a Deferred each
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(ValueError):
    pass


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range ``(start, end)`` a ``Range`` header asks of an
    object of ``size`` bytes, or None to send it whole (no header, another
    unit, or several ranges — which a server may ignore).

    Raises ``RangeNotSatisfiable`` for a syntactically valid single range
    that selects nothing, ``ValueError`` for a malformed one."""
    if header is None:
        return None
    header = header.strip()
    if not header.startswith("bytes="):
        return None
    if "," in header:
        return None
    m = _RANGE_RE.match(header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        raise ValueError(f"malformed Range {header[:100]!r}")
    first, last = m.group(1), m.group(2)
    if first == "":
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable(header)
        return max(size - suffix, 0), size - 1
    start = int(first)
    if last != "" and int(last) < start:
        raise ValueError(f"malformed Range {header[:100]!r}: the end is before the start")
    if start >= size:
        raise RangeNotSatisfiable(header)
    end = int(last) if last != "" else size - 1
    return start, min(end, size - 1)


@implementer(IPushProducer)
class ReaderProducer(PausableProducer):
    """Copies ``length`` bytes from a driver reader to a request, pausing
    while the transport is full. ``run()`` fires when done; the caller
    closes the reader. (Readers that can ``send_to`` a socket go through
    ``registry.sendfile.SendfileProducer`` instead, where the transport
    allows it.)"""

    def __init__(self, request: RegistryRequest, reader: IFileReader, length: int) -> None:
        self.request = request
        self.reader = reader
        self.remaining = length
        super().__init__()

    async def run(self) -> None:
        widen_sends(self.request.channel.transport if self.request.channel is not None else None)
        self.request.registerProducer(self, True)
        try:
            while self.remaining > 0 and not self._stopped:
                if self._paused:
                    self._resume = Deferred()
                    await self._resume
                    continue
                chunk = await self.reader.read(min(READ_CHUNK, self.remaining))
                if not chunk:
                    raise RegistryError(errors.UNKNOWN, "blob is shorter than its recorded size")
                if self._stopped or self.request.gone:
                    break
                self.remaining -= len(chunk)
                self.request.write(chunk)
        finally:
            if not self.request.gone:
                self.request.unregisterProducer()


class BlobResource:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def GET(self, request: RegistryRequest, name: str, digest: str) -> None:
        d = Digest.parse(digest)
        request.log_fields.update(repository=name, digest=str(d))
        size = await self.ctx.model.blobs.repo_size(name, d)
        etag = f'"{d}"'
        request.setHeader(b"Docker-Content-Digest", str(d).encode())
        request.setHeader(b"ETag", etag.encode())
        request.setHeader(b"Accept-Ranges", b"bytes")
        request.setHeader(b"Cache-Control", b"max-age=31536000")
        inm = request.getHeader(b"if-none-match")
        if inm is not None and etag in [v.strip() for v in inm.decode("latin-1").split(",")]:
            empty_response(request, 304)
            return
        raw_range = request.getHeader(b"range")
        try:
            rng = parse_range(raw_range.decode("latin-1") if raw_range else None, size)
        except RangeNotSatisfiable:
            raise RegistryError(
                errors.RANGE_INVALID,
                f"Range {raw_range!r} selects nothing of this {size}-byte blob",
                headers={"Content-Range": f"bytes */{size}"},
            ) from None
        except ValueError as e:
            raise RegistryError(errors.RANGE_INVALID, str(e), headers={"Content-Range": f"bytes */{size}"}) from None
        # A HEAD is a pull too, as in Distribution's events.
        self.ctx.notify(request, "pull", _blob_target(self.ctx, name, d, size))
        # HEAD is answered here (never redirected: a round trip for nothing);
        # so are ranged GETs, and everything when storage.redirect.disable.
        if request.method == b"GET" and rng is None and self.ctx.redirect:
            url = await self.ctx.model.blobs.redirect_url(d)
            if url:
                empty_response(request, 307, {"Location": url})
                return
        start, end = rng if rng is not None else (0, size - 1)
        length = end - start + 1 if size else 0
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", str(length).encode())
        if rng is not None:
            request.setResponseCode(206)
            request.setHeader(b"Content-Range", f"bytes {start}-{end}/{size}".encode())
        if request.method == b"HEAD" or length == 0:
            return
        reader = await self.ctx.model.blobs.open(d, start)
        try:
            sender = IZeroCopyReader(reader, None)
            transport = zero_copy_transport(request) if sender is not None else None
            if sender is not None and transport is not None:
                await SendfileProducer(request, transport, sender, start, length).run()
            else:
                await ReaderProducer(request, reader, length).run()
        finally:
            await reader.close()

    HEAD = GET

    async def DELETE(self, request: RegistryRequest, name: str, digest: str) -> None:
        self.ctx.check_delete()
        d = Digest.parse(digest)
        request.log_fields.update(repository=name, digest=str(d))
        await self.ctx.model.blobs.descriptors.unlink(name, d)
        self.ctx.notify(request, "delete", {"digest": str(d), "repository": name})
        empty_response(request, 202, {"Docker-Content-Digest": str(d)})


def _blob_target(ctx: Context, name: str, d: Digest, size: int, **extra: str) -> dict[str, object]:
    from registry.observe.notifications import blob_target

    return blob_target(name, str(d), size, ctx.url(f"/v2/{name}/blobs/{d}"), **extra)
