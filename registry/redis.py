"""A small Redis client on Twisted: RESP2 over TCP, a bounded pool, timeouts.

Only what the registry needs (``SET NX PX``, ``EVAL``, ``HGET``/``HSET``,
``DEL``, ``PING``, and ``GET``/``INCRBY`` of the shared content generation
in ``registry.storage.generation``): every command is
``await client.execute(*args)``, which fires with the reply (``bytes``,
``int``, ``None``, a list, or ``"OK"``-like simple strings as ``str``) or
fails with ``RedisError`` (an error reply) or ``RedisUnavailable`` (no
connection, a timeout, a dropped connection).

Why not a library: txredisapi (the Twisted one) has no type information and
no per-command timeouts; the protocol subset here is a page.

Timeouts (Distribution's ``redis.*`` keys): ``dialtimeout`` bounds a
connection attempt including ``AUTH``/``SELECT``; ``readtimeout`` plus
``writetimeout`` bound one command from sending to its reply (Twisted
buffers writes, so the two are one deadline). A connection that timed out is
dropped, never reused (a late reply would answer the next command).

Pool (``redis.pool.*``): at most ``maxactive`` commands in flight (0: no
limit), at most ``maxidle`` idle connections kept, idle ones older than
``idletimeout`` closed instead of reused.

Health: ``status()`` says whether the last command reached Redis; the first
failure after a success is logged once (and the recovery once), not every
failed command.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.defer import TimeoutError as TwistedTimeoutError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="registry.redis")


class RedisError(Exception):
    """Redis answered with an error reply (``-ERR ...``)."""


class RedisUnavailable(RedisError):
    """Redis could not be reached or did not answer in time."""


class _Incomplete(Exception):
    pass


def encode_command(args: tuple[Any, ...]) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = str(arg).encode("ascii")
        else:
            raise TypeError(f"cannot send {type(arg).__name__} to Redis")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def parse_reply(buf: bytes, pos: int = 0) -> tuple[Any, int]:
    """One RESP2 reply from ``buf[pos:]``: ``(value, end)``. Raises
    ``_Incomplete`` when more bytes are needed; an error reply is returned as
    a ``RedisError`` instance (not raised), so arrays can carry them."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    nxt = end + 2
    if kind == b"+":
        return line.decode("utf-8", "replace"), nxt
    if kind == b"-":
        return RedisError(line.decode("utf-8", "replace")), nxt
    if kind == b":":
        return int(line), nxt
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            raise _Incomplete()
        return buf[nxt : nxt + n], nxt + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            item, nxt = parse_reply(buf, nxt)
            items.append(item)
        return items, nxt
    raise ValueError(f"not a RESP reply: {buf[pos:end + 2]!r}")


