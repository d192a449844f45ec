"""Upload purging removes only uploads older than the configured age."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import pytest_twisted

from registry.storage import paths
from registry.storage.blobs import BlobStore
from registry.storage.factory import create_driver
from registry.storage.purge import parse_started_at, purge_uploads
from registry.storage.errors import UploadUnknown
from registry.storage.uploads import UploadStore


@pytest.mark.parametrize(
    "text,expected",
    [
        ("2026-11-28T16:06:39Z", datetime(2026, 11, 28, 16, 6, 39, tzinfo=timezone.utc)),
        ("2026-11-28T16:06:39.123456789Z", datetime(2026, 11, 28, 16, 6, 39, 123456, tzinfo=timezone.utc)),
        ("2026-11-28T17:06:39.5+01:00", datetime(2026, 11, 28, 16, 6, 39, 500000, tzinfo=timezone.utc)),
        ("not a time", None),
        ("", None),
    ],
)
def test_parse_started_at(text: str, expected: datetime | None) -> None:
    assert parse_started_at(text) == expected


@pytest_twisted.ensureDeferred
async def test_purge_removes_old_uploads_only() -> None:
    driver = create_driver("inmemory", {})
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    clock = [start]
    uploads = UploadStore(driver, BlobStore(driver), now=lambda: clock[0])
    old = await uploads.create("a/b")
    clock[0] = start + timedelta(days=6)
    recent = await uploads.create("c")
    await driver.put_content(paths.layer_link("c", _digest()), b"sha256:" + b"0" * 64)
    later = start + timedelta(days=7, hours=1)
    # Dry run reports, removes nothing.
    assert await purge_uploads(driver, 7 * 86400, dry_run=True, now=lambda: later) == [paths.upload_dir("a/b", old)]
    assert await uploads.started_at("a/b", old)
    assert await purge_uploads(driver, 7 * 86400, now=lambda: later) == [paths.upload_dir("a/b", old)]
    assert [i.path for i in await driver.walk(paths.uploads_dir("c"))][0].startswith(paths.upload_dir("c", recent))
    with pytest.raises(UploadUnknown):
        await uploads.started_at("a/b", old)
    # Other repository content is untouched.
    assert await driver.get_content(paths.layer_link("c", _digest()))


def _digest():  # type: ignore[no-untyped-def]
    from registry.digest import Digest

    return Digest("sha256", "0" * 64)


@pytest_twisted.ensureDeferred
async def test_purge_finds_uploads_in_repositories_without_layers_and_without_startedat() -> None:
    """A repository that only ever had an upload is no catalog entry, and a
    torn upload may lack startedat: both are still purged by age."""
    driver = create_driver("inmemory", {})
    uploads = UploadStore(driver, BlobStore(driver), now=lambda: datetime(2026, 1, 1, tzinfo=timezone.utc))
    dated = await uploads.create("only/uploads")
    await driver.put_content(paths.upload_data("torn", "t-1"), b"partial")
    assert await purge_uploads(driver, 3600, now=lambda: datetime(2026, 1, 2, tzinfo=timezone.utc)) == [
        paths.upload_dir("only/uploads", dated)
    ]
    # The torn upload is judged by its modification time (just now).
    far_future = datetime.now(timezone.utc) + timedelta(days=30)
    assert await purge_uploads(driver, 3600, now=lambda: far_future) == [paths.upload_dir("torn", "t-1")]
    assert await driver.walk("/") == []
