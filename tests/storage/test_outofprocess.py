"""Quirks of the out-of-process driver that the conformance suite cannot see.

Real child processes throughout: the installed ``registry-storage-inmemory``
console script, and small Python scripts written to ``tmp_path`` that serve
the in-memory driver while claiming another protocol version (or printing to
stderr). The conformance suite itself runs against filesystem-over-AMP via
``conftest.DRIVERS``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher
from twisted.protocols import amp
from zope.interface.verify import verifyObject

from registry.storage.remote import wire
from registry.storage.remote.fastpipe import FrameParsingAMP
from registry.storage.wrapper import StorageDriverWrapper
from registry.storage.driver import (
    DriverError,
    FileInfo,
    InvalidOffsetError,
    InvalidPathError,
    IStorageDriver,
    PathNotFoundError,
)
from registry.storage.drivers.outofprocess import OutOfProcessDriver, find_executable
from registry.storage.factory import create_driver

INMEMORY = find_executable("inmemory")
pytestmark = pytest.mark.skipif(INMEMORY is None, reason="registry-storage-inmemory not installed")

# A child that serves the in-memory driver but reports the protocol version
# given as argv[1], argv[2] and says hello on stderr first. argv[3] "junk":
# write non-AMP bytes to stdout first; "print": the driver factory print()s;
# "fulldisk": writers fail with ENOSPC after 1 MiB.
FAKE_CHILD = """\
#!{python}
import os, sys
print("fake child says hello on stderr", file=sys.stderr, flush=True)
from registry.storage.remote import wire
wire.PROTOCOL_MAJOR = int(sys.argv[1])
wire.PROTOCOL_MINOR = int(sys.argv[2])
mode = sys.argv[3] if len(sys.argv) > 3 else ""
if mode == "junk":
    os.write(1, b"oops, not AMP\\n")
from registry.storage.remote.server import serve
from registry.storage.factory import create_driver
from registry.storage.wrapper import StorageDriverWrapper
from registry.storage.driver import IStorageDriver
from twisted.python.components import proxyForInterface

class FullDiskWriter:
    def __init__(self, inner):
        self.inner, self.written = inner, 0
    size = property(lambda self: self.inner.size)
    def write(self, data):
        self.written += len(data)
        if self.written > 1 << 20:
            raise OSError(28, "No space left on device")
        return self.inner.write(data)
    def close(self): return self.inner.close()
    def commit(self): return self.inner.commit()
    def cancel(self): return self.inner.cancel()

class FullDisk(proxyForInterface(IStorageDriver, "inner")):
    def writer(self, path, append=False):
        return self.inner.writer(path, append).addCallback(FullDiskWriter)

def make(params):
    if mode == "print":
        print("a driver printing to stdout")
    driver = create_driver("inmemory", params)
    if mode == "fulldisk":
        return StorageDriverWrapper(FullDisk(driver.wrapped))
    return driver
serve("inmemory", make)
"""


@pytest.fixture
def fake_child(tmp_path: Path) -> str:
    """Path of an executable fake child script (see ``FAKE_CHILD``)."""
    script = tmp_path / "registry-storage-fake"
    script.write_text(FAKE_CHILD.format(python=sys.executable))
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Formatted text of every log event emitted during the test."""
    from twisted.logger import formatEvent

    lines: list[str] = []

    def observer(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observer)
    yield lines
    globalLogPublisher.removeObserver(observer)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def wait_for(predicate: Any, what: str, timeout: float = 20.0) -> None:
    """Poll ``predicate`` on the reactor until true (fails after ``timeout``)."""
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await deferLater(reactor, 0.02, lambda: None)
        waited += 0.02


# --- pure parts of the protocol ------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, wire.FRAME_BYTES - 1, wire.FRAME_BYTES, wire.FRAME_BYTES + 1, 3 * wire.FRAME_BYTES + 7])
def test_large_bytes_round_trip(size: int) -> None:
    value = os.urandom(size)
    box = wire.PutContent.makeArguments({"path": "/a", "data": value}, None)
    # Every AMP value respects the 65535-byte limit.
    assert all(len(v) <= amp.MAX_VALUE_LENGTH for v in box.values())
    serialized = box.serialize()
    parsed = amp.parse(__import__("io").BytesIO(serialized))[0]
    assert wire.PutContent.parseArguments(parsed, None) == {"path": "/a", "data": value}


