"""Crash safety of the filesystem driver: a real writer process is SIGKILLed
while it puts content or writes and commits through writers, at several
timings; the store must then hold, for every object, its old or its new
content (put_content), and for writers a prefix of what was written that
includes everything whose close/commit had fired."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from registry.storage.driver import PathNotFoundError
from registry.storage.factory import create_driver
from tests.storage import _fault_child as child

REPO = Path(__file__).resolve().parents[2]
DELAYS = [0.0, 0.013, 0.05, 0.11, 0.23, 0.41]


async def run_and_kill(mode: str, root: Path, delay: float) -> list[str]:
    """Start the child, SIGKILL it ``delay`` seconds after it is ready; return
    the progress lines it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.storage._fault_child", mode, str(root)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        await deferLater(reactor, delay, lambda: None)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the child finished before it was killed"
    assert proc.stdout is not None
    return proc.stdout.read().split()


@pytest.mark.slow
@pytest.mark.parametrize("delay", DELAYS)
@pytest_twisted.ensureDeferred
async def test_kill_during_put_content(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "store"
    contents = child.versions()
    await run_and_kill("put", root, delay)
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    try:
        data = await driver.get_content("/obj")
        assert any(data == c for c in contents), f"torn object of {len(data)} bytes"
        assert [i.path for i in await driver.walk("/")] == ["/obj"]
    finally:
        await driver.close()


@pytest.mark.slow
@pytest.mark.parametrize("delay", DELAYS)
@pytest_twisted.ensureDeferred
async def test_kill_during_writer_commit(tmp_path: Path, delay: float) -> None:
    root = tmp_path / "store"
    words = await run_and_kill("writer", root, delay)
    committed = [int(n) for w, n in zip(words, words[1:]) if w == "committed"]
    closed = [int(n) for w, n in zip(words, words[1:]) if w == "closed"]
    driver = create_driver("filesystem", {"rootdirectory": str(root)})
    try:
        names = await driver.list("/objs") if committed or os.path.isdir(root / "objs") else []
        for path in names:
            n = int(path.rsplit("/", 1)[1])
            data = await driver.get_content(path)
            full = child.object_content(n)
            if n in committed:
                assert data == full, f"committed object {n} is not whole"
            else:
                assert full.startswith(data), f"uncommitted object {n} holds bytes never written"
        for n in committed:
            assert f"/objs/{n}" in names
        upload = await driver.get_content("/up/data")
        assert upload == child.upload_bytes(0, len(upload)), "upload holds bytes never written"
        assert len(upload) >= (closed[-1] if closed else 0), "a closed append was lost"
        # The upload can be resumed where it stands.
        writer = await driver.writer("/up/data", append=True)
        assert writer.size == len(upload)
        await writer.cancel()
        with pytest.raises(PathNotFoundError):
            await driver.stat("/up/data")
    finally:
        await driver.close()
