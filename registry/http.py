"""HTTP plumbing under the resources: a Request that streams upload bodies
instead of spooling them, a channel that answers a TLS ClientHello on the
plain port, and the Site that ties them to the registry's root resource.

Twisted's ``Request`` spools the whole body (BytesIO, then a temp file)
before ``render`` runs. Here, once the headers are in, the channel hands the
request its request line and the request hands both to the Site's root
(``RegistryRoot.headers_received``), which routes the request -- once; the
match is kept on the request for ``render`` -- and says how the body is
received: a *body sink* for uploads (chunks go straight to it as they arrive,
and it pauses the transport while storage is behind; ``render`` runs when the
body is complete and reads the sink's outcome), a bounded buffer
(``LimitedBody``), or Twisted's default.
"""

from __future__ import annotations

import io
import time
from typing import IO, TYPE_CHECKING, Any, Protocol, Union, cast

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web import http, server

from registry.observe.requestid import REQUEST_ID_HEADER, choose_request_id

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from registry.resources.router import RegistryRoot, RouteMatch

# What a client that sends a TLS ClientHello to the plain port gets back
# (see CLIENTS.md: docker/skopeo/podman probe TLS first, then fall back).
TLS_PROBE_RESPONSE = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

# Bounds on what a request may send before its body (Twisted's defaults are
# 16 KiB per line and in all, and a line over the limit drops the connection
# without an answer).  A bearer token carrying an x5c chain is a few KiB.
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_LINE = 16 * 1024
MAX_HEADER_BLOCK = 32 * 1024
MAX_HEADER_COUNT = 200


def _refusal(status: bytes, message: str) -> bytes:
    body = (message + "\n").encode("ascii")
    return (
        b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )


#: Answers for requests whose line or headers exceed the bounds above.
URI_TOO_LONG_RESPONSE = _refusal(
    b"414 URI Too Long", f"the request line is longer than {MAX_REQUEST_LINE} bytes"
)
HEADERS_TOO_LARGE_RESPONSE = _refusal(
    b"431 Request Header Fields Too Large",
    f"the request headers exceed this registry's limits ({MAX_HEADER_LINE} bytes per line, "
    f"{MAX_HEADER_BLOCK} bytes and {MAX_HEADER_COUNT} fields in all)",
)


class RequestObserver(Protocol):
    """Hears about requests for metrics (``registry.observe.metrics``)."""

    def upload_started(self, request: RegistryRequest) -> None:
        """``request`` streams an upload body (until it finishes or is lost)."""

    def request_finished(self, request: RegistryRequest, duration_s: float) -> None:
        """``request`` was answered (called with its access-log line)."""


class BodySink(Protocol):
    """Receives a request body as it arrives (see ``registry.resources.uploads``)."""

    def data_received(self, data: bytes) -> None: ...

    def body_complete(self) -> None: ...

    def connection_lost(self, reason: Failure) -> None: ...


class LimitedBody:
    """Tells the request to buffer at most ``limit`` bytes of body; past that
    the rest is dropped and ``request.body_too_large`` is set. ``too_large``
    is the exception the handler's route answers with then (None: the
    router's default)."""

    def __init__(self, limit: int, too_large: Exception | None = None) -> None:
        self.limit = limit
        self.too_large = too_large


class DeferredBody:
    """The root cannot decide yet (an access check that needs I/O, such as a
    bcrypt comparison in a thread): ``decision`` fires with the real body
    handling, or fails with the error that refuses the request.  Meanwhile
    the request holds the body's first bytes, pausing the connection once
    ``PENDING_LIMIT`` bytes wait, and delays ``render`` until the decision;
    a refused request's body is dropped unread."""

    #: Body bytes held while the decision is pending, before the connection
    #: is paused.
    PENDING_LIMIT = 256 * 1024

    def __init__(self, decision: "Deferred[Any]") -> None:
        self.decision = decision


#: What the root decides for a request's body when its headers are in: a sink
#: to stream it into, a bounded buffer, None for Twisted's default, or a
#: decision still to come.
BodyHandling = Union[BodySink, LimitedBody, DeferredBody, None]


