"""Pins the Twisted behaviour ``registry.storage.remote.fastpipe`` relies on
(the parser's agreement with ``amp.parseString`` is tested in
``test_outofprocess.py``)."""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.stdio import StandardIO
from twisted.protocols import amp
from twisted.python.failure import Failure

from registry.storage.remote.fastpipe import PIPE_READ_BYTES, FrameParsingAMP, tune_child_pipes, tune_stdio

SIZE = 3 << 20


class _Collect(ProcessProtocol):
    def __init__(self, tune: bool) -> None:
        self.tune = tune
        self.chunks: list[int] = []
        self.ended: Deferred[BaseException] = Deferred()

    def connectionMade(self) -> None:
        assert self.transport is not None
        # What the supervisor reaches into: the reader of fd 1.
        reader = self.transport.pipes[1]  # type: ignore[attr-defined]
        assert callable(reader.doRead) and callable(reader.dataReceived) and reader.fileno() >= 0
        if self.tune:
            assert tune_child_pipes(self.transport), "Twisted's process transport has no pipes any more"

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == 1:
            self.chunks.append(len(data))

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(reason.value)


async def _run(tune: bool) -> _Collect:
    proto = _Collect(tune)
    # The child writes everything at once and exits, so the pipe is full
    # whenever the parent wakes up.
    code = f"import sys; sys.stdout.buffer.write(b'x' * {SIZE}); sys.stdout.flush()"
    reactor.spawnProcess(proto, sys.executable, [sys.executable, "-c", code], env=None, childFDs={0: "w", 1: "r", 2: 2})  # type: ignore[attr-defined]
    ended: Any = await proto.ended
    assert ended.exitCode == 0
    return proto


@pytest_twisted.ensureDeferred
async def test_tuned_pipe_reader_delivers_everything_in_big_reads() -> None:
    untuned = await _run(tune=False)
    tuned = await _run(tune=True)
    assert sum(untuned.chunks) == sum(tuned.chunks) == SIZE
    # Twisted reads at most 8 KiB per wakeup; the tuned reader much more
    # (if Twisted stopped calling our doRead, this would fail).
    assert max(untuned.chunks) <= 64 * 1024
    assert max(tuned.chunks) > 64 * 1024 and max(tuned.chunks) <= PIPE_READ_BYTES


def test_frame_parser_relies_on_int16_receiver_state() -> None:
    # FrameParsingAMP defers to AMP's own dataReceived while these say so,
    # and enforces AMP's MAX_LENGTH through lengthLimitExceeded.
    proto = FrameParsingAMP()
    assert proto.innerProtocol is None and proto._locked is False
    assert "MAX_LENGTH" not in vars(FrameParsingAMP) and FrameParsingAMP.MAX_LENGTH == amp.AMP.MAX_LENGTH
    assert callable(proto.stringReceived) and callable(proto.lengthLimitExceeded)


class _Stdin(Protocol):
    """The child's side: what ``StandardIO`` delivers from stdin."""

    def __init__(self) -> None:
        self.chunks: list[int] = []
        self.ended: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(len(data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.ended.callback(None)


async def _stdio_reads(tune: bool) -> list[int]:
    """Feed ``SIZE`` bytes through a pipe into a ``StandardIO`` in this
    process (as ``registry.storage.remote.server`` reads its commands)."""
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    proto = _Stdin()
    stdio = StandardIO(proto, stdin=stdin_r, stdout=stdout_w, reactor=reactor)  # type: ignore[call-arg]
    if tune:
        assert tune_stdio(stdio), "StandardIO has no _reader any more: fastpipe.tune_stdio must be adapted"

    def feed() -> None:
        with os.fdopen(stdin_w, "wb") as f:
            f.write(b"x" * SIZE)

    writer = threading.Thread(target=feed)
    writer.start()
    try:
        await proto.ended
    finally:
        writer.join()
        stdio.loseConnection()
        for fd in (stdout_r,):
            os.close(fd)
    assert sum(proto.chunks) == SIZE
    return proto.chunks


@pytest_twisted.ensureDeferred
async def test_tuned_stdio_reader_delivers_everything_in_big_reads() -> None:
    untuned = await _stdio_reads(tune=False)
    tuned = await _stdio_reads(tune=True)
    # Twisted's StandardIO reads at most 8 KiB per wakeup; tuned, more
    # (if Twisted renamed _reader or stopped calling its doRead, this fails).
    assert max(untuned) <= 64 * 1024
    assert max(tuned) > 64 * 1024 and max(tuned) <= PIPE_READ_BYTES
