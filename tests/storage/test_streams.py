"""The shared stream helpers (``registry.storage.streams``) on their own, over
a small real source and sink that keep bytes in memory and answer when told,
so the tests see exactly what is in flight."""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from registry.storage.streams import GatheringWriter, IPieceSink, IPieceSource, ReadAhead


@implementer(IPieceSource)
class HeldSource:
    """A positional or sequential source over ``data``; fetches wait in
    ``asked`` until ``answer()`` (in any order)."""

    def __init__(self, data: bytes, positional: bool = True) -> None:
        self.data = data
        self.positional = positional
        self.pos = 0
        self.asked: list[tuple[int, int, Deferred[bytes]]] = []
        self.closed = False

    def fetch(self, offset: int, size: int) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        self.asked.append((offset, size, d))
        return d

    def answer(self, index: int = 0) -> None:
        offset, size, d = self.asked.pop(index)
        if not self.positional:
            offset = self.pos
        piece = self.data[offset : offset + size]
        self.pos = offset + len(piece)
        d.callback(piece)

    def close(self) -> Deferred[None]:
        assert not self.asked, "closed with fetches in flight"
        self.closed = True
        return succeed(None)


@implementer(IPieceSink)
class HeldSink:
    def __init__(self) -> None:
        self.written = bytearray()
        self.sent: list[tuple[bytes, Deferred[None]]] = []
        self.finished: str | None = None

    def send(self, piece: Any) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.sent.append((b"".join(bytes(c) for c in piece), d))
        return d

    def ack(self, error: Exception | None = None) -> None:
        data, d = self.sent.pop(0)
        if error is None:
            self.written += data
            d.callback(None)
        else:
            d.errback(error)

    def _end(self, how: str) -> Deferred[None]:
        self.finished = how
        return succeed(None)

    def close(self) -> Deferred[None]:
        return self._end("closed")

    def commit(self) -> Deferred[None]:
        return self._end("committed")

    def cancel(self) -> Deferred[None]:
        return self._end("cancelled")

    def abort(self) -> Deferred[None]:
        return self._end("aborted")


def test_read_ahead_opens_after_a_full_piece_and_stays_bounded() -> None:
    data = os.urandom(10 * 100)
    source = HeldSource(data)
    reader = ReadAhead(source, 100, depth=3)
    first = reader.read(1000)
    assert len(source.asked) == 1  # one piece until a full one arrived
    source.answer()
    assert first.result == data[:100]  # type: ignore[attr-defined]
    # Now up to depth pieces are in flight or buffered, never more.
    assert len(source.asked) == 3
    for _ in range(3):
        source.answer()
    assert len(reader._buffer) == 3 and len(source.asked) == 0
    got = [first.result]  # type: ignore[attr-defined]
    while True:
        d = reader.read(1000)
        while not d.called:
            source.answer()
        piece = d.result  # type: ignore[attr-defined]
        assert len(reader._buffer) + len(source.asked) <= 3
        if not piece:
            break
        got.append(piece)
    assert b"".join(got) == data
    closing = reader.close()
    while source.asked:  # pieces asked beyond the end, dropped but in flight
        source.answer()
    assert closing.called and source.closed


def test_positional_short_piece_drops_later_pieces_and_sees_growth() -> None:
    source = HeldSource(b"a" * 250)
    reader = ReadAhead(source, 100, depth=3)
    d = reader.read(100)
    source.answer()
    assert d.result == b"a" * 100  # type: ignore[attr-defined]
    # Pieces at 100, 200, 300 are asked; answer them out of order.
    assert [a[0] for a in source.asked] == [100, 200, 300]
    source.answer(2)  # 300: b"" (beyond the end)
    source.answer(1)  # 200: 50 bytes, a short piece
    source.data += b"b" * 100  # the object grows meanwhile
    source.answer(0)  # 100
    assert reader.read(1000).result == b"a" * 150  # type: ignore[attr-defined]
    d = reader.read(1000)
    assert [a[0] for a in source.asked] == [250]  # resumes at the short piece's end
    source.answer()
    assert d.result == b"b" * 100  # type: ignore[attr-defined]
    d = reader.read(1000)
    assert [a[0] for a in source.asked] == [350, 450, 550]  # full piece: ahead again
    source.answer()
    assert d.result == b""  # type: ignore[attr-defined]
    source.data += b"c"
    d = reader.read(1000)  # the end of a file is not final
    assert [a[0] for a in source.asked] == [450, 550, 350]  # dropped ones still in flight
    source.answer(2)
    assert d.result == b"c"  # type: ignore[attr-defined]


