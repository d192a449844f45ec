"""RegistryChannel hands each request its request line and the root when the
headers are in, reading Twisted's private ``_command``/``_path``: these tests
fail loudly if a Twisted upgrade changes that, instead of uploads silently
losing their streaming body handling."""

from __future__ import annotations

import hashlib

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from registry import errors
from registry.errors import RegistryError

from registry.app import make_root
from registry.http import (
    PACE_AFTER, PACE_BELOW, PACE_DELAY, PACE_MAX, PACE_TARGET, BodyHandling, RegistryChannel, RegistryRequest, RegistrySite,
)
from registry.resources.router import RegistryRoot, RouteMatch
from registry.storage.factory import create_driver


class RecordingRoot(RegistryRoot):
    """The real root, remembering what it was handed at headers time."""

    def __init__(self) -> None:
        real = make_root(create_driver("inmemory", {}))
        super().__init__(real.routes, real.extra_headers)
        self.seen: list[tuple[bytes, bytes, int | None, RouteMatch | None]] = []

    def headers_received(self, request: RegistryRequest, method: bytes, target: bytes, length: int | None) -> BodyHandling:
        decision = super().headers_received(request, method, target, length)
        self.seen.append((method, target, length, request.route_match))
        return decision


def test_request_line_reaches_the_root_before_the_body() -> None:
    root = RecordingRoot()
    site = RegistrySite(root)
    channel = site.buildProtocol(None)
    assert isinstance(channel, RegistryChannel)
    channel.makeConnection(StringTransport())
    channel.dataReceived(
        b"PATCH /v2/a/b/blobs/uploads/0123456789abcdef0123456789abcdef?x=1 HTTP/1.1\r\n"
        b"Host: x\r\nContent-Length: 10\r\n\r\n"
    )
    # The headers are in, the body is not: the root has routed the request.
    assert len(root.seen) == 1
    method, target, length, match = root.seen[0]
    assert (method, target, length) == (b"PATCH", b"/v2/a/b/blobs/uploads/0123456789abcdef0123456789abcdef?x=1", 10)
    assert match is not None and match.route.name == "upload"
    assert match.params == {"name": "a/b", "upload_id": "0123456789abcdef0123456789abcdef"}
    assert match.query == {"x": ["1"]}
    request = channel.requests[-1]
    assert isinstance(request, RegistryRequest) and request.root is root
    channel.connectionLost(Exception("done"))


def test_request_line_names_twisteds_private_attributes() -> None:
    channel = RegistryChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\n")
    assert channel.request_line() == (b"GET", b"/v2/")
    del channel._command
    with pytest.raises(RuntimeError, match="_command/_path"):
        channel.request_line()


