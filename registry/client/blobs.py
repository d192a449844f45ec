"""Blob transfer: streaming, verified downloads and resumable uploads.

Downloads are a producer/consumer pair: the response body goes chunk by
chunk to an ``IConsumer`` the caller supplies (a file, a storage writer),
which the download registers itself with as a streaming producer, so a
consumer that falls behind pauses the socket.  Every chunk is hashed with
the C core (:class:`registry.hashing.Sha256`) as it arrives; the digest and
size are checked at the end.  A connection that drops mid-body is resumed
with ``Range: bytes=<received>-`` (a server that answers ``200`` instead of
``206`` has the bytes already received skipped), so the consumer sees each
byte once.

Uploads read from an :class:`IBlobSource`, which can produce any byte range
again: small blobs go in one ``PUT ?digest=``, large ones as ``PATCH``
chunks with ``Content-Range``.  When a chunk fails (connection lost, 416,
5xx), the upload's status (``GET`` on its location) says how much the server
has (``Range: 0-<last>``) and the upload continues from there.  A
cross-repository mount (``POST ?mount=&from=``) is tried first when a source
repository is given; a registry that answers ``202`` instead of ``201``
started an ordinary upload, which is then used.
"""

from __future__ import annotations

import enum
import io
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit, parse_qsl

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.web.client import FileBodyProducer, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer, IResponse
from zope.interface import Attribute, Interface, implementer

from registry.client.errors import (
    BlobUploadUnknown,
    ClientError,
    DigestMismatch,
    ProtocolError,
    RangeInvalid,
    RegistryAPIError,
    TransportError,
    api_error,
)
from registry.client.transport import HTTPSession, read_limited
from registry.digest import Digest
from registry.hashing import Sha256

Progress = Callable[[int], None]
"""Called with the number of bytes just transferred."""


class IBlobSource(Interface):
    """Content to upload, readable again from any offset (for resumption)."""

    size = Attribute("Total number of bytes (int).")

    def producer(offset: int, length: int) -> IBodyProducer:
        """A fresh body producer of bytes ``[offset, offset + length)``."""


@implementer(IBlobSource)
class BytesSource:
    """A blob held in memory (manifests, configs, tests)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def producer(self, offset: int, length: int) -> IBodyProducer:
        return FileBodyProducer(io.BytesIO(self.data[offset : offset + length]))


@implementer(IBodyProducer)
class ThreadedFileProducer:
    """Bytes ``[offset, offset + length)`` of a file, read on a thread pool
    (the reactor never waits for the disk), ``read_size`` bytes at a time,
    honouring the HTTP client's pause/resume/stop."""

    def __init__(
        self, reactor: Any, threadpool: Any, path: Path, offset: int, length: int, read_size: int = 256 * 1024
    ) -> None:
        self.length = length
        self._reactor = reactor
        self._pool = threadpool
        self._path = path
        self._offset = offset
        self._read_size = read_size
        self._paused: Deferred[None] | None = None
        self._stopped = False

    def _in_thread(self, function: Any, *args: Any) -> Deferred[Any]:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        """Fires when every byte was written; never after ``stopProducing``."""
        done: Deferred[None] = Deferred()

        def finished(result: object) -> None:
            if self._stopped:
                return
            if isinstance(result, Failure):
                done.errback(result)
            else:
                done.callback(None)

        Deferred.fromCoroutine(self._produce(consumer)).addBoth(finished)
        return done

    async def _produce(self, consumer: IConsumer) -> None:
        handle: BinaryIO = await self._in_thread(_open_at, self._path, self._offset)
        try:
            remaining = self.length
            while remaining > 0 and not self._stopped:
                while self._paused is not None:
                    await self._paused
                if self._stopped:
                    break
                chunk: bytes = await self._in_thread(handle.read, min(self._read_size, remaining))
                if not chunk:
                    raise ClientError(f"{self._path} ended {remaining} bytes early")
                if self._stopped:
                    break
                consumer.write(chunk)
                remaining -= len(chunk)
        finally:
            await self._in_thread(handle.close)

    def pauseProducing(self) -> None:
        if self._paused is None:
            self._paused = Deferred()

    def resumeProducing(self) -> None:
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.callback(None)

    def stopProducing(self) -> None:
        self._stopped = True
        self.resumeProducing()


def _open_at(path: Path, offset: int) -> BinaryIO:
    handle = open(path, "rb")
    handle.seek(offset)
    return handle