class RedisProtocol(Protocol):
    """One connection: commands are answered in order."""

    def __init__(self) -> None:
        self._buf = b""
        self._waiting: deque[Deferred[Any]] = deque()
        self.lost = False
        self.idle_since = time.monotonic()

    def command(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        if self.lost or self.transport is None:
            d.errback(RedisUnavailable("the connection to Redis is closed"))
            return d
        self._waiting.append(d)
        self.transport.write(encode_command(args))
        return d

    def dataReceived(self, data: bytes) -> None:
        self._buf += data
        pos = 0
        while self._waiting:
            try:
                value, pos = parse_reply(self._buf, pos)
            except _Incomplete:
                break
            except ValueError as e:
                self._fail(RedisUnavailable(f"Redis sent something that is not RESP: {e}"))
                return
            d = self._waiting.popleft()
            if isinstance(value, RedisError):
                d.errback(value)
            else:
                d.callback(value)
        self._buf = self._buf[pos:]

    def _fail(self, error: Exception) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(error)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(RedisUnavailable(f"the connection to Redis was lost: {reason.getErrorMessage()}"))


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how long to wait for it (seconds)."""

    host: str
    port: int
    password: str | None = None
    db: int = 0
    dial_timeout: float = 5.0
    read_timeout: float = 5.0
    write_timeout: float = 5.0
    max_idle: int = 4
    max_active: int = 64
    idle_timeout: float = 300.0


class RedisClient:
    """A pool of connections to one Redis server."""

    def __init__(self, reactor: Any, settings: RedisSettings) -> None:
        self.reactor = reactor
        self.settings = settings
        self._idle: list[RedisProtocol] = []
        self._limit = DeferredSemaphore(settings.max_active) if settings.max_active > 0 else None
        self._healthy: bool | None = None
        self._last_error: str | None = None
        self._closed = False

    # -- health --------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``{"ok": bool, "error": str | None, "addr": "host:port"}``: whether
        the last command reached Redis (``ok`` is True before the first)."""
        return {
            "ok": self._healthy is not False,
            "error": self._last_error if self._healthy is False else None,
            "addr": f"{self.settings.host}:{self.settings.port}",
        }

    def _mark(self, ok: bool, error: str | None = None) -> None:
        if ok and self._healthy is False:
            log.info("Redis at {addr} is reachable again", addr=self.status()["addr"])
        elif not ok and self._healthy is not False:
            log.error(
                "Redis at {addr} is unavailable ({error}); serving from storage without it until it is back",
                addr=self.status()["addr"], error=error,
            )
        self._healthy = ok
        self._last_error = error

    # -- commands --------------------------------------------------------------

    async def execute(self, *args: Any) -> Any:
        """Send one command; fire with its reply."""
        if self._closed:
            raise RedisUnavailable("the Redis client is closed")
        if self._limit is not None:
            await self._limit.acquire()
        try:
            return await self._execute(args)
        finally:
            if self._limit is not None:
                self._limit.release()

    async def _execute(self, args: tuple[Any, ...]) -> Any:
        try:
            conn = await self._connection()
        except RedisUnavailable as e:
            self._mark(False, str(e))
            raise
        timeout = self.settings.read_timeout + self.settings.write_timeout
        d = conn.command(*args)
        d.addTimeout(timeout, self.reactor)
        try:
            reply = await d
        except RedisUnavailable as e:
            conn._fail(e)
            self._mark(False, str(e))
            raise
        except (TwistedTimeoutError, CancelledError):
            conn._fail(RedisUnavailable("timed out"))
            self._mark(False, f"no reply within {timeout:g}s")
            raise RedisUnavailable(f"Redis did not answer within {timeout:g}s") from None
        except RedisError:
            self._release(conn)
            self._mark(True)
            raise
        self._release(conn)
        self._mark(True)
        return reply

    def _release(self, conn: RedisProtocol) -> None:
        if conn.lost or self._closed or len(self._idle) >= self.settings.max_idle:
            if not conn.lost and conn.transport is not None:
                conn.transport.loseConnection()
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def _connection(self) -> RedisProtocol:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.lost:
                continue
            if self.settings.idle_timeout > 0 and now - conn.idle_since > self.settings.idle_timeout:
                if conn.transport is not None:
                    conn.transport.loseConnection()
                continue
            return conn
        return await self._connect()

    async def _connect(self) -> RedisProtocol:
        s = self.settings
        endpoint = TCP4ClientEndpoint(self.reactor, s.host, s.port, timeout=max(1, int(s.dial_timeout + 0.999)))
        attempt: Deferred[RedisProtocol] = endpoint.connect(Factory.forProtocol(RedisProtocol))  # type: ignore[assignment]
        attempt.addTimeout(s.dial_timeout, self.reactor)
        try:
            conn: RedisProtocol = await attempt
        except (TwistedTimeoutError, CancelledError):
            raise RedisUnavailable(f"cannot connect to Redis at {s.host}:{s.port} within {s.dial_timeout:g}s") from None
        except Exception as e:
            raise RedisUnavailable(f"cannot connect to Redis at {s.host}:{s.port}: {e}") from None
        try:
            setup: list[tuple[Any, ...]] = []
            if s.password:
                setup.append(("AUTH", s.password))
            if s.db:
                setup.append(("SELECT", s.db))
            for command in setup:
                d = conn.command(*command)
                d.addTimeout(s.dial_timeout, self.reactor)
                await d
        except RedisUnavailable:
            conn._fail(RedisUnavailable("closed"))
            raise
        except (TwistedTimeoutError, CancelledError):
            conn._fail(RedisUnavailable("closed"))
            raise RedisUnavailable(f"Redis at {s.host}:{s.port} did not answer AUTH/SELECT within {s.dial_timeout:g}s") from None
        except RedisError as e:
            conn._fail(RedisUnavailable("closed"))
            raise RedisUnavailable(f"Redis at {s.host}:{s.port} refused the connection setup: {e}") from None
        return conn

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called (later commands fail)."""
        return self._closed

    def close(self) -> None:
        """Close every idle connection; later commands fail."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            if conn.transport is not None:
                conn.transport.loseConnection()


def settings_from_config(redis: Any) -> RedisSettings:
    """``RedisSettings`` from a ``registry.config.RedisConfig``."""
    from registry.config import parse_addr

    host, port = parse_addr(redis.addr)
    return RedisSettings(
        host=host or "127.0.0.1",
        port=port,
        password=redis.password,
        db=redis.db,
        dial_timeout=redis.dialtimeout,
        read_timeout=redis.readtimeout,
        write_timeout=redis.writetimeout,
        max_idle=redis.pool_maxidle,
        max_active=redis.pool_maxactive,
        idle_timeout=redis.pool_idletimeout,
    )


class RedisService(Service):
    """Closes the client's connections when the application stops."""

    def __init__(self, client: RedisClient) -> None:
        self.client = client

    def stopService(self) -> None:
        Service.stopService(self)
        self.client.close()
