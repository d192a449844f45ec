"""Quick checks of the wrapper and the factory (the full suite is conformance.py)."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyObject

from registry.storage.base import StorageDriverWrapper
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
