"""Integrity check of a registry's storage (``registry check``).

Re-hashes every blob with the C core (``registry.hashing.Sha256``) and
reports blobs whose bytes do not match their digest, layer and revision links
that point at missing blobs, manifests that reference blobs or child
manifests that are not there, tags that cannot be read or point at no
manifest, and uploads older than the purge age.

With ``repair`` it changes only what is provably broken, and nothing else:

* a corrupt blob is *quarantined*, moved to
  ``/docker/registry/v2/_quarantine/<alg>/<hex>/data`` (never deleted: the
  bytes may matter to whoever investigates), so clients see it missing and
  push it again; only if it was not rewritten since it was hashed (same
  size and modification time; where ``stat`` reports whole seconds only,
  as S3's HEAD does, a blob in the same second is hashed again);
* a layer link or revision link whose blob is missing (after quarantine)
  is removed, after a re-check right before the removal;
* a manifest's layer link that is missing while the blob's data is stored
  is written again (the manifest was accepted with it).

Everything else (a manifest whose blob is gone for good, unreadable
manifests and tags, stale uploads — ``registry purge-uploads`` removes those)
is reported and left alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from registry.digest import Digest, DigestError
from registry.hashing import Sha256
from registry.manifest_types import ManifestError, parse_manifest
from registry.storage import paths
from registry.storage.blobs import link_content, parse_link
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.purge import _started
from registry.storage.verify import is_record_path

QUARANTINE = f"{paths.ROOT}/_quarantine"
READ_CHUNK = 1 << 20
Progress = Callable[[str, int, int], None]


def quarantine_path(d: Digest) -> str:
    return f"{QUARANTINE}/{d.algorithm}/{d.hex}/data"


@dataclass
class Problem:
    kind: str  # corrupt-blob, dangling-link, dangling-revision, manifest-blob-missing, ...
    where: str  # a storage path
    detail: str
    repaired: str = ""  # what --repair did, empty if nothing

    def line(self) -> str:
        text = f"{self.kind}: {self.where}: {self.detail}"
        return text + (f" [repaired: {self.repaired}]" if self.repaired else "")


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    blobs_checked: int = 0
    bytes_hashed: int = 0
    repositories: int = 0
    manifests: int = 0

    @property
    def unrepaired(self) -> list[Problem]:
        return [p for p in self.problems if not p.repaired]

    def summary(self) -> str:
        repaired = len(self.problems) - len(self.unrepaired)
        return (
            f"checked {self.blobs_checked} blobs ({self.bytes_hashed} bytes re-hashed), "
            f"{self.repositories} repositories, {self.manifests} manifests: "
            f"{len(self.problems)} problems, {repaired} repaired"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "blobs_checked": self.blobs_checked,
            "bytes_hashed": self.bytes_hashed,
            "repositories": self.repositories,
            "manifests": self.manifests,
            "problems": [
                {"kind": p.kind, "path": p.where, "detail": p.detail, "repaired": p.repaired or None}
                for p in self.problems
            ],
        }


async def _exists(driver: IStorageDriver, path: str) -> bool:
    try:
        await driver.stat(path)
    except PathNotFoundError:
        return False
    return True


class Checker:
    def __init__(
        self,
        driver: IStorageDriver,
        *,
        repair: bool = False,
        upload_age_s: float = 168 * 3600.0,
        progress: Progress | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.driver = driver
        self.repair = repair
        self.upload_age_s = upload_age_s
        self.progress = progress or (lambda phase, done, total: None)
        self.now = now or (lambda: datetime.now(timezone.utc))
        self.report = CheckReport()

    def _problem(self, kind: str, where: str, detail: str) -> Problem:
        p = Problem(kind, where, detail)
        self.report.problems.append(p)
        return p

    async def run(self) -> CheckReport:
        await self._check_blobs()
        names = await Catalog(self.driver).repositories()
        self.report.repositories = len(names)
        for i, name in enumerate(names):
            self.progress("repositories", i, len(names))
            await self._check_repository(name)
        self.progress("repositories", len(names), len(names))
        await self._check_uploads()
        return self.report

    # -- blobs -----------------------------------------------------------------

    async def _hash(self, path: str) -> tuple[str, int]:
        hasher = Sha256()
        reader = await self.driver.reader(path)
        try:
            while True:
                chunk = await reader.read(READ_CHUNK)
                if not chunk:
                    break
                hasher.update(chunk)
        finally:
            await reader.close()
        return hasher.hexdigest(), hasher.bytes_hashed

    async def _check_blobs(self) -> None:
        try:
            infos = [i for i in await self.driver.walk(paths.BLOBS) if not i.is_dir]
        except PathNotFoundError:
            infos = []
        total = sum(i.size for i in infos)
        done = 0
        for info in infos:
            self.progress("re-hash blobs", done, total)
            parts = info.path.split("/")
            if is_record_path(info.path):
                continue  # a verified layer's record beside its blob (registry.storage.verify)
            try:
                d = Digest.parse(f"{parts[-4]}:{parts[-2]}")
            except (DigestError, IndexError):
                d = None
            if d is None or paths.blob_data(d) != info.path:
                self._problem("stray-object", info.path, "not a blob's data in the blob store layout")
                continue
            try:
                actual, size = await self._hash(info.path)
            except PathNotFoundError:
                continue  # collected meanwhile
            done += size
            self.report.blobs_checked += 1
            self.report.bytes_hashed += size
            if d.algorithm != "sha256" or actual == d.hex:
                continue
            p = self._problem(
                "corrupt-blob", info.path, f"its {size} bytes hash to sha256:{actual}, not {d}"
            )
            if self.repair:
                try:
                    now = await self.driver.stat(info.path)
                except PathNotFoundError:
                    continue
                if now.size != info.size or math.floor(now.mod_time) != math.floor(info.mod_time):
                    continue  # rewritten meanwhile: left for the next check
                if now.mod_time != info.mod_time:
                    # ``stat`` is coarser than the walk (S3: whole seconds):
                    # the time cannot tell a rewrite in the same second, the
                    # bytes can.
                    try:
                        again, _ = await self._hash(info.path)
                    except PathNotFoundError:
                        continue
                    if again == d.hex:
                        continue
                await self.driver.move(info.path, quarantine_path(d))
                p.repaired = f"moved to {quarantine_path(d)}"
        self.progress("re-hash blobs", total, total)

    # -- repositories ------------------------------------------------------------

    async def _links(self, directory: str) -> list[tuple[str, Digest | None, bytes | None]]:
        """(link path, digest named by its directory, content) below ``directory``."""
        try:
            infos = await self.driver.walk(directory)
        except PathNotFoundError:
            return []
        out = []
        depth = directory.count("/") + 3
        for info in infos:
            if info.is_dir or info.path.count("/") != depth or not info.path.endswith("/link"):
                continue
            parts = info.path.split("/")
            try:
                d: Digest | None = Digest.parse(f"{parts[-3]}:{parts[-2]}")
            except DigestError:
                d = None
            try:
                content: bytes | None = await self.driver.get_content(info.path)
            except PathNotFoundError:
                continue
            out.append((info.path, d, content))
        return out

    async def _remove_dangling(self, p: Problem, link_path: str, d: Digest) -> None:
        if not self.repair:
            return
        if await _exists(self.driver, paths.blob_data(d)):
            return  # stored meanwhile: not broken any more
        try:
            await self.driver.delete(link_path.rsplit("/", 1)[0])
        except PathNotFoundError:
            return
        p.repaired = "link removed"

    async def _check_repository(self, name: str) -> None:
        driver = self.driver
        for path, d, content in await self._links(paths.layers_dir(name)):
            if d is None or content is None or _parse(content) != d:
                self._problem("corrupt-link", path, f"content {content!r} does not name the blob of its path")
                continue
            if not await _exists(driver, paths.blob_data(d)):
                p = self._problem("dangling-link", path, f"repository {name!r} links blob {d}, which is not stored")
                await self._remove_dangling(p, path, d)
        revisions: set[Digest] = set()
        for path, d, content in await self._links(paths.manifest_revisions_dir(name)):
            if d is None or content is None or _parse(content) != d:
                self._problem("corrupt-link", path, f"content {content!r} does not name the manifest of its path")
                continue
            revisions.add(d)
        for d in sorted(revisions, key=str):
            self.report.manifests += 1
            path = paths.manifest_revision_link(name, d)
            try:
                body = await driver.get_content(paths.blob_data(d))
            except PathNotFoundError:
                p = self._problem("dangling-revision", path, f"manifest {d} of {name!r} has no stored bytes")
                await self._remove_dangling(p, path, d)
                continue
            try:
                manifest = parse_manifest(body, None)
            except ManifestError as e:
                self._problem("unreadable-manifest", path, f"manifest {d} of {name!r} does not parse: {e}")
                continue
            for desc in manifest.blobs:
                stored = await _exists(driver, paths.blob_data(desc.digest))
                linked = await _exists(driver, paths.layer_link(name, desc.digest))
                if stored and linked:
                    continue
                what = "is not stored" if not stored else "is stored but not linked into the repository"
                p = self._problem("manifest-blob-missing", path, f"manifest {d} of {name!r} references blob {desc.digest}, which {what}")
                if stored and self.repair:
                    await driver.put_content(paths.layer_link(name, desc.digest), link_content(desc.digest))
                    p.repaired = "layer link written again"
            for child in manifest.children:
                if child.digest not in revisions and not await _exists(
                    driver, paths.manifest_revision_link(name, child.digest)
                ):
                    self._problem("manifest-child-missing", path, f"index {d} of {name!r} references manifest {child.digest}, which is not in the repository")
        try:
            tag_dirs = await driver.list(paths.tags_dir(name))
        except PathNotFoundError:
            tag_dirs = []
        for tag_dir in tag_dirs:
            tag = tag_dir.rsplit("/", 1)[-1]
            current = paths.tag_current_link(name, tag)
            try:
                target = parse_link(await driver.get_content(current))
            except PathNotFoundError:
                self._problem("unreadable-tag", current, f"tag {tag!r} of {name!r} has no current link")
                continue
            except DigestError:
                self._problem("unreadable-tag", current, f"tag {tag!r} of {name!r} does not hold a digest")
                continue
            if target not in revisions and not await _exists(driver, paths.manifest_revision_link(name, target)):
                self._problem("dangling-tag", current, f"tag {tag!r} of {name!r} points at {target}, which is not a manifest of the repository")

    # -- uploads -----------------------------------------------------------------

    async def _check_uploads(self) -> None:
        current = self.now()
        for name, children in await Catalog(self.driver).name_directories():
            if "_uploads" not in children:
                continue
            try:
                uploads = await self.driver.list(paths.uploads_dir(name))
            except PathNotFoundError:
                continue
            for upload in uploads:
                started = await _started(self.driver, upload)
                if started is None:
                    continue
                age = (current - started).total_seconds()
                if age > self.upload_age_s:
                    self._problem(
                        "stale-upload", upload,
                        f"started {started.isoformat()} ({age / 3600:.1f} h ago); `registry purge-uploads` removes it",
                    )


def _parse(content: bytes) -> Digest | None:
    try:
        return parse_link(content)
    except DigestError:
        return None


async def check(driver: IStorageDriver, **kwargs: Any) -> CheckReport:
    """Run one ``Checker(driver, **kwargs)``."""
    return await Checker(driver, **kwargs).run()