class _RecordingAMP(FrameParsingAMP):
    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[dict[bytes, bytes]] = []

    def ampBoxReceived(self, box: Any) -> None:
        self.boxes.append(dict(box))


@pytest.mark.parametrize("seed", range(6))
def test_frame_parser_matches_amp_for_any_chunking(seed: int) -> None:
    import random

    from twisted.internet.testing import StringTransport

    rng = random.Random(seed)
    boxes = [
        {b"k": b"", b"v" * 255: b"x"},
        {b"data": os.urandom(65535), b"data.1": os.urandom(rng.randrange(0, 70000) % 65536)},
        {b"a": b"1"},
    ]
    wire = b"".join(amp.AmpBox(b).serialize() for b in boxes) * 3
    expected = [dict(b) for b in amp.parseString(wire)]
    proto = _RecordingAMP()
    proto.makeConnection(StringTransport())
    pos = 0
    while pos < len(wire):
        step = rng.choice([1, 2, 3, 100, 65537, 200_000])
        proto.dataReceived(wire[pos : pos + step])
        pos += step
    assert proto.boxes == expected


def test_frame_parser_refuses_an_overlong_key() -> None:
    from twisted.internet.testing import StringTransport

    proto = _RecordingAMP()
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"\x01\x00" + b"k" * 256)  # keys are at most 255 bytes
    assert transport.disconnecting and proto.boxes == []


@pytest.mark.parametrize(
    "error",
    [
        PathNotFoundError("/a/b", "filesystem"),
        InvalidPathError("/a/../b", "filesystem", "dots"),
        InvalidOffsetError("/a", 99, "filesystem"),
        DriverError("filesystem", "disk on fire"),
    ],
)
def test_errors_keep_their_type_across_the_wire(error: Exception) -> None:
    back = wire.error_from_json(wire.error_to_json(error, "other"), "other")
    assert type(back) is type(error)
    assert str(back) == str(error)


def test_untyped_error_becomes_driver_error_naming_the_driver() -> None:
    back = wire.error_from_json(wire.error_to_json(KeyError("x"), "inmemory"), "client")
    assert isinstance(back, DriverError) and back.driver == "inmemory" and "KeyError" in str(back)
    assert isinstance(wire.error_from_json("not json", "client"), DriverError)


# --- handshake ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_factory_finds_the_console_script_and_handshakes() -> None:
    driver = create_driver("outofprocess", {"executable": "inmemory"})
    try:
        verifyObject(IStorageDriver, driver)
        assert driver.name == "inmemory"
        await driver.put_content("/x/y", b"hello")
        assert await driver.get_content("/x/y") == b"hello"
        inner = driver.wrapped  # type: ignore[attr-defined]
        assert isinstance(inner, OutOfProcessDriver)
        assert inner.child_version == (wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR)
        assert inner.child_pid is not None and inner.child_pid != os.getpid()
        with pytest.raises(PathNotFoundError) as info:
            await driver.stat("/nothing")
        assert info.value.path == "/nothing" and info.value.driver == "inmemory"
        await driver.delete("/x")
    finally:
        await driver.close()


def test_factory_rejects_bad_parameters() -> None:
    with pytest.raises(ValueError, match="storage.outofprocess.executable"):
        create_driver("outofprocess", {"executable": "no-such-driver-here"})
    with pytest.raises(ValueError, match="storage.outofprocess.bogus"):
        create_driver("outofprocess", {"executable": "inmemory", "bogus": 1})


@pytest_twisted.ensureDeferred
async def test_factory_finds_unknown_driver_names_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "registry-storage-elsewhere"
    script.write_text(FAKE_CHILD.format(python=sys.executable))
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    driver = create_driver("elsewhere", {})
    try:
        inner: Any = driver.wrapped  # type: ignore[attr-defined]
        assert isinstance(inner, OutOfProcessDriver) and inner.executable == str(script)
        assert driver.name == "elsewhere"
        # The fake child takes its version from argv; without it, it crashes at
        # once, which must come back as a clear error naming the driver.
        with pytest.raises(DriverError, match=r"^elsewhere: child process \d+ exited with status 1"):
            await driver.list("/")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_newer_minor_is_accepted(fake_child: str) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[str(wire.PROTOCOL_MAJOR), str(wire.PROTOCOL_MINOR + 3)])
    driver = StorageDriverWrapper(inner)
    try:
        await driver.put_content("/a", b"1")
        assert inner.child_version == (wire.PROTOCOL_MAJOR, wire.PROTOCOL_MINOR + 3)
        await driver.delete("/a")
    finally:
        await driver.close()


