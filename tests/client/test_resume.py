"""Range resume of downloads and resumption of uploads after dropped connections."""

from __future__ import annotations

import os
from pathlib import Path
from typing import AsyncIterator

import pytest_twisted

from twisted.internet import reactor
from twisted.internet.interfaces import IConsumer
from zope.interface import implementer

from registry.client import BytesConsumer, BytesSource, FileSource, RegistryClient, RetryPolicy, UploadOutcome, UploadSettings
from registry.digest import sha256_digest
from tests.client.cutproxy import CutProxy
from tests.clients.harness import Registry


@pytest_twisted.async_yield_fixture
async def proxy(registry: Registry) -> AsyncIterator[CutProxy]:
    relay = CutProxy(registry.port)
    try:
        yield relay
    finally:
        await relay.close()


def fast_retries() -> RetryPolicy:
    return RetryPolicy(attempts=3, base_delay=0.05, max_delay=0.2)


@pytest_twisted.ensureDeferred
async def test_download_resumes_with_range(client: RegistryClient, proxy: CutProxy, repo: str) -> None:
    data = os.urandom(600_000)
    digest = sha256_digest(data)
    await client.push_blob(repo, digest, BytesSource(data))
    through = RegistryClient(proxy.host, retry=fast_retries())
    try:
        proxy.cut_download_after = 250_000
        consumer = BytesConsumer()
        seen: list[int] = []
        size = await through.fetch_blob(repo, digest, consumer, progress=seen.append)
    finally:
        await through.close()
    assert proxy.cuts == 1
    assert size == len(data)
    assert consumer.value() == data  # every byte once, in order
    assert sum(seen) == len(data)
    # Resumed, not restarted: the second GET asked for the rest, and got a 206.
    gets = [r for r in proxy.requests if r.method == "GET" and f"/blobs/{digest}" in r.path]
    assert len(gets) == 2 and "range" not in gets[0].headers, gets
    start = int(gets[1].headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start <= 250_000
    assert 206 in proxy.statuses


@pytest_twisted.ensureDeferred
async def test_stalled_download_is_resumed(client: RegistryClient, proxy: CutProxy, repo: str) -> None:
    data = os.urandom(400_000)
    digest = sha256_digest(data)
    await client.push_blob(repo, digest, BytesSource(data))
    through = RegistryClient(proxy.host, retry=fast_retries(), idle_timeout=0.5)
    try:
        proxy.stall_download_after = 100_000
        consumer = BytesConsumer()
        await through.fetch_blob(repo, digest, consumer)
    finally:
        await through.close()
    assert proxy.stalls == 1
    assert consumer.value() == data


@pytest_twisted.ensureDeferred
async def test_chunked_upload_resumes_after_a_cut(
    client: RegistryClient, proxy: CutProxy, registry: Registry, repo: str, tmp_path: Path
) -> None:
    """From a file: the resumed chunk is read again from the server's offset."""
    data = os.urandom(500_000 + 123)
    digest = sha256_digest(data)
    path = tmp_path / "blob"
    path.write_bytes(data)
    through = RegistryClient(
        proxy.host,
        retry=fast_retries(),
        upload=UploadSettings(monolithic_max=64 * 1024, chunk_size=200_000),
    )
    try:
        proxy.cut_upload_after = 300_000  # inside the second PATCH
        progress: list[int] = []
        outcome = await through.push_blob(repo, digest, FileSource(path), progress=progress.append)
    finally:
        await through.close()
    assert outcome is UploadOutcome.UPLOADED
    assert proxy.cuts == 1
    assert sum(progress) == len(data)
    assert await client.read_blob(repo, digest) == data
    # After the cut the upload's status was asked (GET on its location).
    status = next(i for i, r in enumerate(proxy.requests) if r.method == "GET" and "/blobs/uploads/" in r.path)
    starts = [int(r.headers["content-range"].split("-")[0]) for r in proxy.requests if r.method == "PATCH"]
    after = [int(r.headers["content-range"].split("-")[0]) for r in proxy.requests[status:] if r.method == "PATCH"]
    assert starts[:2] == [0, 200_000]
    posts = [r.method for r in proxy.requests].count("POST")
    if registry.kind == "ours":
        # Resumed from the server's Range, not restarted: one upload
        # session, and the next PATCH starts where the server says it is
        # (past the first chunk; the cut chunk's bytes that arrived count).
        assert posts == 1, proxy.requests
        assert after and 200_000 <= after[0] <= 300_000, starts
    else:
        # Distribution 2.8.2 drops an upload whose PATCH was cut (its size no
        # longer matches the offset in the upload's state): the status is a
        # 404, and the client starts a new upload.
        assert posts == 2 and after[0] == 0, proxy.requests


@pytest_twisted.ensureDeferred
async def test_monolithic_upload_resumes_after_a_cut(client: RegistryClient, proxy: CutProxy, repo: str) -> None:
    data = os.urandom(300_000)
    digest = sha256_digest(data)
    through = RegistryClient(proxy.host, retry=fast_retries(), upload=UploadSettings(chunk_size=128 * 1024))
    try:
        proxy.cut_upload_after = 150_000
        outcome = await through.push_blob(repo, digest, BytesSource(data))
    finally:
        await through.close()
    assert outcome is UploadOutcome.UPLOADED
    assert proxy.cuts == 1
    assert await client.read_blob(repo, digest) == data


@implementer(IConsumer)
class SlowConsumer:
    """Pauses its producer once for ``pause`` seconds after ``after`` bytes."""

    def __init__(self, after: int, pause: float) -> None:
        self.after = after
        self.pause = pause
        self.chunks: list[bytes] = []
        self.received = 0
        self.producer: object = None
        self.paused_at: int | None = None
        self.at_resume: int | None = None

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.paused_at is None and self.received >= self.after:
            self.paused_at = self.received
            self.producer.pauseProducing()  # type: ignore[attr-defined]
            reactor.callLater(self.pause, self._resume)

    def _resume(self) -> None:
        self.at_resume = self.received
        self.producer.resumeProducing()  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_a_slow_consumer_pauses_the_socket(client: RegistryClient, proxy: CutProxy, repo: str) -> None:
    """Backpressure: the consumer's pause holds the body back (and is not
    mistaken for a stall: the download stays on its one connection)."""
    data = os.urandom(4_000_000)
    digest = sha256_digest(data)
    await client.push_blob(repo, digest, BytesSource(data))
    through = RegistryClient(proxy.host, retry=fast_retries(), idle_timeout=0.3)
    consumer = SlowConsumer(after=200_000, pause=0.8)
    try:
        started = reactor.seconds()
        await through.fetch_blob(repo, digest, consumer)
        elapsed = reactor.seconds() - started
    finally:
        await through.close()
    assert b"".join(consumer.chunks) == data
    assert elapsed >= 0.8
    assert proxy.connections == 1 and proxy.cuts == 0
    # while paused, at most what one socket read had already delivered arrived
    assert consumer.paused_at is not None and consumer.at_resume is not None
    assert consumer.at_resume - consumer.paused_at < 256 * 1024
