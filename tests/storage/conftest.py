"""Fixtures for the storage driver tests.

``DRIVERS`` maps a test id to a function building a fresh, wrapped driver
over a scratch directory; every test of the conformance suite runs once per
entry. Adding a driver to the suite is one line here (two with a comment).
``IN_PROCESS_MEMORY`` names the drivers whose objects live in this process's
memory, so the bounded-memory test allows for the object itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import pytest_twisted

from registry.storage.driver import IStorageDriver
from registry.storage.factory import create_driver
from tests.storage.rgw import s3_driver, shared_gateway, stop_shared_gateway

DriverMaker = Callable[[Path], IStorageDriver]

DRIVERS: dict[str, DriverMaker] = {
    "inmemory": lambda root: create_driver("inmemory", {}),
    "filesystem": lambda root: create_driver("filesystem", {"rootdirectory": str(root)}),
    # Out-of-process: the filesystem driver served by registry-storage-filesystem over AMP.
    "filesystem-amp": lambda root: create_driver("outofprocess", {"executable": "filesystem", "params": {"rootdirectory": str(root)}}),
    # S3 on a throwaway Ceph RADOS Gateway (tests/storage/rgw.py), one per session; skips without Ceph.
    "s3": lambda root: s3_driver(),
}

IN_PROCESS_MEMORY = {"inmemory"}


@pytest.fixture(scope="session", autouse=True)
def _rgw_session() -> Any:
    """Stops the session's RGW (started on first use by ``s3_driver``)."""
    yield
    stop_shared_gateway()


@pytest.fixture(params=sorted(DRIVERS))
def driver_name(request: pytest.FixtureRequest) -> str:
    """The id of the driver under test."""
    name: str = request.param
    if name == "s3":
        shared_gateway()  # starts the session's RGW, or skips (fails under CI) here, outside the reactor
    return name


@pytest_twisted.async_yield_fixture
async def driver(driver_name: str, tmp_path: Path) -> AsyncIterator[IStorageDriver]:
    """A fresh driver; after the test, the store must be empty again."""
    root = tmp_path / "store"
    root.mkdir()
    made = DRIVERS[driver_name](root)
    try:
        yield made
        left = await made.walk("/")
        assert left == [], f"test left objects behind: {[i.path for i in left]}"
    finally:
        closer: Any = getattr(made, "close", None)
        if closer is not None:
            await closer()