def test_sequential_short_pieces_are_not_the_end() -> None:
    source = HeldSource(b"x" * 130, positional=False)
    reader = ReadAhead(source, 100, depth=4, positional=False)
    d = reader.read(1000)
    assert len(source.asked) == 4  # a sequential source is asked ahead at once
    source.answer()  # pieces: 100, 30, b"", b""
    while source.asked:
        source.answer()
    assert d.result == b"x" * 100  # type: ignore[attr-defined]
    assert reader.read(1000).result == b"x" * 30  # type: ignore[attr-defined]
    assert reader.read(1000).result == b""  # type: ignore[attr-defined]
    assert reader.read(1000).result == b""  # final: no new fetch
    assert not source.asked


def test_close_waits_for_fetches_in_flight() -> None:
    source = HeldSource(b"y" * 1000)
    reader = ReadAhead(source, 100, depth=3)
    reader.read(10)
    source.answer()
    assert source.asked
    closing = reader.close()
    assert not closing.called and not source.closed
    while source.asked:
        source.answer()
    assert closing.called and source.closed


def test_writer_gathers_cuts_and_windows() -> None:
    sink = HeldSink()
    writer = GatheringWriter(sink, 100, window_bytes=100, max_in_flight=1, size=7)
    assert writer.write(b"a" * 60).called and not sink.sent  # gathered
    assert writer.write(b"b" * 60).called  # one piece of 100 in flight: within the window
    assert [len(p) for p, _ in sink.sent] == [100]
    big = writer.write(b"c" * 250)  # 20 gathered + 250: two more pieces, 70 left gathered
    assert not big.called  # 300 bytes unacknowledged > window
    assert len(sink.sent) == 1  # max_in_flight=1: the others wait
    sink.ack()
    assert not big.called and len(sink.sent) == 1
    sink.ack()
    assert big.called  # 100 unacknowledged again
    assert writer.size == 7 + 370
    committing = writer.commit()
    sink.ack()
    assert len(sink.sent) == 1 and len(sink.sent[0][0]) == 70  # the gathered rest
    sink.ack()
    assert committing.called and sink.finished == "committed"
    assert bytes(sink.written) == b"a" * 60 + b"b" * 60 + b"c" * 250


@pytest.mark.parametrize("finish", ["commit", "close"])
def test_failed_piece_fails_the_finish_and_is_never_committed(finish: str) -> None:
    sink = HeldSink()
    writer = GatheringWriter(sink, 100, window_bytes=1000)
    assert writer.write(b"z" * 250).called
    d = getattr(writer, finish)()
    sink.ack()
    sink.ack(OSError(28, "No space left on device"))
    sink.ack()  # the rest, sent before the failure was known
    failures: list[Any] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert sink.finished == ("aborted" if finish == "commit" else "closed")


def test_error_reported_by_write_is_not_reported_again_by_close() -> None:
    sink = HeldSink()
    writer = GatheringWriter(sink, 100, window_bytes=1000)
    writer.write(b"z" * 100)
    sink.ack(OSError(5, "I/O error"))
    failures: list[Any] = []
    writer.write(b"more").addErrback(failures.append)
    assert failures and failures[0].check(OSError)
    assert writer.close().called  # already reported: close just releases
    assert sink.finished == "closed"
    failures.clear()
    writer.commit().addErrback(failures.append)  # but never a commit
    assert failures and sink.finished == "aborted"
