"""``registry garbage-collect`` with ``redis`` and a Redis blob-descriptor
cache configured: a separate process that deletes blobs removes their
cache entries (leaving tombstones), and deletes nothing when Redis is down."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from registry.storage import paths
from tests.redis.server import RedisServer, free_port
from tests.test_cli import registry


def setup_orphan(root: Path) -> str:
    data = b"an orphaned layer"
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    from registry.digest import Digest

    digest = Digest.parse(d)
    for rel, content in ((paths.blob_data(digest), data), (paths.layer_link("repo", digest), d.encode())):
        target = root / rel.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
    return d


def cli(redis_port: int, *args: str) -> str:
    done = subprocess.run(["redis-cli", "-p", str(redis_port), *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def write_config(tmp_path: Path, addr: str) -> Path:
    config = tmp_path / "config.yml"
    config.write_text(
        "version: 0.1\n"
        f"storage:\n  filesystem: {{rootdirectory: {tmp_path / 'storage'}}}\n  cache: {{blobdescriptor: redis}}\n"
        f"redis: {{addr: '{addr}', dialtimeout: 1s}}\n"
    )
    return config


def test_collection_forgets_swept_digests(tmp_path: Path, redis_server: RedisServer) -> None:
    d = setup_orphan(tmp_path / "storage")
    cli(redis_server.port, "HSET", f"registry:blob:{d}", "size", "17", "repo:repo", "1")
    done = registry("garbage-collect", "--grace", "0s", str(write_config(tmp_path, redis_server.addr)))
    assert done.returncode == 0, done.stderr
    assert f"deleted blob {d}" in done.stdout
    assert cli(redis_server.port, "EXISTS", f"registry:blob:{d}") == "0"
    assert 0 < int(cli(redis_server.port, "TTL", f"registry:blob-gone:{d}")) <= 60


def test_collection_deletes_nothing_without_redis(tmp_path: Path) -> None:
    d = setup_orphan(tmp_path / "storage")
    done = registry("garbage-collect", "--grace", "0s", str(write_config(tmp_path, f"127.0.0.1:{free_port()}")))
    assert done.returncode != 0
    assert "cannot be reached" in done.stderr and "nothing was deleted" in done.stderr
    assert list((tmp_path / "storage").rglob("data"))
    assert d.split(":")[1] in {p.parent.name for p in (tmp_path / "storage").rglob("data")}