@pytest.mark.parametrize("version", [(wire.PROTOCOL_MAJOR + 1, 0), (wire.PROTOCOL_MAJOR - 1, 9)])
@pytest_twisted.ensureDeferred
async def test_major_mismatch_is_a_clear_driver_error(fake_child: str, version: tuple[int, int]) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[str(version[0]), str(version[1])])
    driver = StorageDriverWrapper(inner)
    try:
        with pytest.raises(DriverError) as info:
            await driver.get_content("/a")
        message = str(info.value)
        assert message.startswith("fake: ")
        assert f"{version[0]}.{version[1]}" in message
        assert f"{wire.PROTOCOL_MAJOR}.{wire.PROTOCOL_MINOR}" in message
        assert inner.child_version is None
        # The refused child does not linger, and a second call fails the same way.
        with pytest.raises(DriverError, match="speaks storage protocol"):
            await driver.stat("/a")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_child_stderr_is_logged_with_driver_name(fake_child: str, log_lines: list[str]) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[str(wire.PROTOCOL_MAJOR), str(wire.PROTOCOL_MINOR)])
    try:
        await inner.list("/")
        pid = inner.child_pid
        await wait_for(lambda: any("fake child says hello on stderr" in line for line in log_lines), "the stderr line")
        line = next(line for line in log_lines if "fake child says hello on stderr" in line)
        assert "fake" in line and f"pid {pid}" in line
    finally:
        await inner.close()


VERSION_ARGS = [str(wire.PROTOCOL_MAJOR), str(wire.PROTOCOL_MINOR)]


@pytest_twisted.ensureDeferred
async def test_child_writing_junk_to_stdout_fails_the_handshake_clearly(fake_child: str) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[*VERSION_ARGS, "junk"])
    try:
        with pytest.raises(DriverError) as info:
            await inner.list("/")
        message = str(info.value)
        assert message.startswith("fake: ") and "child process" in message and "handshake" in message
    finally:
        await inner.close()


@pytest_twisted.ensureDeferred
async def test_prints_in_the_child_go_to_stderr_not_the_protocol(fake_child: str, log_lines: list[str]) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[*VERSION_ARGS, "print"])
    try:
        await inner.put_content("/a", b"still works")
        assert await inner.get_content("/a") == b"still works"
        await wait_for(lambda: any("a driver printing to stdout" in line for line in log_lines), "the print")
        await inner.delete("/a")
    finally:
        await inner.close()


@pytest_twisted.ensureDeferred
async def test_silent_child_times_out_and_is_killed(tmp_path: Path) -> None:
    script = tmp_path / "registry-storage-silent"
    script.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(120)\n")
    script.chmod(0o755)
    inner = OutOfProcessDriver(str(script), {}, handshake_timeout=0.5)
    try:
        with pytest.raises(DriverError, match="did not answer the handshake in 0.5s") as info:
            await inner.list("/")
        assert info.value.driver == "silent"
        assert inner.child_pid is None
    finally:
        await inner.close()


@pytest.mark.parametrize("finish", ["commit", "close"])
@pytest_twisted.ensureDeferred
async def test_failed_write_in_the_child_is_reported_and_never_committed(fake_child: str, finish: str) -> None:
    inner = OutOfProcessDriver(fake_child, {}, name="fake", args=[*VERSION_ARGS, "fulldisk"])
    driver = StorageDriverWrapper(inner)
    try:
        from registry.storage.drivers import outofprocess

        writer = await driver.writer("/upload")
        # 1.5 MiB fits the write window: every write() fires at once, before
        # the child has answered, so the failure surfaces on commit/close.
        assert 24 * 64 * 1024 < outofprocess.WRITE_WINDOW
        for _ in range(24):
            await writer.write(os.urandom(64 * 1024))
        with pytest.raises(DriverError, match="No space left on device") as info:
            await getattr(writer, finish)()
        assert info.value.driver == "inmemory"
        await writer.close()  # finished writers close as a no-op
        if finish == "commit":
            with pytest.raises(PathNotFoundError):
                await driver.stat("/upload")
        else:
            await driver.delete("/upload")
        assert inner.restarts == 0  # a driver error is not a crash
    finally:
        await driver.close()