class RegistryRequest(server.Request):
    """A Request that can hand its body to a sink while it arrives."""

    # Twisted declares ``content = None`` bare; it holds the body file once
    # gotLength has run (ours below, or Twisted's).
    content: IO[bytes] | None = None  # type: ignore[assignment]  # Twisted infers None
    body_sink: BodySink | None = None
    body_limit: int | None = None
    body_too_large_error: Exception | None = None
    body_too_large = False
    _body_paused = False
    _body_done = False
    #: The timer ending a pause of ``pace_body`` (None: not paced).
    _paced: Any = None
    #: The pause the next small read of this body gets (``next_pace``).
    _pace_delay = 0.0
    #: True from the end of a pace until the read after it.
    _pace_ended = False
    #: Body pieces of the network read being decoded, given to the sink as
    #: one block when the read is done (``flush_body``): a chunked body of
    #: small chunks then costs one sink write per read, not one per chunk.
    _held: list[bytes] | None = None
    #: ``(method, target)`` of the request line, handed over by
    #: ``RegistryChannel`` when the headers are in (before the body).
    request_line: tuple[bytes, bytes] | None = None
    #: The Site's root resource, handed over with the request line.
    root: RegistryRoot | None = None
    #: The Site's request observer (metrics), handed over with the root.
    observer: RequestObserver | None = None
    #: Set by the root at headers time: the route this request goes to, or
    #: the error that stops it (unknown endpoint, invalid name, refused).
    #: ``render`` answers from these; it does not route again.
    route_match: RouteMatch | None = None
    route_error: Exception | None = None
    #: Who the access controller says made the request (None: no access
    #: control, or not decided).
    identity: Any = None
    #: False when access control refuses the mount source of an upload POST
    #: (the upload then starts without mounting).
    mount_allowed = True
    # While a DeferredBody is pending: the body bytes held, and the
    # requestReceived call that waits for the decision.
    _pending: list[bytes] | None = None
    _pending_size = 0
    _pending_received: tuple[bytes, bytes, bytes] | None = None
    _length: int | None = None
    #: This request's id (``registry.observe.requestid``), set when its
    #: headers are in; echoed in ``X-Request-Id`` and the access log.
    request_id = ""
    #: Body bytes received (for the bytes-received metric).
    received_bytes = 0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.started = time.monotonic()
        self.log_fields: dict[str, Any] = {}

    # -- body routing ------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        if self.root is None or self.request_line is None:
            super().gotLength(length)
            return
        command, target = self.request_line
        self._length = length
        self._apply(self.root.headers_received(self, command, target, length), length)

    def _apply(self, decision: BodyHandling, length: int | None) -> None:
        if isinstance(decision, DeferredBody):
            self._pending = []
            self.content = io.BytesIO()
            decision.decision.addCallbacks(self._decided, self._refused)
        elif isinstance(decision, LimitedBody):
            self.body_limit = decision.limit
            self.body_too_large_error = decision.too_large
            self.content = io.BytesIO()
            if length is not None and length > decision.limit:
                self.body_too_large = True
        elif decision is not None:
            self.body_sink = decision
            self.content = io.BytesIO()
            if self.observer is not None:
                self.observer.upload_started(self)
        else:
            super().gotLength(length)

    def _decided(self, decision: BodySink | LimitedBody | None) -> None:
        pending, self._pending = self._pending or [], None
        self._pending_size = 0
        if self._disconnected and self.body_sink is None:
            return
        self._apply(decision, self._length)
        for data in pending:
            self.handleContentChunk(data)
        self.resume_body()
        received, self._pending_received = self._pending_received, None
        if received is not None:
            self._body_done = False
            self.requestReceived(*received)

    def _refused(self, failure: Failure) -> None:
        self.route_error = failure.value
        self._decided(LimitedBody(0))

    def handleContentChunk(self, data: bytes) -> None:
        self.received_bytes += len(data)
        if self._pending is not None:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > DeferredBody.PENDING_LIMIT:
                self.pause_body()
            return
        if self.body_sink is not None:
            channel = self.channel
            if isinstance(channel, RegistryChannel) and channel.reading:
                if self._held is None:
                    self._held = [data]
                    channel.hold(self)
                else:
                    self._held.append(data)
                return
            self.body_sink.data_received(data)
        elif self.body_limit is not None:
            assert self.content is not None  # gotLength set a buffer with the limit
            if self.body_too_large or self.content.tell() + len(data) > self.body_limit:
                self.body_too_large = True
            else:
                self.content.write(data)
        else:
            super().handleContentChunk(data)

    def flush_body(self) -> None:
        """Give the sink the body pieces held during the current read."""
        held, self._held = self._held, None
        if held and self.body_sink is not None:
            self.body_sink.data_received(held[0] if len(held) == 1 else b"".join(held))

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self.flush_body()
        # No read happens while paced, so the body cannot end during a pace;
        # should it, Twisted now owns the connection's pausing.
        self._cancel_pace()
        self._body_done = True
        if self._pending is not None:
            # Rendered once the decision is in (see _decided).
            self._pending_received = (command, path, version)
            return
        if self.body_sink is not None:
            self.resume_body()
            self.body_sink.body_complete()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        self._cancel_pace()
        self.flush_body()
        if self.body_sink is not None and not self._body_done:
            self._body_done = True
            self.body_sink.connection_lost(reason)
        super().connectionLost(reason)

    def pause_body(self) -> None:
        """Stop reading the body from the network (storage is behind)."""
        if not self._body_paused and not self._body_done and self.channel is not None:
            self._body_paused = True
            if self._paced is None:
                self._producer().pauseProducing()

    def resume_body(self) -> None:
        if self._body_paused and self.channel is not None:
            self._body_paused = False
            if self._paced is None:
                self._producer().resumeProducing()

    def pace_body(self, delay: float) -> None:
        """Read nothing more of the body for ``delay`` seconds.

        A client that sends a large body slowly, in small writes (docker
        streams a layer as it compresses it, some 20 KiB at a time), would
        otherwise cost a wake-up, a trip through the HTTP parser, the sink
        and the hasher per write; paused a few milliseconds (``next_pace``
        says how many), the kernel gathers its writes in the socket buffer
        and one read takes them all.
        The sender is not slowed: the buffer holds what it sends meanwhile.
        Independent of ``pause_body``: the connection reads again only when
        neither holds it.
        """
        if self._paced is not None or self._body_done or self.channel is None or self._disconnected:
            return
        if not self._body_paused:
            self._producer().pauseProducing()
        self._paced = self.channel.callLater(delay, self._end_pace)

    def next_pace(self, nbytes: int) -> float:
        """The pause after a small read of ``nbytes`` body bytes.

        The first pause is ``PACE_DELAY``; each read that follows a pause
        tells how much the sender sent during it, and the next pause is
        scaled (by at most 2 either way) so that a read brings about
        ``PACE_TARGET`` bytes, within ``PACE_DELAY`` .. ``PACE_MAX``.  docker
        sends a layer at some 6 MB/s while it compresses it on a busy
        machine: 4 ms paces then give ~25 KiB reads, each costing a trip
        through the reactor, the parser, the sink and a pause/resume of the
        socket; ~25 ms paces give ~160 KiB reads for the same bytes.  A
        pause ends at most ``PACE_MAX`` after the body's last byte came.
        """
        delay = self._pace_delay or PACE_DELAY
        if self._pace_ended:
            self._pace_ended = False
            delay *= min(2.0, max(0.5, PACE_TARGET / max(nbytes, 1)))
            delay = min(PACE_MAX, max(PACE_DELAY, delay))
        self._pace_delay = delay
        return delay

    def full_read(self) -> None:
        """A read filled ``PACE_BELOW``: the sender is faster than the
        current pace needs, so the next pause starts shorter."""
        self._pace_ended = False
        if self._pace_delay:
            self._pace_delay = max(PACE_DELAY, self._pace_delay / 2)

    def _end_pace(self) -> None:
        self._paced = None
        self._pace_ended = True
        if not self._body_paused and not self._body_done and not self._disconnected and self.channel is not None:
            self._producer().resumeProducing()

    def _cancel_pace(self) -> None:
        paced, self._paced = self._paced, None
        if paced is not None and paced.active():
            paced.cancel()

    def _producer(self) -> IPushProducer:
        """The connection's transport, as the push producer of the body."""
        assert self.channel is not None
        transport = self.channel.transport
        assert transport is not None  # a channel with a live request is connected
        # ITransport does not say it; TCP, TLS and in-memory transports all are.
        return cast(IPushProducer, transport)

    # -- helpers -----------------------------------------------------------

    def assign_request_id(self) -> None:
        """Keep the client's well-formed ``X-Request-Id`` or make one; echo
        it in the response and the access log."""
        self.request_id = choose_request_id(self.getHeader(REQUEST_ID_HEADER))
        self.setHeader(REQUEST_ID_HEADER, self.request_id.encode("ascii"))
        self.log_fields["request_id"] = self.request_id

    @property
    def gone(self) -> bool:
        """True once the response was finished or the client went away."""
        return bool(self.finished or self._disconnected)

    def all_header_values(self, name: bytes) -> list[str]:
        """Every value of a header that may arrive as several lines (Accept),
        split on commas."""
        values: list[str] = []
        for raw in self.requestHeaders.getRawHeaders(name, []):
            for part in raw.decode("latin-1").split(","):
                part = part.strip()
                if part:
                    values.append(part)
        return values


