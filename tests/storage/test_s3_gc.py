"""``registry garbage-collect`` and ``registry check`` over the S3 driver on
the session's Ceph RGW, each run as its own process against the bucket the
test fills (issue 12: "any driver, including the S3 one").

S3 reports times two ways: a listing gives ``LastModified`` to the
millisecond, a HEAD gives ``Last-Modified`` to the second. The collector
walks (listing) and re-checks with ``stat`` (HEAD) right before deleting, and
``check --repair`` does the same before quarantining: the comparison has to
hold across the two precisions (``registry.storage.gc._same_time``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from registry.digest import Digest, sha256_digest
from registry.manifest_types import parse_manifest
from registry.storage import paths
from registry.storage.check import quarantine_path
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.factory import create_driver
from registry.storage.model import DataModel
from tests.storage.rgw import RGW, clean_env, shared_gateway
from tests.test_gc import blob_digests, manifest_body, pulls_completely, push_blob, push_image, put_manifest


def registry(*args: str) -> subprocess.CompletedProcess[str]:
    beside = os.path.join(os.path.dirname(sys.executable), "registry")
    argv = [beside] if os.access(beside, os.X_OK) else [sys.executable, "-m", "registry.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=120, env=clean_env())


class Bucket:
    """A fresh root directory in the gateway's bucket, a driver over it and
    a configuration file naming the same storage for the command."""

    def __init__(self, gateway: RGW, tmp_path: Path) -> None:
        self.params: dict[str, Any] = gateway.params(rootdirectory=f"t-{uuid.uuid4().hex[:12]}")
        self.driver: IStorageDriver = create_driver("s3", self.params)
        self.config = tmp_path / "config.yml"
        # JSON is YAML: the parameters exactly as the driver above got them.
        self.config.write_text(json.dumps({"version": "0.1", "storage": {"s3": self.params}}))


@pytest.fixture
def gateway() -> RGW:
    return shared_gateway()  # outside the reactor: starts the session's RGW or skips


@pytest_twisted.async_yield_fixture
async def bucket(gateway: RGW, tmp_path: Path) -> AsyncIterator[Bucket]:
    made = Bucket(gateway, tmp_path)
    try:
        yield made
    finally:
        try:
            await made.driver.delete("/")
        except PathNotFoundError:
            pass
        await made.driver.close()


async def past_the_second() -> None:
    """HEAD times have whole seconds: let the storage clock pass the next
    one, so a zero grace period makes what was written a candidate."""
    await deferLater(reactor, 1.1, lambda: None)


@pytest_twisted.ensureDeferred
async def test_garbage_collect_command_over_s3(bucket: Bucket) -> None:
    driver = bucket.driver
    model = DataModel.over(driver)
    await push_image(model, "keep/app", "a", tag="v1")
    untagged = await push_image(model, "keep/app", "u")
    untagged_blobs = {str(b.digest) for b in parse_manifest(await model.manifests.get("keep/app", untagged), None).blobs}
    orphan = await push_blob(model, "keep/app", b"orphan " * 1000)
    gone = await push_image(model, "gone", "b", tag="x")
    gone_blobs = {str(b.digest) for b in parse_manifest(await model.manifests.get("gone", gone), None).blobs}
    await model.manifests.delete("gone", gone)
    await past_the_second()
    before = await blob_digests(driver)

    dry = await deferToThread(registry, "garbage-collect", "--dry-run", "--grace", "0s", "--json", str(bucket.config))
    assert dry.returncode == 0, dry.stderr
    assert await blob_digests(driver) == before
    young = await deferToThread(registry, "garbage-collect", "--json", str(bucket.config))  # default grace: 1h
    assert young.returncode == 0 and json.loads(young.stdout)["blobs_deleted"] == 0, young.stdout + young.stderr

    real = await deferToThread(registry, "garbage-collect", "--grace", "0s", "--json", str(bucket.config))
    assert real.returncode == 0, real.stderr
    report = json.loads(real.stdout)
    expected = {orphan["digest"], str(gone)} | gone_blobs
    assert {b["digest"] for b in report["blobs"]} == expected, report
    assert report["blobs_deleted"] == len(expected) and report["kept_in_flight"] == 0
    assert report == {**json.loads(dry.stdout), "dry_run": False}  # the dry run said exactly this
    assert before - await blob_digests(driver) == expected
    await pulls_completely(model, "keep/app", "v1")
    assert await model.manifests.exists("keep/app", untagged)

    untag = await deferToThread(
        registry, "garbage-collect", "--grace", "0s", "--delete-untagged", "--json", str(bucket.config)
    )
    assert untag.returncode == 0, untag.stderr
    doc = json.loads(untag.stdout)
    assert doc["manifests"] == [{"repository": "keep/app", "digest": str(untagged)}]
    assert doc["manifests_deleted"] == 1
    # The manifest, its config and its layers (none shared with v1) go.
    assert {b["digest"] for b in doc["blobs"]} == {str(untagged)} | untagged_blobs
    await pulls_completely(model, "keep/app", "v1")
    assert not [i for i in await driver.walk("/") if "/_gc/" in i.path]  # no fence or clock probe left


@pytest_twisted.ensureDeferred
async def test_check_command_over_s3(bucket: Bucket) -> None:
    driver = bucket.driver
    model = DataModel.over(driver)
    config_blob = await push_blob(model, "app", b'{"a": 1}')
    layer = await push_blob(model, "app", b"layer of a " * 300)
    await put_manifest(model, "app", manifest_body(config_blob, [layer]), tag="v1")
    healthy = await deferToThread(registry, "check", str(bucket.config))
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "0 problems" in healthy.stdout

    corrupt = Digest.parse(layer["digest"])
    flipped = bytearray(await driver.get_content(paths.blob_data(corrupt)))
    flipped[10] ^= 0xFF
    await driver.put_content(paths.blob_data(corrupt), bytes(flipped))
    never_stored = sha256_digest(b"never stored")
    await driver.put_content(paths.layer_link("app", never_stored), str(never_stored).encode())
    await past_the_second()

    found = await deferToThread(registry, "check", str(bucket.config))
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"corrupt-blob: {paths.blob_data(corrupt)}" in found.stdout
    assert f"dangling-link: {paths.layer_link('app', never_stored)}" in found.stdout

    repaired = await deferToThread(registry, "check", "--repair", "--json", str(bucket.config))
    kinds = sorted((p["kind"], p["repaired"]) for p in json.loads(repaired.stdout)["problems"])
    assert kinds == [
        ("corrupt-blob", f"moved to {quarantine_path(corrupt)}"),
        ("dangling-link", "link removed"),  # the link to the quarantined blob
        ("dangling-link", "link removed"),
        ("manifest-blob-missing", None),  # v1's layer is gone for now: reported, left alone
    ], repaired.stdout
    assert repaired.returncode == 1
    assert await driver.get_content(quarantine_path(corrupt)) == bytes(flipped)  # quarantined, not deleted
    # The client pushes the layer again: healthy.
    await push_blob(model, "app", b"layer of a " * 300)
    final = await deferToThread(registry, "check", str(bucket.config))
    assert final.returncode == 0, final.stdout
    await pulls_completely(model, "app", "v1")
