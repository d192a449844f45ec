"""Consumers for :func:`registry.client.blobs.download_blob`.

* :class:`BytesConsumer` keeps a small blob in memory (configs), refusing
  more than a limit.
* :class:`FileConsumer` writes a blob to ``<path>.partial`` on a thread pool
  (the reactor never waits for the disk), pausing the download while more
  than ``high_water`` bytes wait to be written; :meth:`FileConsumer.commit`
  renames the finished file into place and :meth:`FileConsumer.discard`
  removes a failed one, so a reader never sees a partial blob.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, BinaryIO

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from zope.interface import implementer

from registry.client.errors import ClientError


@implementer(IConsumer)
class BytesConsumer:
    """Collects up to ``limit`` bytes; more stops the producer and is an error."""

    def __init__(self, limit: int = 16 * 1024 * 1024) -> None:
        self.limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self._producer: IPushProducer | None = None
        self.overflowed = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        if self.overflowed:
            return
        self._size += len(data)
        if self._size > self.limit:
            self.overflowed = True
            if self._producer is not None:
                self._producer.stopProducing()
            return
        self._chunks.append(data)

    def value(self) -> bytes:
        if self.overflowed:
            raise ClientError(f"blob is larger than the {self.limit} bytes allowed in memory")
        return b"".join(self._chunks)


@implementer(IConsumer)
class FileConsumer:
    """Writes to ``<path>.partial`` on ``threadpool``; see the module docstring."""

    def __init__(self, reactor: Any, threadpool: Any, path: Path, high_water: int = 4 * 1024 * 1024) -> None:
        self.path = path
        self.partial = path.with_name(path.name + ".partial")
        self._reactor = reactor
        self._pool = threadpool
        self._high = high_water
        self._low = high_water // 2
        self._pending = 0
        self._paused = False
        self._producer: IPushProducer | None = None
        self._file: BinaryIO | None = None
        self._error: Failure | None = None
        self._chain: Deferred[None] = succeed(None)
        self._enqueue(self._open)

    def _in_thread(self, function: Any, *args: Any) -> "Deferred[Any]":
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def _enqueue(self, function: Any, *args: Any) -> None:
        def run(_: object) -> object:
            if self._error is not None:
                return None
            return self._in_thread(function, *args)

        def failed(failure: Failure) -> None:
            if self._error is None:
                self._error = failure
                if self._producer is not None:
                    self._producer.stopProducing()

        self._chain.addCallback(run)
        self._chain.addErrback(failed)

    def _open(self) -> None:
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.partial, "wb")

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    # IConsumer
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def write(self, data: bytes) -> None:
        self._pending += len(data)
        if self._pending > self._high and not self._paused and self._producer is not None:
            self._paused = True
            self._producer.pauseProducing()
        self._enqueue(self._write, data)
        self._chain.addBoth(self._written, len(data))

    def _written(self, result: object, size: int) -> object:
        self._pending -= size
        if self._paused and self._pending <= self._low:
            self._paused = False
            if self._producer is not None:
                self._producer.resumeProducing()
        return result

    @property
    def error(self) -> ClientError | None:
        """Why writing failed (the download was then stopped), or None."""
        if self._error is None:
            return None
        return ClientError(f"writing {self.partial} failed: {self._error.getErrorMessage()}")

    async def _finish(self) -> None:
        self._enqueue(self._close)
        await self._chain
        if self._error is not None:
            try:
                await self._in_thread(self._close)
            finally:
                error = self._error.value
                raise ClientError(f"writing {self.partial} failed: {error}")

    async def commit(self) -> None:
        """Wait for every write, then rename the file to ``path``."""
        await self._finish()
        await self._in_thread(os.replace, self.partial, self.path)

    async def discard(self) -> None:
        """Wait for the writes and remove the partial file."""
        try:
            await self._finish()
        except ClientError:
            pass
        await self._in_thread(_unlink_missing_ok, self.partial)


def _unlink_missing_ok(path: Path) -> None:
    """Best effort: a failed write's error matters more than its clean-up's."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