# --- the child dying -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_child_killed_mid_write_then_restarted() -> None:
    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    driver = StorageDriverWrapper(inner)
    try:
        writer = await driver.writer("/big")
        chunk = os.urandom(1 << 20)
        for _ in range(3):
            await writer.write(chunk)
        first_pid = inner.child_pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(DriverError) as info:
            for _ in range(50):  # the writes in flight, then the next ones, fail
                await writer.write(chunk)
            await writer.commit()
        message = str(info.value)
        assert message.startswith("inmemory: ")
        assert f"child process {first_pid}" in message and "signal 9" in message
        await writer.close()  # releasing a dead handle is harmless
        # Later calls work against a fresh child (the in-memory store is new).
        await driver.put_content("/after", b"ok")
        assert await driver.get_content("/after") == b"ok"
        assert inner.child_pid not in (None, first_pid)
        assert inner.restarts == 1
        assert not pid_alive(first_pid)
        with pytest.raises(PathNotFoundError):
            await driver.stat("/big")
        await driver.delete("/after")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_child_killed_mid_read_then_restarted() -> None:
    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    driver = StorageDriverWrapper(inner)
    try:
        data = os.urandom(8 << 20)
        await driver.put_content("/obj", data)
        reader = await driver.reader("/obj")
        first = await reader.read(1 << 16)
        assert first == data[: len(first)]
        pid = inner.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        got = len(first)
        with pytest.raises(DriverError, match=f"child process {pid} was killed by signal 9"):
            while True:  # what was prefetched may still arrive; then the error
                piece = await reader.read(1 << 16)
                assert piece, "a killed child's reader must not look like EOF"
                assert piece == data[got : got + len(piece)]
                got += len(piece)
        assert got < len(data)
        await reader.close()
        await driver.put_content("/obj", b"again")
        assert await driver.get_content("/obj") == b"again"
        await driver.delete("/obj")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_dead_child_is_restarted_without_a_call() -> None:
    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    try:
        await inner.list("/")
        pid = inner.child_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        await wait_for(lambda: inner.child_pid not in (None, pid), "the eager restart")
        assert inner.restarts == 1
        assert await inner.walk("/") == []
    finally:
        await inner.close()


@pytest_twisted.ensureDeferred
async def test_close_stops_the_child_and_later_calls_fail() -> None:
    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    driver = StorageDriverWrapper(inner)
    await driver.put_content("/a", b"1")
    writer = await driver.writer("/w")  # an open handle must not keep the child alive
    await writer.write(b"abc")
    pid = inner.child_pid
    assert pid is not None
    await driver.close()
    assert not pid_alive(pid)
    with pytest.raises(DriverError, match="closed"):
        await driver.get_content("/a")


PARENT_SCRIPT = """\
import sys
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from registry.storage.drivers.outofprocess import OutOfProcessDriver

async def main(reactor):
    driver = OutOfProcessDriver(sys.argv[1], {})
    await driver.list("/")
    print(driver.child_pid, flush=True)
    await task.deferLater(reactor, 120, lambda: None)

task.react(lambda reactor: ensureDeferred(main(reactor)))
"""


