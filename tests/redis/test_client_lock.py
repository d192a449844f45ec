"""The Redis client (RESP, pool, timeouts, health) and the shared upload lock
against a real redis-server."""

from __future__ import annotations

import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater
from zope.interface.verify import verifyObject

from registry.redis import RedisClient, RedisError, RedisSettings, RedisUnavailable, parse_reply, _Incomplete
from registry.storage.interfaces import IUploadLock
from registry.storage.redislock import LockUnavailable, RedisUploadLocks, lock_key
from tests.redis.server import RedisServer, free_port


def client_for(server: RedisServer, **kw: object) -> RedisClient:
    return RedisClient(reactor, RedisSettings("127.0.0.1", server.port, password=server.password, **kw))  # type: ignore[arg-type]


def sleep(s: float) -> Deferred[None]:
    return deferLater(reactor, s, lambda: None)


def test_parse_reply_incremental() -> None:
    data = b"*3\r\n$3\r\nabc\r\n:42\r\n$-1\r\n"
    assert parse_reply(data) == ([b"abc", 42, None], len(data))
    for cut in range(1, len(data)):
        with pytest.raises(_Incomplete):
            parse_reply(data[:cut])
    value, _ = parse_reply(b"-ERR wrong\r\n")
    assert isinstance(value, RedisError) and "wrong" in str(value)


@pytest_twisted.ensureDeferred
async def test_commands_pool_and_errors(redis_server: RedisServer) -> None:
    client = client_for(redis_server, max_idle=2)
    assert await client.execute("SET", "k", b"v\r\n\x00") == "OK"
    assert await client.execute("GET", "k") == b"v\r\n\x00"
    assert await client.execute("INCR", "n") == 1
    with pytest.raises(RedisError, match="WRONGTYPE|not an integer"):
        await client.execute("INCR", "k")
    # Many at once: each reply goes to its own command.
    results = await ensureDeferred(_gather(client, 50))
    assert results == list(range(2, 52)) or sorted(results) == list(range(2, 52))
    assert client.status()["ok"] is True
    client.close()


async def _gather(client: RedisClient, n: int) -> list[int]:
    from twisted.internet.defer import gatherResults

    return await gatherResults([ensureDeferred(client.execute("INCR", "n")) for _ in range(n)])


@pytest_twisted.ensureDeferred
async def test_password_and_db() -> None:
    server = RedisServer(password="s3cret")
    try:
        wrong = RedisClient(reactor, RedisSettings("127.0.0.1", server.port, password="nope"))
        with pytest.raises(RedisUnavailable, match="refused the connection setup"):
            await wrong.execute("PING")
        right = RedisClient(reactor, RedisSettings("127.0.0.1", server.port, password="s3cret", db=3))
        await right.execute("SET", "x", "1")
        assert await right.execute("CLIENT", "INFO") is not None
        other = RedisClient(reactor, RedisSettings("127.0.0.1", server.port, password="s3cret", db=0))
        assert await other.execute("GET", "x") is None
        right.close()
        other.close()
    finally:
        server.stop()


@pytest_twisted.ensureDeferred
async def test_unreachable_and_timeouts_report_status_once_and_recover(redis_server: RedisServer) -> None:
    # Nothing listens: fails fast, status says so.
    dead = RedisClient(reactor, RedisSettings("127.0.0.1", free_port(), dial_timeout=1))
    with pytest.raises(RedisUnavailable, match="cannot connect"):
        await dead.execute("PING")
    assert dead.status()["ok"] is False and "cannot connect" in dead.status()["error"]

    # A listener that never answers: the read timeout fires.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(5)
    try:
        mute = RedisClient(reactor, RedisSettings("127.0.0.1", silent.getsockname()[1], read_timeout=0.2, write_timeout=0.1))
        started = time.monotonic()
        with pytest.raises(RedisUnavailable, match="did not answer"):
            await mute.execute("PING")
        assert time.monotonic() - started < 2
    finally:
        silent.close()

    # Redis going away and coming back on the same port.
    client = client_for(redis_server)
    assert await client.execute("PING") == "PONG"
    port = redis_server.port
    assert redis_server.proc is not None
    redis_server.proc.kill()
    redis_server.proc.wait()
    with pytest.raises(RedisUnavailable):
        await client.execute("PING")
    assert client.status()["ok"] is False
    import subprocess

    redis_server.proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", redis_server.dir],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            assert await client.execute("PING") == "PONG"
            break
        except RedisUnavailable:
            await sleep(0.05)
    assert client.status() == {"ok": True, "error": None, "addr": redis_server.addr}


