"""Range resume of downloads and resumption of uploads after dropped connections."""

from __future__ import annotations

import os
from typing import AsyncIterator

import pytest_twisted

from registry.client import BytesConsumer, BytesSource, RegistryClient, RetryPolicy, UploadOutcome, UploadSettings
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


@pytest_twisted.ensureDeferred
async def test_chunked_upload_resumes_after_a_cut(client: RegistryClient, proxy: CutProxy, repo: str) -> None:
    data = os.urandom(500_000 + 123)
    digest = sha256_digest(data)
    through = RegistryClient(
        proxy.host,
        retry=fast_retries(),
        upload=UploadSettings(monolithic_max=64 * 1024, chunk_size=200_000),
    )
    try:
        proxy.cut_upload_after = 300_000  # inside the second PATCH
        progress: list[int] = []
        outcome = await through.push_blob(repo, digest, BytesSource(data), progress=progress.append)
    finally:
        await through.close()
    assert outcome is UploadOutcome.UPLOADED
    assert proxy.cuts == 1
    assert sum(progress) == len(data)
    assert await client.read_blob(repo, digest) == data


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
