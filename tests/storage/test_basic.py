"""Quick checks of the wrapper and the factory (the full suite is conformance.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from registry.storage.wrapper import StorageDriverWrapper
from registry.storage.driver import DriverError, InvalidPathError, IStorageDriver, PathNotFoundError
from registry.storage.factory import create_driver


def test_factory_wraps_inmemory() -> None:
    d = create_driver("inmemory", {})
    assert isinstance(d, StorageDriverWrapper)
    verifyObject(IStorageDriver, d)
    assert d.name == "inmemory"


def test_factory_unknown_name() -> None:
    with pytest.raises(ValueError, match="unknown driver 'nosuchdriver'"):
        create_driver("nosuchdriver", {})


def test_a_broken_out_of_process_module_is_not_an_unknown_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    # A module of this package that fails to import is a broken install: the
    # error must surface, not read as "unknown driver" (issue 9.2's rule for
    # the routes, applied to the driver lookup).
    monkeypatch.setitem(sys.modules, "registry.storage.drivers.outofprocess", None)
    with pytest.raises(ImportError, match="outofprocess"):
        create_driver("nosuchdriver", {})


@pytest_twisted.inlineCallbacks
def test_round_trip_and_errors():  # type: ignore[no-untyped-def]
    d = create_driver("inmemory", {})
    yield d.put_content("/a/b", b"hello")
    assert (yield d.get_content("/a/b")) == b"hello"
    with pytest.raises(InvalidPathError):
        yield d.get_content("/a/../b")
    with pytest.raises(PathNotFoundError) as info:
        yield d.get_content("/nope")
    assert info.value.driver == "inmemory"
    w = yield d.writer("/a/c")
    yield w.write(b"x")
    yield w.commit()
    with pytest.raises(DriverError):
        yield w.write(b"y")
    yield d.delete("/a")
    assert (yield d.walk("/")) == []


def _make_faulty(params, reactor):  # type: ignore[no-untyped-def]
    """A driver whose get_content raises a plain exception and whose writers
    never finish a write, to exercise the wrapper's normalisation and guards."""
    from twisted.internet.defer import Deferred, succeed
    from zope.interface import implementer

    from registry.storage.drivers.inmemory import InMemoryDriver, InMemoryWriter, _Object

    class Slow(InMemoryWriter):
        def write(self, data: bytes) -> Deferred[None]:
            return Deferred()  # never fires

    @implementer(IStorageDriver)
    class Faulty(InMemoryDriver):
        name = "faulty"

        def get_content(self, path: str) -> Deferred[bytes]:
            raise RuntimeError("disk on fire")

        def writer(self, path: str, append: bool = False):  # type: ignore[no-untyped-def]
            obj = self._objects.get(path) or _Object()
            self._store(path, obj)
            return succeed(Slow(self, path, obj))

    return Faulty()


@pytest_twisted.inlineCallbacks
def test_wrapper_normalises_errors_and_guards_writers():  # type: ignore[no-untyped-def]
    from registry.storage.factory import register_driver

    register_driver("faulty", _make_faulty)
    d = create_driver("faulty", {})
    with pytest.raises(DriverError) as info:
        yield d.get_content("/x")
    assert info.value.driver == "faulty" and "RuntimeError: disk on fire" in str(info.value)
    w = yield d.writer("/x")
    pending = w.write(b"a")
    assert not pending.called
    with pytest.raises(DriverError, match="before the previous write fired"):
        yield w.write(b"b")
    with pytest.raises(DriverError, match="before the previous write fired"):
        yield w.commit()
    yield d.delete("/x")


def test_unknown_params_warned_not_fatal() -> None:
    from twisted.logger import LogLevel, globalLogPublisher

    seen: list[str] = []

    def observer(event: dict) -> None:  # type: ignore[type-arg]
        if event.get("log_level") == LogLevel.warn:
            seen.append(f"storage.{event.get('driver')}.{event.get('key')}")

    globalLogPublisher.addObserver(observer)
    try:
        create_driver("inmemory", {"bogus": 1})
    finally:
        globalLogPublisher.removeObserver(observer)
    assert seen == ["storage.inmemory.bogus"]


@pytest_twisted.ensureDeferred
async def test_driver_service_closes_the_driver(tmp_path: Path) -> None:
    from twisted.application.service import MultiService

    from registry.storage.wrapper import DriverService

    driver = create_driver("filesystem", {"rootdirectory": str(tmp_path)})
    await driver.put_content("/a", b"x")
    app = MultiService()
    DriverService(driver).setServiceParent(app)
    app.startService()
    await app.stopService()
    with pytest.raises(DriverError, match="filesystem: driver is closed"):
        await driver.get_content("/a")
    await driver.close()  # closing again is harmless


def test_drivers_do_not_import_the_factory() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import registry.storage.drivers.filesystem, registry.storage.drivers.inmemory\n"
        "import registry.storage.drivers.outofprocess, registry.storage.streams\n"
        "assert 'registry.storage.factory' not in sys.modules, 'a driver imported the factory'\n"
        "assert 'registry.storage.remote.server' not in sys.modules, 'the client imported the server'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
