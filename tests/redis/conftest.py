from __future__ import annotations

from typing import Iterator

import pytest

from tests.redis.server import RedisServer, available


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    if not available():
        pytest.skip("redis-server is not installed (scripts/install-system-deps.sh installs it)")
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()
