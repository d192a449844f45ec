"""Scheduled garbage collection (``storage.maintenance.gc``,
``registry.storage.gcservice``): several instances over one storage, real
drivers and the real reactor (short intervals), the lease in the storage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

from registry.config import load_config
from registry.digest import sha256_digest
from registry.storage import paths
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.factory import create_driver
from registry.storage.gc import GCReport, collect
from registry.storage.gcservice import LEASE_PATH, GCScheduleService, Lease
from registry.storage.model import DataModel


def fs_driver(root: Path) -> IStorageDriver:
    return create_driver("filesystem", {"rootdirectory": str(root)})


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def orphan_blob(driver: IStorageDriver, seed: str) -> str:
    """A blob no manifest references, linked nowhere."""
    data = f"orphan {seed} ".encode() * 100
    d = sha256_digest(data)
    await DataModel.over(driver).blobs.put_content(d, data)
    return str(d)


async def exists(driver: IStorageDriver, digest: str) -> bool:
    from registry.digest import Digest

    try:
        await driver.stat(paths.blob_data(Digest.parse(digest)))
    except PathNotFoundError:
        return False
    return True


def service(driver: IStorageDriver, owner: str, **kw: Any) -> GCScheduleService:
    opts: dict[str, Any] = dict(interval=1.0, grace=0.0, lease_s=3.0, settle_s=0.3, check_s=0.1)
    opts.update(kw)
    return GCScheduleService(driver, owner=owner, **opts)


async def stop(*services: GCScheduleService) -> None:
    for s in services:
        if s.running:
            await defer.maybeDeferred(s.stopService)


@pytest_twisted.ensureDeferred
async def test_two_instances_over_one_storage_collect_once_per_interval(tmp_path: Path) -> None:
    root = tmp_path / "store"
    a_driver, b_driver = fs_driver(root), fs_driver(root)
    a, b = service(a_driver, "instance-a"), service(b_driver, "instance-b")
    orphan = await orphan_blob(a_driver, "first")
    await sleep(0.05)  # older than the storage clock's "now" at the first run
    a.startService()
    b.startService()  # same phase: both check at the same moments and race for the lease
    try:
        deadline = time.time() + 4.5
        while time.time() < deadline:
            await sleep(0.1)
    finally:
        await stop(a, b)
    runs = sorted([(r.taken, r.started, r.finished) for r in [*a.runs, *b.runs]])
    # About one run per interval: at least two in 4.5 s (a loaded machine is slow), never more than one per interval.
    assert 2 <= len(runs) <= 5, runs
    for (t1, _, f1), (t2, s2, _) in zip(runs, runs[1:]):
        assert f1 <= s2, f"runs overlap: {runs}"
        assert t2 - t1 >= 1.0, f"two runs within one interval: {runs}"
    assert all(r.error is None for r in [*a.runs, *b.runs])
    # The orphan was collected by exactly one run; the others found nothing.
    collected = [r.report for r in [*a.runs, *b.runs] if r.report and orphan in dict(r.report.blobs)]
    assert len(collected) == 1
    assert not await exists(a_driver, orphan)
    # Both instances checked; the one not collecting saw the lease held, lost the race or found it not due.
    assert a.skips and b.skips
    assert set(a.skips) | set(b.skips) <= {"held", "not due", "lost", "busy"}
    lease = Lease.parse(await a_driver.get_content(LEASE_PATH))
    assert lease.owner == "" and lease.last_owner in (a.owner, b.owner) and "garbage collection freed" in lease.last_summary


@pytest_twisted.ensureDeferred
async def test_a_crashed_holders_lease_expires_and_another_instance_collects(tmp_path: Path) -> None:
    driver = fs_driver(tmp_path / "store")
    orphan = await orphan_blob(driver, "crash")
    now = time.time()
    crashed = Lease(owner="dead-host:1:x", token="t", expires=now + 1.5, last_started=now - 100)
    await driver.put_content(LEASE_PATH, crashed.to_bytes())
    await sleep(0.05)
    s = service(driver, "survivor")
    s.startService()
    try:
        await sleep(1.0)
        # The dead holder's lease is not expired yet: nobody collects.
        assert not s.runs and await exists(driver, orphan)
        assert "held" in s.skips
        deadline = time.time() + 5
        while not s.runs and time.time() < deadline:
            await sleep(0.1)
    finally:
        await stop(s)
    assert len(s.runs) >= 1 and s.runs[0].started >= now + 1.5
    assert not await exists(driver, orphan)
    lease = Lease.parse(await driver.get_content(LEASE_PATH))
    assert lease.owner == "" and lease.last_owner == s.owner


@pytest_twisted.ensureDeferred
async def test_a_long_run_renews_its_lease_and_is_never_overlapped(tmp_path: Path) -> None:
    root = tmp_path / "store"
    a_driver, b_driver = fs_driver(root), fs_driver(root)
    gate: defer.Deferred[None] = defer.Deferred()
    entered: list[float] = []

    async def held_open(driver: IStorageDriver, **kw: Any) -> GCReport:
        entered.append(time.time())
        await gate
        return await collect(driver, **kw)

    a = service(a_driver, "slow", lease_s=0.6, collect=held_open)
    a.startService()
    try:
        while not entered:
            await sleep(0.05)
        b = service(b_driver, "other", lease_s=0.6)
        b.startService()
        try:
            await sleep(2.0)  # three leases long: renewals keep it held
            assert not b.runs, "the second instance collected while the first one's run was in progress"
            assert "held" in b.skips
            a.tick()  # a check in the process already collecting does nothing
            assert a.skips[-1] == "busy"
            lease = Lease.parse(await a_driver.get_content(LEASE_PATH))
            assert lease.owner == a.owner and lease.expires > time.time()
            gate.callback(None)
            while not a.runs:
                await sleep(0.05)
        finally:
            await stop(b)
    finally:
        await stop(a)
    assert a.runs[0].error is None and a.runs[0].finished - a.runs[0].started >= 2.0


@pytest_twisted.ensureDeferred
async def test_stopping_cancels_a_run_and_gives_the_lease_back(tmp_path: Path) -> None:
    driver = fs_driver(tmp_path / "store")
    entered: list[bool] = []

    async def forever(driver: IStorageDriver, **kw: Any) -> GCReport:
        entered.append(True)
        await defer.Deferred()  # cancelled by stopService
        raise AssertionError("not reached")

    s = service(driver, "stopping", collect=forever)
    s.startService()
    while not entered:
        await sleep(0.05)
    await defer.maybeDeferred(s.stopService)
    assert s.runs[-1].error is not None and "cancelled" in s.runs[-1].error
    lease = Lease.parse(await driver.get_content(LEASE_PATH))
    assert lease.owner == "" and lease.last_owner == s.owner and "cancelled" in lease.last_summary


def test_configuration_and_application() -> None:
    from registry.app import make_application
    from registry.storage.gcservice import GCScheduleService as Svc

    config = load_config(
        "version: 0.1\nstorage:\n  inmemory: {}\n  maintenance:\n    gc:\n      enabled: true\n"
        "      interval: 12h\n      grace: 30m\n      deleteuntagged: true\n      dryrun: true\n",
        {},
    )
    gc = config.storage.gc
    assert (gc.enabled, gc.interval, gc.grace, gc.deleteuntagged, gc.dryrun) == (True, 12 * 3600, 1800, True, True)
    assert not config.warnings
    default = load_config("version: 0.1\nstorage: inmemory\n", {}).storage.gc
    assert (default.enabled, default.interval, default.grace, default.deleteuntagged, default.dryrun) == (
        False, 24 * 3600, 3600, False, False)
    app = make_application(config, reactor)
    [svc] = [s for s in app.services if isinstance(s, Svc)]
    assert (svc.interval, svc.grace, svc.delete_untagged, svc.dry_run) == (12 * 3600, 1800, True, True)
    readonly = load_config(
        "version: 0.1\nstorage:\n  inmemory: {}\n  maintenance:\n    readonly: {enabled: true}\n    gc: {enabled: true}\n", {}
    )
    assert not [s for s in make_application(readonly, reactor).services if isinstance(s, Svc)]
    assert not [s for s in make_application(load_config("version: 0.1\nstorage: inmemory\n", {}), reactor).services
                if isinstance(s, Svc)]
    from registry.config import ConfigError

    with pytest.raises(ConfigError, match="storage.maintenance.gc.interval"):
        load_config("version: 0.1\nstorage: inmemory\n", {"REGISTRY_STORAGE_MAINTENANCE_GC_INTERVAL": "0s"})
    with pytest.raises(ConfigError, match="storage.maintenance.gc.grace"):
        load_config("version: 0.1\nstorage: inmemory\n", {"REGISTRY_STORAGE_MAINTENANCE_GC_GRACE": "-1h"})


def test_lease_document_round_trips() -> None:
    lease = Lease(owner="o", token="t", expires=5.0, last_started=1.0, last_finished=2.0, last_owner="p", last_summary="s")
    assert Lease.parse(lease.to_bytes()) == lease
    assert json.loads(lease.to_bytes())["owner"] == "o"
    assert lease.held(4.9) and not lease.held(5.0) and not Lease(expires=10).held(0)