def test_unknown_endpoint_is_answered_from_the_stored_route_error() -> None:
    root = RecordingRoot()
    transport = StringTransport()
    channel = RegistrySite(root).buildProtocol(None)
    channel.makeConnection(transport)
    channel.dataReceived(b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert root.seen and root.seen[0][3] is None
    assert transport.value().startswith(b"HTTP/1.1 404 ")
    assert b"UNSUPPORTED" in transport.value()
    channel.connectionLost(Exception("done"))


class RefusingRoot(RegistryRoot):
    """The real root with a ``before_body`` that refuses pushes to ``locked/*``
    (the way authorisation will plug in), counting how often it ran."""

    def __init__(self) -> None:
        self.driver = create_driver("inmemory", {})
        real = make_root(self.driver)
        super().__init__(real.routes, real.extra_headers)
        self.calls = 0

    def before_body(self, request: RegistryRequest, match: RouteMatch, length: int | None) -> BodyHandling:
        self.calls += 1
        if (match.repository or "").startswith("locked/") and match.method != b"GET":
            raise RegistryError(errors.DENIED, f"pushes to {match.repository} are refused", status=403)
        return super().before_body(request, match, length)


@pytest_twisted.ensureDeferred
async def test_before_body_refuses_a_push_before_its_body_is_stored() -> None:
    root = RefusingRoot()
    port = reactor.listenTCP(0, RegistrySite(root), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}"
    try:
        data = b"x" * 100_000
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        r = await treq.post(f"{url}/v2/locked/app/blobs/uploads/?digest={digest}", data=data)
        assert r.code == 403
        assert (await r.json())["errors"][0]["code"] == "DENIED"
        assert root.calls == 1  # routed and checked once, at headers time
        assert [info.path for info in await root.driver.walk("/") if not info.is_dir] == []
        r = await treq.post(f"{url}/v2/open/app/blobs/uploads/?digest={digest}", data=data)
        assert r.code == 201, await r.text()
        assert root.calls == 2
    finally:
        await port.stopListening()


class RecordingSink:
    """A body sink that records what it is given, in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, bytes]] = []

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def body_complete(self) -> None:
        self.events.append(("complete", b""))

    def connection_lost(self, reason: object) -> None:
        self.events.append(("lost", b""))


class SinkRoot(RegistryRoot):
    def __init__(self, sink: RecordingSink) -> None:
        real = make_root(create_driver("inmemory", {}))
        super().__init__(real.routes, real.extra_headers)
        self.sink = sink

    def headers_received(self, request: RegistryRequest, method: bytes, target: bytes, length: int | None) -> BodyHandling:
        super().headers_received(request, method, target, length)
        return self.sink


def chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)


@pytest.mark.parametrize("end_in_same_read", [False, True])
def test_small_chunks_of_one_read_reach_the_sink_as_one_block(end_in_same_read: bool) -> None:
    """A chunked body of tiny chunks costs one sink write per network read:
    the pieces decoded from a read are joined, in order, before the body's
    end (or the connection's loss) is reported."""
    sink = RecordingSink()
    channel = RegistrySite(SinkRoot(sink)).buildProtocol(None)
    assert isinstance(channel, RegistryChannel)
    channel.makeConnection(StringTransport())
    first = [bytes([i]) * 7 for i in range(100)]
    second = [bytes([i]) * 5 for i in range(50)]
    channel.dataReceived(
        b"PATCH /v2/a/b/blobs/uploads/0123456789abcdef0123456789abcdef HTTP/1.1\r\n"
        b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(first)
    )
    assert sink.events == [("data", b"".join(first))]
    if end_in_same_read:
        channel.dataReceived(chunked(second) + b"0\r\n\r\n")
        assert sink.events[1:] == [("data", b"".join(second)), ("complete", b"")]
    else:
        channel.dataReceived(chunked(second))
        assert sink.events[1:] == [("data", b"".join(second))]
        channel.connectionLost(Exception("gone"))
        assert sink.events[2:] == [("lost", b"")]


def _paces(clock: Clock) -> list[object]:
    """The pending ends of ``pace_body`` pauses (the idle timeout is on the clock too)."""
    return [c for c in clock.getDelayedCalls() if c.active() and getattr(c.func, "__name__", "") == "_end_pace"]


def _streaming_channel() -> tuple[RegistryChannel, StringTransport, Clock, RecordingSink]:
    """A channel streaming a chunked PATCH into a sink, ``PACE_AFTER`` bytes in."""
    channel, transport, clock, sink = _patch_started()
    channel.dataReceived(chunked([b"x" * (PACE_AFTER - 1)]))
    assert transport.producerState == "producing"  # one byte short: not paced yet
    return channel, transport, clock, sink


def _patch_started() -> tuple[RegistryChannel, StringTransport, Clock, RecordingSink]:
    """A channel on a test clock whose chunked PATCH's head is in."""
    sink = RecordingSink()
    channel = RegistrySite(SinkRoot(sink)).buildProtocol(None)
    assert isinstance(channel, RegistryChannel)
    clock = Clock()
    channel.callLater = clock.callLater  # type: ignore[method-assign]
    transport = StringTransport()
    channel.makeConnection(transport)
    channel.dataReceived(
        b"PATCH /v2/a/b/blobs/uploads/0123456789abcdef0123456789abcdef HTTP/1.1\r\n"
        b"Host: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    return channel, transport, clock, sink


def test_a_large_body_arriving_in_small_reads_is_read_in_paces() -> None:
    """Once a streamed body is large, a small read stops reading for
    ``PACE_DELAY`` so the next read takes what the client sent meanwhile;
    a full read does not pace, and the pause ends by itself."""
    channel, transport, clock, sink = _streaming_channel()
    channel.dataReceived(chunked([b"y" * 100]))
    assert transport.producerState == "paused"
    clock.advance(PACE_DELAY * 0.9)
    assert transport.producerState == "paused"
    clock.advance(PACE_DELAY * 0.2)
    assert transport.producerState == "producing" and not _paces(clock)
    channel.dataReceived(chunked([b"z" * PACE_BELOW]))  # a full read: no pause
    assert transport.producerState == "producing" and not _paces(clock)
    channel.dataReceived(chunked([b"w" * 10]) + b"0\r\n\r\n")  # the end: nothing to pace
    assert not _paces(clock)
    assert [e for e, _ in sink.events][-1] == "complete"
    assert sum(len(d) for e, d in sink.events if e == "data") == PACE_AFTER - 1 + 100 + PACE_BELOW + 10


def _pace_length(clock: Clock) -> float:
    (pace,) = _paces(clock)
    return round(float(pace.getTime() - clock.seconds()), 4)  # type: ignore[attr-defined]


def test_a_slow_senders_paces_grow_until_a_read_brings_the_target() -> None:
    """Each read after a pause tells how much the sender sent during it: the
    next pause doubles at most while reads bring less than ``PACE_TARGET``
    (docker's ~25 KiB per 4 ms), never past ``PACE_MAX``; a read of about
    the target keeps the pause; a full read (a faster sender) halves it."""
    channel, transport, clock, sink = _streaming_channel()
    channel.dataReceived(chunked([b"y" * 100]))
    assert _pace_length(clock) == pytest.approx(PACE_DELAY)
    lengths = []
    for _ in range(8):
        clock.advance(_pace_length(clock))
        assert transport.producerState == "producing"
        channel.dataReceived(chunked([b"y" * (PACE_TARGET // 8)]))
        lengths.append(_pace_length(clock))
    assert lengths[0] == pytest.approx(2 * PACE_DELAY)
    assert all(b >= a - 1e-9 for a, b in zip(lengths, lengths[1:]))
    assert lengths[-1] == pytest.approx(PACE_MAX)
    # A read of the target's size after a pause: the pause stays.
    clock.advance(_pace_length(clock))
    channel.dataReceived(chunked([b"t" * PACE_TARGET]))
    assert _pace_length(clock) == pytest.approx(PACE_MAX)
    # A small read that did not follow a pause (nothing to learn from) neither.
    request = channel.requests[-1]
    assert isinstance(request, RegistryRequest)
    assert request.next_pace(10) == pytest.approx(PACE_MAX, rel=1e-3)
    # A full read: no pause, and the next one is half as long.
    clock.advance(_pace_length(clock))
    channel.dataReceived(chunked([b"z" * PACE_BELOW]))
    assert transport.producerState == "producing" and not _paces(clock)
    channel.dataReceived(chunked([b"w" * 10]))
    assert _pace_length(clock) == pytest.approx(PACE_MAX / 2)
    # Never shorter than the first pause, however much a read brings.
    clock.advance(_pace_length(clock))
    for _ in range(8):
        channel.dataReceived(chunked([b"z" * PACE_BELOW]))
    channel.dataReceived(chunked([b"w" * 10]))
    assert _pace_length(clock) == pytest.approx(PACE_DELAY)
    clock.advance(PACE_DELAY)
    channel.dataReceived(b"0\r\n\r\n")
    assert [e for e, _ in sink.events][-1] == "complete"


def test_a_small_body_is_never_paced() -> None:
    channel, transport, clock, _ = _patch_started()
    for _ in range(50):
        channel.dataReceived(chunked([b"s" * 1000]))
        assert transport.producerState == "producing" and not _paces(clock)


def test_storage_backpressure_outlasts_a_pace() -> None:
    """A pause asked by the sink (storage behind) while paced holds after the
    pace ends, and a pace ending never resumes what the sink paused."""
    channel, transport, clock, sink = _streaming_channel()
    request = channel.requests[-1]
    assert isinstance(request, RegistryRequest)
    channel.dataReceived(chunked([b"y" * 100]))
    request.pause_body()
    clock.advance(PACE_DELAY * 2)
    assert transport.producerState == "paused"
    request.resume_body()
    assert transport.producerState == "producing"
    # And the other order: paused by the sink, then a pace comes and goes.
    request.pause_body()
    request.pace_body(PACE_DELAY)
    request.resume_body()
    assert transport.producerState == "paused"  # the pace still holds it
    clock.advance(PACE_DELAY * 2)
    assert transport.producerState == "producing"


def test_a_connection_lost_while_paced_leaves_no_timer() -> None:
    channel, transport, clock, sink = _streaming_channel()
    channel.dataReceived(chunked([b"y" * 100]))
    assert _paces(clock)
    channel.connectionLost(Exception("gone"))
    assert not _paces(clock)
    assert sink.events[-1] == ("lost", b"")