#: A body read smaller than this, of a body streaming to a sink that has
#: already brought ``PACE_AFTER`` bytes, pauses reading for a while
#: (``RegistryRequest.pace_body``): ``PACE_DELAY`` seconds at first, then
#: adapted to the sender's pace so that a read brings about ``PACE_TARGET``
#: bytes, never longer than ``PACE_MAX`` (``RegistryRequest.next_pace``). A
#: sender faster than ``PACE_BELOW / PACE_DELAY`` (48 MiB/s) fills a read
#: within the first pause and is never paced twice in a row; a slower one is
#: read every pause with all it sent meanwhile (the kernel's receive-buffer
#: autotuning grows the socket's buffer as the reads grow). Small bodies
#: (manifests, small blobs) never pace.
PACE_BELOW = 192 * 1024
PACE_AFTER = 1024 * 1024
PACE_DELAY = 0.004
PACE_TARGET = 160 * 1024
PACE_MAX = 0.05


class RegistryChannel(http.HTTPChannel):
    """HTTP/1.1 channel that answers a TLS ClientHello with 400 and closes,
    and answers an over-long request line (414) or header block (431) before
    closing, where Twisted would drop the connection or answer a bare 400;
    hands each request its request line and the Site's root when its headers
    are in.

    Twisted's parser (``LineReceiver`` + ``HTTPChannel``) enforces
    ``MAX_LENGTH`` per line, ``totalHeadersSize`` and ``maxHeaders``; the
    checks here run first, with the same counters, so those limits are never
    reached (``tests/test_http_limits.py`` pins this)."""

    _first_bytes_seen = False
    #: True while a network read is being decoded (``dataReceived``).
    reading = False
    _holding: RegistryRequest | None = None
    #: Set by ``Site.buildProtocol`` (Twisted does not declare it).
    site: server.Site | None = None
    # Bytes per socket read: Twisted's default 64 KiB costs a trip through the
    # HTTP parser, the body sink, the hasher and the storage writer per 64 KiB
    # of upload. 1 MiB took 13 % off the registry's CPU per byte uploaded to
    # S3 against 256 KiB (reads are as large as what the socket holds).
    read_size = 1024 * 1024
    # Twisted's own limits sit just above ours, as a backstop.
    MAX_LENGTH = MAX_HEADER_LINE + 1
    totalHeadersSize = MAX_HEADER_BLOCK + 1
    maxHeaders = MAX_HEADER_COUNT + 1
    # Lines of the current request's head seen so far (0: the next line is
    # a request line).
    _head_lines = 0
    _head_bytes = 0
    # The connection's addresses, asked of the transport once (Twisted asks
    # for both per request; ``getHost`` is a getsockname system call).
    _host: Any = None
    _peer: Any = None

    def getHost(self) -> Any:
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def getPeer(self) -> Any:
        if self._peer is None:
            self._peer = super().getPeer()
        return self._peer

    def _refuse_head(self, response: bytes) -> None:
        assert self.transport is not None
        self.transport.write(response)
        self.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuse_head(URI_TOO_LONG_RESPONSE if self._head_lines == 0 else HEADERS_TOO_LARGE_RESPONSE)

    def lineReceived(self, line: bytes) -> None:
        if self._head_lines == 0:
            if not line:
                # The stray empty line some clients send between requests.
                super().lineReceived(line)
                return
            if len(line) > MAX_REQUEST_LINE:
                self._refuse_head(URI_TOO_LONG_RESPONSE)
                return
        elif line and (
            len(line) > MAX_HEADER_LINE
            or self._head_bytes + len(line) > MAX_HEADER_BLOCK
            or self._head_lines > MAX_HEADER_COUNT
        ):
            self._refuse_head(HEADERS_TOO_LARGE_RESPONSE)
            return
        if line:
            self._head_lines += 1
            self._head_bytes += len(line)
        else:
            # End of this request's head: the next line starts a new request.
            self._head_lines = 0
            self._head_bytes = 0
        super().lineReceived(line)

    def connectionMade(self) -> None:
        super().connectionMade()
        transport = self.transport
        if transport is not None and hasattr(transport, "bufferSize"):
            transport.bufferSize = self.read_size

    def dataReceived(self, data: bytes) -> None:
        if not self._first_bytes_seen and data:
            self._first_bytes_seen = True
            if data[:1] == b"\x16":
                assert self.transport is not None  # data arrives on a connection
                self.transport.write(TLS_PROBE_RESPONSE)
                self.transport.loseConnection()
                return
        self.reading = True
        try:
            super().dataReceived(data)
        finally:
            self.reading = False
            holder, self._holding = self._holding, None
            if holder is not None:
                holder.flush_body()
                if holder.received_bytes >= PACE_AFTER:
                    if len(data) < PACE_BELOW:
                        holder.pace_body(holder.next_pace(len(data)))
                    else:
                        holder.full_read()

    def hold(self, request: RegistryRequest) -> None:
        """``request`` holds body pieces until this read is decoded."""
        if self._holding is not None and self._holding is not request:
            self._holding.flush_body()
        self._holding = request

    def request_line(self) -> tuple[bytes, bytes]:
        """``(method, target)`` of the request whose headers are being read.

        Twisted keeps the request line in private attributes until the body
        is complete (then it calls ``requestReceived``); routing the body
        needs it when the headers are in.  This is the one place that reads
        them; ``tests/test_http_channel.py`` fails if a Twisted upgrade
        renames them.
        """
        try:
            command, target = self._command, self._path
        except AttributeError:
            raise RuntimeError(
                "twisted.web.http.HTTPChannel no longer keeps the request line in _command/_path "
                "while the headers are read; RegistryChannel.request_line must be adapted"
            ) from None
        if not isinstance(command, bytes) or not isinstance(target, bytes):
            raise RuntimeError("twisted.web.http.HTTPChannel's _command/_path are no longer bytes")
        return command, target

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = getattr(self, "_transferDecoder", None)
        if type(decoder) is http._ChunkedTransferDecoder:
            # The same decoder, delivering chunk data without copying it.
            self._transferDecoder = ChunkedBodyDecoder(decoder.dataCallback, decoder.finishCallback)
        return ok

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        site = self.site
        if isinstance(request, RegistryRequest) and isinstance(site, RegistrySite):
            request.request_line = self.request_line()
            request.root = site.root
            request.observer = site.observer
            request.assign_request_id()
        super().allHeadersReceived()