def pid_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody reaped counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest_twisted.ensureDeferred
async def test_child_exits_when_the_registry_is_killed() -> None:
    import subprocess

    parent = subprocess.Popen([sys.executable, "-c", PARENT_SCRIPT, str(INMEMORY)], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        line = await deferToThread(parent.stdout.readline)
        child_pid = int(line)
        assert not pid_gone(child_pid)
        parent.kill()  # SIGKILL: no chance to stop the child
        await deferToThread(parent.wait)
        await wait_for(lambda: pid_gone(child_pid), "the orphaned child to exit on stdin EOF")
    finally:
        parent.kill()
        parent.wait()


# --- values crossing the wire ----------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_large_listing_and_stat_cross_intact() -> None:
    driver = create_driver("outofprocess", {"executable": "inmemory"})
    try:
        # A listing far above one AMP value (65535 bytes) still arrives whole.
        names = [f"/d/{'n' * 200}{i:05d}" for i in range(600)]
        for name in names:
            await driver.put_content(name, b"x")
        assert await driver.list("/d") == sorted(names)
        walked = await driver.walk("/")
        assert len(walked) == 601 and all(isinstance(i, FileInfo) for i in walked)
        info = await driver.stat("/d")
        assert info.is_dir and info.path == "/d"
        assert await driver.redirect_url(names[0]) is None
        await driver.delete("/d")
    finally:
        await driver.close()


@pytest_twisted.ensureDeferred
async def test_writer_window_bounds_unacknowledged_bytes() -> None:
    from registry.storage.drivers import outofprocess

    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    try:
        writer: Any = await inner.writer("/w")
        done: Deferred[None] = writer.write(os.urandom(16 << 20))
        # 16 MiB cannot all be in flight: the write waits for acknowledgements.
        assert not done.called
        assert writer._unacked > outofprocess.WRITE_WINDOW
        await done
        assert writer._unacked <= outofprocess.WRITE_WINDOW
        await writer.commit()
        assert (await inner.stat("/w")).size == 16 << 20
        await inner.delete("/w")
    finally:
        await inner.close()


@pytest_twisted.ensureDeferred
async def test_reader_read_ahead_is_bounded_for_a_slow_consumer() -> None:
    from registry.storage.drivers import outofprocess

    inner = OutOfProcessDriver(INMEMORY, {}, name="inmemory")  # type: ignore[arg-type]
    try:
        data = os.urandom(16 << 20)
        await inner.put_content("/o", data)
        reader: Any = await inner.reader("/o", offset=5)
        assert await reader.read(3) == data[5:8]
        # Give the prefetch every chance to run ahead of a consumer that stalls.
        await wait_for(lambda: reader._in_flight == 0, "the read-ahead to settle")
        buffered = sum(len(b) for b in reader._buffer)
        assert len(reader._buffer) <= outofprocess.READ_AHEAD
        assert buffered <= outofprocess.READ_AHEAD * wire.STREAM_BYTES
        got = [data[5:8]]
        while piece := await reader.read(100_003):  # odd sizes across piece borders
            got.append(piece)
        assert b"".join(got) == data[5:]
        await reader.close()
        await inner.delete("/o")
    finally:
        await inner.close()


# --- filesystem over AMP -----------------------------------------------------------------

FILESYSTEM = find_executable("filesystem")
needs_filesystem = pytest.mark.skipif(FILESYSTEM is None, reason="registry-storage-filesystem not installed")


@needs_filesystem
@pytest_twisted.ensureDeferred
async def test_bad_child_parameters_fail_naming_the_key(log_lines: list[str]) -> None:
    driver = create_driver("outofprocess", {"executable": "filesystem", "params": {}})
    inner: Any = driver.wrapped  # type: ignore[attr-defined]
    try:
        with pytest.raises(DriverError, match="rootdirectory") as info:
            await driver.list("/")
        assert info.value.driver == "filesystem"
        # A refused configuration is not retried in a loop.
        await deferLater(reactor, 0.3, lambda: None)
        assert inner.child_pid is None and inner.restarts == 0
    finally:
        await driver.close()


@needs_filesystem
@pytest_twisted.ensureDeferred
async def test_open_writer_is_closed_not_lost_when_the_registry_stops(tmp_path: Path) -> None:
    from registry.storage.remote.wire import STREAM_BYTES

    params = {"executable": "filesystem", "params": {"rootdirectory": str(tmp_path)}}
    data = os.urandom(2 * STREAM_BYTES)  # whole pieces: nothing gathered client-side
    first = create_driver("outofprocess", params)
    writer = await first.writer("/upload/data")
    await writer.write(data)
    await first.close()  # without closing the writer: the child closes it
    second = create_driver("outofprocess", params)
    try:
        resumed = await second.writer("/upload/data", append=True)
        assert resumed.size == len(data)
        await resumed.write(b"tail")
        await resumed.commit()
        assert await second.get_content("/upload/data") == data + b"tail"
        await second.delete("/upload")
    finally:
        await second.close()