@implementer(IBlobSource)
class FileSource:
    """A blob in a local file (an OCI layout's ``blobs/sha256/<hex>``), read
    on a thread pool (default: the reactor's)."""

    def __init__(self, path: Path, size: int | None = None, *, reactor: Any = None, threadpool: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.path = path
        self.size = path.stat().st_size if size is None else size
        self._reactor = reactor
        self._pool = threadpool if threadpool is not None else reactor.getThreadPool()

    def producer(self, offset: int, length: int) -> IBodyProducer:
        return ThreadedFileProducer(self._reactor, self._pool, self.path, offset, length)


# ---------------------------------------------------------------- downloads


class _Receiver(Protocol):
    """Receives one response body for a :class:`BlobStream`."""

    def __init__(self, stream: "BlobStream") -> None:
        self._stream = stream
        self.finished: Deferred[None] = Deferred()
        self.reason: Failure | None = None

    def connectionMade(self) -> None:
        self._stream._attach(self.transport)

    def dataReceived(self, data: bytes) -> None:
        self._stream._data(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        self._stream._detach()
        self.reason = reason
        self.finished.callback(None)


@implementer(IPushProducer)
class BlobStream:
    """Hashes and forwards body bytes to ``consumer``; the consumer's producer.

    Across resumed responses it stays registered with the consumer and
    forwards pause/resume/stop to whichever response transport is current.
    """

    def __init__(
        self,
        consumer: IConsumer,
        size: int | None,
        progress: Progress | None,
        clock: Any = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.consumer = consumer
        self._clock = clock
        self._idle_timeout = idle_timeout
        self._idle_call: Any = None
        self.stalls = 0
        self.size = size
        self.progress = progress
        self.hasher = Sha256()
        self.received = 0
        self.skip = 0
        self.error: ClientError | None = None
        self.stopped = False
        self._transport: Any = None
        self._paused = False

    # A body that stops arriving (a stalled connection, not a paused one)
    # is cut after idle_timeout seconds, so the download resumes.
    def _arm(self) -> None:
        self._disarm()
        if self._clock is not None and self._idle_timeout and self._transport is not None and not self._paused:
            self._idle_call = self._clock.callLater(self._idle_timeout, self._stalled)

    def _disarm(self) -> None:
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.cancel()
        self._idle_call = None

    def _stalled(self) -> None:
        self._idle_call = None
        self.stalls += 1
        if self._transport is not None:
            self._transport.stopProducing()

    # IPushProducer, called by the consumer
    def pauseProducing(self) -> None:
        self._paused = True
        self._disarm()
        if self._transport is not None:
            self._transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self._transport is not None:
            self._transport.resumeProducing()
        self._arm()

    def stopProducing(self) -> None:
        self.stopped = True
        self._disarm()
        if self._transport is not None:
            self._transport.stopProducing()

    # from the receiver
    def _attach(self, transport: Any) -> None:
        self._transport = transport
        if self._paused:
            transport.pauseProducing()
        self._arm()

    def _detach(self) -> None:
        self._disarm()
        self._transport = None

    def _data(self, data: bytes) -> None:
        if self.error is not None or self.stopped:
            return
        self._arm()
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if not data:
                return
        if self.size is not None and self.received + len(data) > self.size:
            self.error = DigestMismatch(
                f"the registry sent more than the expected {self.size} bytes"
            )
            if self._transport is not None:
                self._transport.stopProducing()
            return
        self.hasher.update(data)
        self.received += len(data)
        self.consumer.write(data)
        if self.progress is not None:
            self.progress(len(data))

    async def receive(self, response: IResponse) -> Failure:
        """Deliver ``response``'s body here; fires with the reason it ended."""
        receiver = _Receiver(self)
        response.deliverBody(receiver)
        await receiver.finished
        assert receiver.reason is not None
        return receiver.reason


_CONTENT_RANGE_RE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")


async def download_blob(
    session: HTTPSession,
    url: str,
    digest: Digest,
    consumer: IConsumer,
    *,
    scopes: tuple[str, ...],
    size: int | None = None,
    progress: Progress | None = None,
    max_resumes: int = 5,
    idle_timeout: float | None = 60.0,
) -> int:
    """Stream the blob at ``url`` into ``consumer``, verifying it; fires with its size.

    Fails with :class:`DigestMismatch` when the bytes do not hash to
    ``digest`` (or differ from ``size``), :class:`RegistryAPIError` (e.g.
    :class:`BlobUnknown`) for an error answer, :class:`TransportError` when
    the connection keeps failing.  A body that stalls for ``idle_timeout``
    seconds (while the consumer is not pausing it) counts as a dropped
    connection.  The consumer has then received a prefix
    of the content: it must discard what it got (a file sink writes to a
    temporary name).
    """
    stream = BlobStream(consumer, size, progress, session.reactor, idle_timeout)
    consumer.registerProducer(stream, True)
    try:
        response = await session.request("GET", url, scopes=scopes)
        resumes = 0
        while True:
            await _check_download_response(response, stream, url)
            reason = await stream.receive(response)
            if stream.error is not None:
                raise stream.error
            if stream.stopped:
                raise ClientError(f"download of {digest} was stopped by its consumer")
            clean = reason.check(ResponseDone, PotentialDataLoss) is not None
            if clean and (stream.size is None or stream.received == stream.size):
                break
            if resumes >= max_resumes:
                why = "ended early" if clean else f"failed: {reason.getErrorMessage()}"
                raise TransportError(
                    f"GET {url}: the connection {why} after {stream.received} bytes, {resumes} resumes"
                )
            resumes += 1
            await session.sleep(session.retry.delay(resumes - 1))
            response = await session.request(
                "GET", url, scopes=scopes, headers={"Range": f"bytes={stream.received}-"}
            )
    finally:
        consumer.unregisterProducer()
    if stream.size is not None and stream.received != stream.size:
        raise DigestMismatch(f"blob {digest}: received {stream.received} bytes, expected {stream.size}")
    actual = Digest("sha256", stream.hasher.hexdigest())
    if actual != digest:
        raise DigestMismatch(f"blob {digest}: the registry sent content with digest {actual}")
    return stream.received


async def _check_download_response(response: IResponse, stream: BlobStream, url: str) -> None:
    if response.code == 200:
        if stream.received:
            stream.skip = stream.received  # no Range support: skip what we have
        length = response.length
        if length is not UNKNOWN_LENGTH and isinstance(length, int):
            if stream.size is None:
                stream.size = length
            elif length != stream.size:
                await read_limited(response, 0)
                raise DigestMismatch(f"GET {url}: the registry has {length} bytes, expected {stream.size}")
        return
    if response.code == 206 and stream.received:
        values = response.headers.getRawHeaders("content-range", [])
        match = _CONTENT_RANGE_RE.match(values[0].strip()) if values else None
        if match is None:
            raise ProtocolError(f"GET {url}: 206 without a valid Content-Range ({values})")
        start = int(match.group(1))
        if start > stream.received:
            raise ProtocolError(f"GET {url}: asked for bytes from {stream.received}, got a range from {start}")
        stream.skip = stream.received - start
        return
    body = await read_limited(response)
    raise api_error(response.code, body, f"GET {url}")


# ---------------------------------------------------------------- uploads


class UploadOutcome(enum.Enum):
    """What :func:`upload_blob` did."""

    EXISTS = "exists"  # the repository had the blob already
    MOUNTED = "mounted"  # cross-repository mount
    UPLOADED = "uploaded"


@dataclass(frozen=True)
class UploadSettings:
    """Sizes for :func:`upload_blob`: blobs up to ``monolithic_max`` go in one
    PUT, larger ones in ``chunk_size`` PATCHes; ``max_resumes`` failures are
    resumed before giving up."""

    monolithic_max: int = 16 * 1024 * 1024
    chunk_size: int = 16 * 1024 * 1024
    max_resumes: int = 5


def with_query(url: str, **params: str) -> str:
    """``url`` with ``params`` added to its query (a Location may carry its own). Pure."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _location(response: IResponse, base: str) -> str:
    values = response.headers.getRawHeaders("location", [])
    if not values:
        raise ProtocolError(f"the registry answered {response.code} without a Location header")
    return urljoin(base, values[0])


def parse_upload_range(value: str | None) -> int:
    """Bytes the server has, from an upload's ``Range: 0-<last>`` header. Pure.

    No header means none. ``0-0`` is ambiguous in Distribution (it says so
    for 0 and for 1 byte); it is read as 0, and a 416 then restarts.
    """
    if not value:
        return 0
    match = re.match(r"^(?:bytes=)?0-(\d+)$", value.strip())
    if match is None:
        raise ProtocolError(f"upload status has an invalid Range header {value!r}")
    last = int(match.group(1))
    return 0 if last == 0 else last + 1


async def upload_blob(
    session: HTTPSession,
    repository_url: str,
    digest: Digest,
    source: IBlobSource,
    *,
    scopes: tuple[str, ...],
    mount_from: str | None = None,
    settings: UploadSettings = UploadSettings(),
    progress: Progress | None = None,
) -> UploadOutcome:
    """Upload ``source`` as ``digest`` to the repository at ``repository_url``
    (``.../v2/<name>``); see the module docstring. Does not check existence.

    Fails with :class:`RegistryAPIError` (e.g. :class:`DigestInvalid` when the
    content does not match) or :class:`TransportError` after ``max_resumes``.
    """
    uploads = repository_url + "/blobs/uploads/"
    size: int = source.size
    if mount_from is not None:
        response = await session.request(
            "POST", with_query(uploads, mount=str(digest), **{"from": mount_from}), scopes=scopes
        )
        if response.code == 201:
            await read_limited(response)
            return UploadOutcome.MOUNTED
        if response.code != 202:
            raise api_error(response.code, await read_limited(response), f"mount {digest} from {mount_from}")
        location = _location(response, uploads)
        await read_limited(response)
    else:
        location = await _start_upload(session, uploads, scopes)

    offset = 0
    failures = 0
    while True:
        try:
            if offset == 0 and failures == 0 and size <= settings.monolithic_max:
                await _put(session, location, digest, source, 0, size, scopes)
                if progress is not None:
                    progress(size)
                return UploadOutcome.UPLOADED
            while offset < size:
                length = min(settings.chunk_size, size - offset)
                location = await _patch(session, location, source, offset, length, scopes)
                offset += length
                if progress is not None:
                    progress(length)
            await _put(session, location, digest, source, size, 0, scopes)
            return UploadOutcome.UPLOADED
        except (TransportError, RangeInvalid, RegistryAPIError) as error:
            retryable = isinstance(error, (TransportError, RangeInvalid)) or (
                isinstance(error, RegistryAPIError) and error.status >= 500
            )
            if not retryable or failures >= settings.max_resumes:
                raise
            failures += 1
            await session.sleep(session.retry.delay(failures - 1))
            if await _blob_exists(session, repository_url, digest, scopes):
                # The answer was lost, not the upload (e.g. the final PUT's 201).
                if progress is not None and size > offset:
                    progress(size - offset)
                return UploadOutcome.UPLOADED
            previous = offset
            location, offset = await _upload_status(session, location, uploads, scopes, error)
            if offset > size:
                raise ProtocolError(f"upload of {digest}: the server claims {offset} bytes of {size}")
            if progress is not None and offset != previous:
                progress(offset - previous)


async def _blob_exists(session: HTTPSession, repository_url: str, digest: Digest, scopes: tuple[str, ...]) -> bool:
    response = await session.request("HEAD", f"{repository_url}/blobs/{digest}", scopes=scopes)
    await read_limited(response, 0)
    return response.code == 200


async def _start_upload(session: HTTPSession, uploads: str, scopes: tuple[str, ...]) -> str:
    response = await session.request("POST", uploads, scopes=scopes)
    if response.code != 202:
        raise api_error(response.code, await read_limited(response), f"POST {uploads}")
    await read_limited(response)
    return _location(response, uploads)


async def _put(
    session: HTTPSession, location: str, digest: Digest, source: IBlobSource,
    offset: int, length: int, scopes: tuple[str, ...],
) -> None:
    url = with_query(location, digest=str(digest))
    response = await session.request(
        "PUT",
        url,
        scopes=scopes,
        headers={"Content-Type": "application/octet-stream"},
        body=lambda: source.producer(offset, length) if length else b"",
        idempotent=False,
        redirects=False,
    )
    body = await read_limited(response)
    if response.code != 201:
        raise api_error(response.code, body, f"PUT upload of {digest}")


async def _patch(
    session: HTTPSession, location: str, source: IBlobSource, offset: int, length: int, scopes: tuple[str, ...]
) -> str:
    response = await session.request(
        "PATCH",
        location,
        scopes=scopes,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{offset}-{offset + length - 1}",
        },
        body=lambda: source.producer(offset, length),
        idempotent=False,
        redirects=False,
    )
    body = await read_limited(response)
    if response.code != 202:
        raise api_error(response.code, body, f"PATCH upload bytes {offset}-{offset + length - 1}")
    server_has = parse_upload_range((response.headers.getRawHeaders("range") or [None])[0])
    if response.headers.hasHeader("range") and server_has not in (0, offset + length):
        raise ProtocolError(f"after PATCH of bytes up to {offset + length} the server says it has {server_has}")
    return _location(response, location)


async def _upload_status(
    session: HTTPSession, location: str, uploads: str, scopes: tuple[str, ...], cause: Exception
) -> tuple[str, int]:
    """``(location, offset)`` to continue from after ``cause``; a new upload
    when the old one is unknown or its position cannot be trusted."""
    if not isinstance(cause, RangeInvalid):
        response = await session.request("GET", location, scopes=scopes)
        body = await read_limited(response)
        if response.code == 204:
            offset = parse_upload_range((response.headers.getRawHeaders("range") or [None])[0])
            new_location = (
                _location(response, location) if response.headers.hasHeader("location") else location
            )
            return new_location, offset
        error = api_error(response.code, body, "upload status")
        if not isinstance(error, BlobUploadUnknown) and response.code != 404:
            raise error
    return await _start_upload(session, uploads, scopes), 0