_HEX_DIGITS = b"0123456789abcdefABCDEF"
#: The longest chunk-size line read without Twisted's parser (16 hex digits
#: already exceed any body; Twisted's own limit is 1024).
_SIZE_LINE = 18


class ChunkedBodyDecoder(http._ChunkedTransferDecoder):
    """Twisted's decoder of a ``Transfer-Encoding: chunked`` body, without its
    copies of the body bytes and with one delivery per read: Twisted appends
    every read to a buffer and cuts each chunk's data back out of it (two or
    three copies of every byte), and calls ``dataCallback`` once per chunk,
    and docker's chunks are 32 KiB (Go's ``io.Copy``), so a trip through the
    body sink, the hasher and the storage writer per 32 KiB. Here Twisted's
    own parser reads the framing (a chunk-size line, the CRLF after the
    data, the trailer: its checks and limits unchanged) except the two
    common forms read here, a whole line of hex digits alone and a whole
    CRLF, which it would accept the same way; and the chunk data
    of one read goes to ``dataCallback`` at once: the read itself when it is
    all data of one chunk, else the pieces joined (one copy)."""

    def dataReceived(self, data: bytes) -> None:
        end = len(data)
        pos = 0
        view: memoryview | None = None
        pieces: list[memoryview] = []
        try:
            while pos < end:
                state = self.state
                if state == "BODY" and not self._buffer:
                    n = min(self.length, end - pos)
                    self.length -= n
                    if self.length == 0:
                        self.state = "CRLF"
                    if n == end:  # the whole read is data of one chunk: passed on as it is
                        self.dataCallback(data)
                        return
                    if view is None:
                        view = memoryview(data)
                    pieces.append(view[pos : pos + n])
                    pos += n
                    continue
                if state == "CRLF" and not self._buffer and data.startswith(b"\r\n", pos):
                    self.state = "CHUNK_LENGTH"  # the CRLF after a chunk's data, whole
                    pos += 2
                    continue
                if state == "CHUNK_LENGTH" and not self._buffer:
                    # A whole size line of hex digits alone (docker's, Go's):
                    # read here. Anything else (an extension, a line split
                    # across reads, a bad one) goes to Twisted's parser.
                    eol = data.find(b"\r\n", pos, pos + _SIZE_LINE)
                    if eol > pos and not data[pos:eol].translate(None, _HEX_DIGITS):
                        self.length = int(data[pos:eol], 16)
                        self.state = "BODY" if self.length else "TRAILER"
                        pos = eol + 2
                        continue
                if state == "CHUNK_LENGTH":
                    # Up to the end of the line: the parser then stops in BODY
                    # with nothing buffered, and the data that follows comes here.
                    lf = data.find(b"\n", pos)
                    stop = end if lf == -1 else lf + 1
                elif state == "CRLF":
                    stop = min(end, pos + 2 - len(self._buffer))
                else:  # the trailer and what follows the body: all to the parser
                    self._deliver(pieces)  # before the body's end is announced
                    stop = end
                super().dataReceived(data[pos:stop] if pos or stop != end else data)
                pos = stop
        finally:
            # Also when the framing is refused: what came before it was data.
            self._deliver(pieces)

    def _deliver(self, pieces: list[memoryview]) -> None:
        if pieces:
            joined = pieces[0].tobytes() if len(pieces) == 1 else b"".join(pieces)
            pieces.clear()
            self.dataCallback(joined)


