"""Upload purging (``storage.maintenance.uploadpurging``): remove uploads
that were started longer ago than a maximum age and never finished, as
Distribution does, so abandoned data does not accumulate."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Callable

from twisted.logger import Logger

from registry.storage import paths
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver, PathNotFoundError

log = Logger(namespace="registry.purge")


def parse_started_at(text: str) -> datetime | None:
    """Parse an RFC 3339 ``startedat`` (Distribution writes Go's format, with
    up to nine fractional digits); None when it is not a time."""
    text = text.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:
        head, _, rest = text.partition(".")
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        text = f"{head}.{(digits + '000000')[:6]}{rest}"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


async def purge_uploads(
    driver: IStorageDriver, max_age_s: float, dry_run: bool = False, now: Callable[[], datetime] | None = None
) -> list[str]:
    """Delete every upload directory older than ``max_age_s``; returns their
    paths (the ones that would go, with ``dry_run``). An upload whose
    ``startedat`` is missing or unreadable is judged by its modification time.
    Only name directories and ``_uploads`` are listed, never layers or
    manifests, so the cost follows the number of repositories and uploads."""
    current = (now or (lambda: datetime.now(timezone.utc)))()
    purged: list[str] = []
    for name, children in await Catalog(driver).name_directories():
        if "_uploads" not in children:
            continue
        try:
            uploads = await driver.list(paths.uploads_dir(name))
        except PathNotFoundError:
            continue
        for upload in uploads:
            started = await _started(driver, upload)
            if started is None or (current - started).total_seconds() <= max_age_s:
                continue
            purged.append(upload)
            if dry_run:
                log.info("upload purging (dry run): would remove {path}", path=upload)
                continue
            try:
                await driver.delete(upload)
            except PathNotFoundError:
                continue
            log.info("upload purging: removed {path} (started {started})", path=upload, started=started.isoformat())
    return purged


async def _started(driver: IStorageDriver, upload: str) -> datetime | None:
    """When the upload at ``upload`` began: its ``startedat``, else its
    directory's modification time; None if it vanished meanwhile."""
    try:
        started = parse_started_at((await driver.get_content(upload + "/startedat")).decode("ascii", "replace"))
    except PathNotFoundError:
        started = None
    if started is not None:
        return started
    try:
        return datetime.fromtimestamp((await driver.stat(upload)).mod_time, timezone.utc)
    except PathNotFoundError:
        return None