@pytest_twisted.ensureDeferred
async def test_lock_excludes_across_instances(redis_server: RedisServer) -> None:
    """Two lock objects with their own clients are two instances: the second
    waits until the first releases."""
    a = RedisUploadLocks(client_for(redis_server), poll_s=0.01)
    b = RedisUploadLocks(client_for(redis_server), poll_s=0.01)
    verifyObject(IUploadLock, a)
    release_a = await a.acquire("repo", "u1")
    waiting = ensureDeferred(b.acquire("repo", "u1"))
    other = await b.acquire("repo", "u2")  # another upload is independent
    await other()
    await sleep(0.1)
    assert not waiting.called
    await release_a()
    release_b = await waiting
    assert await b.client.execute("EXISTS", lock_key("repo", "u1")) == 1
    await release_b()
    assert await b.client.execute("EXISTS", lock_key("repo", "u1")) == 0


@pytest_twisted.ensureDeferred
async def test_lock_is_renewed_while_held(redis_server: RedisServer) -> None:
    locks = RedisUploadLocks(client_for(redis_server), lease_s=0.3, poll_s=0.01)
    other = RedisUploadLocks(client_for(redis_server), lease_s=0.3, poll_s=0.01)
    release = await locks.acquire("repo", "u")
    waiting = ensureDeferred(other.acquire("repo", "u"))
    await sleep(1.0)  # more than three leases
    assert not waiting.called
    await release()
    await (await waiting)()


@pytest_twisted.ensureDeferred
async def test_dead_holder_blocks_for_one_lease_and_cannot_free_the_next(redis_server: RedisServer) -> None:
    client = client_for(redis_server)
    # A holder that died: its key is there with its token and the lease, nobody renews it.
    await client.execute("SET", lock_key("repo", "u"), "dead-token", "PX", 500)
    locks = RedisUploadLocks(client_for(redis_server), lease_s=0.5, poll_s=0.01)
    started = time.monotonic()
    release = await locks.acquire("repo", "u")
    waited = time.monotonic() - started
    assert 0.2 < waited < 1.5
    # The dead holder's token no longer releases anything.
    from registry.storage.redislock import _RELEASE

    assert await client.execute("EVAL", _RELEASE, 1, lock_key("repo", "u"), "dead-token") == 0
    assert await client.execute("EXISTS", lock_key("repo", "u")) == 1
    await release()


@pytest_twisted.ensureDeferred
async def test_cancelling_a_wait_and_redis_down(redis_server: RedisServer) -> None:
    a = RedisUploadLocks(client_for(redis_server), poll_s=0.01)
    b = RedisUploadLocks(client_for(redis_server), poll_s=0.01)
    release = await a.acquire("repo", "u")
    waiting = ensureDeferred(b.acquire("repo", "u"))
    await sleep(0.05)
    waiting.cancel()
    with pytest.raises(Exception):
        await waiting
    assert b.local.held() == 0
    await release()
    redis_server.stop()
    with pytest.raises(LockUnavailable, match="cannot be taken"):
        await a.acquire("repo", "u")
    assert a.local.held() == 0


@pytest_twisted.ensureDeferred
async def test_an_outage_is_logged_once(redis_server: RedisServer) -> None:
    from twisted.logger import globalLogPublisher

    events: list[dict[str, object]] = []

    def observe(event: dict[str, object]) -> None:
        if event.get("log_namespace") == "registry.redis":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        client = client_for(redis_server, dial_timeout=1)
        assert await client.execute("PING") == "PONG"
        client.close()
        client = RedisClient(reactor, RedisSettings("127.0.0.1", free_port(), dial_timeout=1))
        for _ in range(5):
            with pytest.raises(RedisUnavailable):
                await client.execute("GET", "x")
        assert len(events) == 1 and "unavailable" in str(events[0]["log_format"])
    finally:
        globalLogPublisher.removeObserver(observe)