class RegistrySite(server.Site):
    """Site using the streaming request and the TLS-probe-aware channel;
    logs one structured line per request through ``registry.logs``."""

    # Twisted types this as a factory of its HTTP/1.1-or-2 wrapper; a plain
    # HTTP/1.1 channel is what we build (buildProtocol just calls it).
    protocol = RegistryChannel  # type: ignore[assignment]
    requestFactory = RegistryRequest
    displayTracebacks = False
    noisy = False  # no "Starting factory" lines; the tap announces the listener

    def __init__(self, root: RegistryRoot, *args: Any, observer: RequestObserver | None = None, **kw: Any) -> None:
        super().__init__(root, *args, **kw)
        #: The registry's root resource, typed: requests route through it
        #: when their headers are in.
        self.root = root
        #: Told of uploads and finished requests (metrics); None: nobody.
        self.observer = observer
        #: False (``log.accesslog.disabled``): no access-log event is made
        #: at all (the observers would drop it anyway).
        self.access_log = True

    def log(self, request: http.Request) -> None:
        if not isinstance(request, RegistryRequest):
            # Only a subclass with another requestFactory gets here.
            super().log(request)
            return
        duration = time.monotonic() - request.started
        if self.access_log:
            from registry import logs

            logs.log_request(request, duration, request.log_fields)
        if self.observer is not None:
            self.observer.request_finished(request, duration)
