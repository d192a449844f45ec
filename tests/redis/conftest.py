from __future__ import annotations

from typing import Iterator

import pytest

from tests.redis.server import RedisServer, require_redis_server


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    require_redis_server()
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
