"""Garbage collection (``registry garbage-collect``): mark and sweep over any
storage driver, safe to run in another process while the registry serves
pushes against the same storage.

What it removes
---------------
*Mark*: every manifest revision of every repository is kept (with
``delete_untagged``, only those a tag reaches — directly, as a child of a
kept index, or as a referrer whose subject is kept — plus young ones), and
marks what it references: its own bytes, its config and layers, the children
of an index, its subject. *Sweep*: a repository's layer link that no kept
manifest of that repository references, then a blob that no kept manifest of
any repository references and no repository links.

The invariant and how it is kept
--------------------------------
**A manifest the registry has accepted never references a blob that is
gone, and a blob whose upload or link is in flight is never swept**, with
collections running in other processes while clients push. Coordination is
through the storage only (processes share nothing else), and the driver has
no compare-and-swap, so the design rests on three rules:

1. *Grace period.* Only objects (blob data, layer links, revision links)
   whose modification time is before ``cutoff = start - grace`` are
   candidates (default grace 1 h). Layers pushed a moment ago, whose
   manifest has not arrived yet, are therefore never candidates: with the
   default grace a push whose blobs were uploaded within the hour is never
   refused. ``--grace 0s`` makes everything unreferenced a candidate; a
   push racing it may then be refused (never silently broken).
2. *Re-check under a fence, right before deleting* (``registry.storage.fence``).
   For each batch of candidates the collector first writes a fence object
   naming their digests, then re-reads what could have started using them
   since it marked — the repositories' revision links (new or rewritten
   manifests are read and marked), their tags (for untagged manifests), the
   layer links to the candidate blobs (any link keeps a blob) — and the
   candidate's own modification time (a rewritten object is kept); then it
   deletes links before blob data, and lowers the fence.
3. *Writers verify after writing.* A manifest PUT writes its revision link
   (and tag), then waits while a fence names a digest it depends on, then
   verifies with the driver that its blobs, layer links and child manifests
   exist; a layer link (upload commit, mount) is verified the same way.
   Something a writer can restore (a layer link whose blob data is there,
   its own revision) it writes again; a blob or child manifest that is gone
   makes the PUT fail with ``MANIFEST_BLOB_UNKNOWN`` after undoing its
   writes, so the client pushes the blob again.

Why that is enough: take a writer W that writes its dependency at time w and
reads the fences at r > w, and a collector batch that writes its fence at
f, re-reads at c > f and deletes at x > c. If w < c the collector's re-read
sees W's dependency and keeps the digest. Otherwise r > w > c > f: W sees the
fence (and waits until it is lowered, after x) or the fence was lowered
already (after x); either way W's verification happens after the deletion
and sees it. So W never reports success over a deleted dependency. Fences
expire after a lease (60 s) so a crashed collector blocks nobody; a
collector deletes only during the first half of its fence's lease.

Choices, and what is left:

* The writer's "flag" is the revision link (for an upload or a mount, the
  layer link) it writes anyway, not a refresh of every layer link it depends
  on: the collector's re-check re-reads revisions, so no extra writes are
  needed on the push path. The extra cost of a manifest PUT is one ``list``
  of the fence directory (absent when no collection sweeps) and two ``stat``
  per referenced blob.
* A layer link re-checks the blob after writing; an upload commit whose
  already-stored copy was swept meanwhile moves its own bytes into place
  instead (``UploadStore.commit``). Only an upload whose bytes were moved
  and then swept (possible with ``--grace 0s``, or an upload idle for longer
  than the grace period before it was finished) is refused with
  ``BLOB_UNKNOWN``: refused, never reported stored while gone.
* Unreadable manifests stop the run before anything is deleted
  (``GCError``): their references cannot be known.
* Clocks: the cutoff is taken from the storage's own clock (the mtime of a
  probe object), so grace compares like with like; fence expiry uses the
  processes' clocks, which must agree to well within the lease.
* Time precision: a driver may report modification times more coarsely to
  ``stat`` than to ``walk`` (S3: a HEAD to the second, a listing to the
  millisecond). The re-check then takes a whole-second ``stat`` time in the
  listed time's second as unchanged only when that second lies before the
  cutoff's: anything written since the run started is at or after the
  cutoff, so it cannot be mistaken for the listed object. A candidate
  listed in the cutoff's own second is kept (``GarbageCollector._unchanged``).

Cost: each batch of up to ``batch_size`` candidates re-lists the revisions
(and, for blobs, the layer links) of every repository; the mark phase reads
every manifest once.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable

from twisted.logger import Logger

from registry.digest import Digest, DigestError
from registry.manifest_types import OCI_EMPTY_DIGEST, Manifest, ManifestError, parse_manifest
from registry.storage import paths
from registry.storage.catalog import Catalog
from registry.storage.driver import IStorageDriver, PathNotFoundError
from registry.storage.fence import LEASE_S, Fence

log = Logger(namespace="registry.gc")

DEFAULT_GRACE_S = 3600.0
Progress = Callable[[str, int, int], None]


class GCError(Exception):
    """Garbage collection stopped before deleting anything unsafe (e.g. a
    manifest it cannot parse, whose references it cannot know)."""


@dataclass
class GCReport:
    """What a collection removed (or, dry run, would remove)."""

    dry_run: bool
    grace_s: float
    blobs: list[tuple[str, int]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    manifests: list[tuple[str, str]] = field(default_factory=list)
    kept_in_flight: int = 0

    @property
    def bytes_freed(self) -> int:
        return sum(size for _, size in self.blobs)

    def summary(self) -> str:
        verb = "would free" if self.dry_run else "freed"
        removed = "would remove" if self.dry_run else "removed"
        return (
            f"garbage collection {verb} {len(self.blobs)} blobs ({_human(self.bytes_freed)}, "
            f"{self.bytes_freed} bytes); {removed} {len(self.manifests)} manifests and "
            f"{len(self.links)} layer links; kept {self.kept_in_flight} objects touched during the run"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "grace_seconds": self.grace_s,
            "blobs_deleted": len(self.blobs),
            "bytes_freed": self.bytes_freed,
            "manifests_deleted": len(self.manifests),
            "links_deleted": len(self.links),
            "kept_in_flight": self.kept_in_flight,
            "blobs": [{"digest": d, "size": s} for d, s in self.blobs],
            "manifests": [{"repository": n, "digest": d} for n, d in self.manifests],
            "links": [{"repository": n, "digest": d} for n, d in self.links],
        }


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _digest_of_link_path(path: str, depth_from_end: int) -> Digest | None:
    """The digest named by the ``<alg>/<hex>`` directories of a link path
    (``.../<alg>/<hex>/link``): ``depth_from_end`` counts the segments after
    ``<hex>``."""
    parts = path.split("/")
    try:
        alg, hex_ = parts[-2 - depth_from_end], parts[-1 - depth_from_end]
        return Digest.parse(f"{alg}:{hex_}")
    except (IndexError, DigestError):
        return None


@dataclass
class _Repo:
    """What the collector saw in one repository."""

    revisions: dict[Digest, float] = field(default_factory=dict)  # digest -> link mtime
    tags: dict[str, Digest] = field(default_factory=dict)


class GarbageCollector:
    """One mark-and-sweep run over ``driver``. See the module docstring."""

    def __init__(
        self,
        driver: IStorageDriver,
        *,
        grace_s: float = DEFAULT_GRACE_S,
        delete_untagged: bool = False,
        dry_run: bool = False,
        progress: Progress | None = None,
        now: Callable[[], float] = time.time,
        lease_s: float = LEASE_S,
        batch_size: int = 256,
        invalidate: Callable[[list[Digest]], Awaitable[None]] | None = None,
    ) -> None:
        if grace_s < 0:
            raise ValueError("the grace period cannot be negative")
        self.driver = driver
        self.grace_s = grace_s
        self.delete_untagged = delete_untagged
        self.dry_run = dry_run
        self.progress = progress or (lambda phase, done, total: None)
        self.now = now
        self.lease_s = lease_s
        self.batch_size = batch_size
        #: Forgets digests in a shared blob-descriptor cache (Redis): called
        #: under the fence before a batch's links or blobs are deleted (a
        #: failure stops the run before deleting) and again after.
        self.invalidate = invalidate
        self.run_id = uuid.uuid4().hex
        self.cutoff = 0.0
        self.report = GCReport(dry_run=dry_run, grace_s=grace_s)
        # digest -> parsed manifest (content-addressed, so never stale)
        self._manifests: dict[Digest, Manifest] = {}

    # -- reading -------------------------------------------------------------

    async def _manifest(self, d: Digest) -> Manifest | None:
        if d in self._manifests:
            return self._manifests[d]
        try:
            body = await self.driver.get_content(paths.blob_data(d))
        except PathNotFoundError:
            return None  # not cached: it may be pushed again while we run
        try:
            manifest = parse_manifest(body, None)
        except ManifestError as e:
            raise GCError(
                f"manifest {d} cannot be parsed ({e}); its references are unknown, so nothing is collected: "
                "run `registry check` and remove or repair it"
            ) from None
        self._manifests[d] = manifest
        return manifest

    async def _links(self, directory: str) -> dict[Digest, float]:
        """The ``<alg>/<hex>/link`` objects below ``directory`` with their mtimes."""
        try:
            infos = await self.driver.walk(directory)
        except PathNotFoundError:
            return {}
        found: dict[Digest, float] = {}
        for info in infos:
            if info.is_dir or not info.path.endswith("/link"):
                continue
            d = _digest_of_link_path(info.path, 1)
            if d is not None and info.path.count("/") == directory.count("/") + 3:
                found[d] = info.mod_time
        return found

    async def _read_repo(self, name: str, with_tags: bool) -> _Repo:
        repo = _Repo(revisions=await self._links(paths.manifest_revisions_dir(name)))
        if with_tags:
            try:
                tag_dirs = await self.driver.list(paths.tags_dir(name))
            except PathNotFoundError:
                tag_dirs = []
            for tag_dir in tag_dirs:
                tag = tag_dir.rsplit("/", 1)[-1]
                try:
                    data = await self.driver.get_content(paths.tag_current_link(name, tag))
                    repo.tags[tag] = Digest.parse(data.strip().decode("ascii", "replace"))
                except (PathNotFoundError, DigestError):
                    continue
        return repo

    def _unchanged(self, listed: float, stated: float) -> bool:
        """Whether the modification time ``stat`` reports now is the one the
        walk listed for a candidate (see "Time precision" above)."""
        if listed == stated:
            return True
        coarse = stated == math.floor(stated) or listed == math.floor(listed)
        return coarse and math.floor(listed) == math.floor(stated) and math.floor(listed) < math.floor(self.cutoff)

    async def _repositories(self) -> list[str]:
        return await Catalog(self.driver).repositories()

    def _refs(self, manifest: Manifest | None) -> set[Digest]:
        if manifest is None:
            return set()
        refs = {desc.digest for desc in manifest.blobs}
        refs.update(c.digest for c in manifest.children)
        if manifest.subject is not None:
            refs.add(manifest.subject.digest)
        return refs

    # -- the run ----------------------------------------------------------------

    async def run(self) -> GCReport:
        start = await self._storage_now()
        self.cutoff = start - self.grace_s
        log.info(
            "garbage collection {run} starting (grace {grace}s, delete untagged: {untagged}, dry run: {dry})",
            run=self.run_id, grace=self.grace_s, untagged=self.delete_untagged, dry=self.dry_run,
        )
        repos = await self._repositories()
        doomed_manifests: dict[str, set[Digest]] = {}
        if self.delete_untagged:
            for i, name in enumerate(repos):
                self.progress("untagged manifests", i, len(repos))
                doomed_manifests[name] = await self._delete_untagged(name)
            self.progress("untagged manifests", len(repos), len(repos))
        # Mark: every revision that is left (in a dry run: not doomed).
        marked: set[Digest] = set()
        repo_marks: dict[str, set[Digest]] = {}
        for i, name in enumerate(repos):
            self.progress("mark", i, len(repos))
            repo = await self._read_repo(name, with_tags=False)
            refs: set[Digest] = set()
            for d in repo.revisions:
                if d in doomed_manifests.get(name, set()):
                    continue
                marked.add(d)
                refs |= self._refs(await self._manifest(d))
            repo_marks[name] = refs
            marked |= refs
        self.progress("mark", len(repos), len(repos))
        for i, name in enumerate(repos):
            self.progress("sweep links", i, len(repos))
            await self._sweep_links(name, repo_marks[name], marked)
        self.progress("sweep links", len(repos), len(repos))
        await self._sweep_blobs(marked)
        log.info("garbage collection {run}: {summary}", run=self.run_id, summary=self.report.summary())
        return self.report

    async def _storage_now(self) -> float:
        """The storage's clock (the mtime of an object written now), so the
        cutoff compares with mtimes the storage assigned. A dry run writes
        nothing and uses this process's clock."""
        if self.dry_run:
            return self.now()
        probe = f"{paths.ROOT}/_gc/clock/{self.run_id}"
        await self.driver.put_content(probe, b"")
        try:
            return min((await self.driver.stat(probe)).mod_time, self.now())
        finally:
            try:
                await self.driver.delete(probe)
            except PathNotFoundError:
                pass

    # -- untagged manifests -----------------------------------------------------

    async def _survivors(self, name: str, repo: _Repo, touched: dict[Digest, float]) -> set[Digest]:
        """Revisions of ``name`` that stay: tagged, young (or changed since
        ``touched`` recorded them), and the closure over index children and
        referrers of survivors."""
        alive = {d for d in repo.tags.values() if d in repo.revisions}
        alive |= {
            d for d, mtime in repo.revisions.items() if mtime >= self.cutoff or touched.get(d, mtime) != mtime
        }
        subjects: dict[Digest, Digest] = {}
        for d in repo.revisions:
            manifest = await self._manifest(d)
            if manifest is not None and manifest.subject is not None:
                subjects[d] = manifest.subject.digest
        pending = list(alive)
        while True:
            while pending:
                d = pending.pop()
                manifest = await self._manifest(d)
                for c in manifest.children if manifest is not None else ():
                    if c.digest in repo.revisions and c.digest not in alive:
                        alive.add(c.digest)
                        pending.append(c.digest)
            added = [d for d, s in subjects.items() if s in alive and d not in alive]
            if not added:
                return alive
            alive.update(added)
            pending.extend(added)

    async def _delete_untagged(self, name: str) -> set[Digest]:
        """Remove the revisions of ``name`` that no tag reaches; returns them."""
        repo = await self._read_repo(name, with_tags=True)
        seen = dict(repo.revisions)
        candidates = set(repo.revisions) - await self._survivors(name, repo, seen)
        if not candidates:
            return set()
        if self.dry_run:
            self.report.manifests.extend((name, str(d)) for d in sorted(candidates, key=str))
            return candidates
        deleted: set[Digest] = set()
        for batch in _batches(sorted(candidates, key=str), self.batch_size):
            fence = Fence(self.driver, self.run_id, batch, self.lease_s)
            await fence.raise_()
            try:
                again = await self._read_repo(name, with_tags=True)
                survivors = await self._survivors(name, again, seen)
                for d in batch:
                    if d in survivors or d not in again.revisions:
                        self.report.kept_in_flight += d in survivors
                        continue
                    if not fence.usable():
                        break
                    await self._remove_revision(name, d, again)
                    deleted.add(d)
                    self.report.manifests.append((name, str(d)))
            finally:
                await fence.lower()
        return deleted

    async def _remove_revision(self, name: str, d: Digest, repo: _Repo) -> None:
        """Delete revision ``d`` of ``name``: its referrers entry, the tag
        history entries naming it, then the revision link (never a tag's
        current link: a tag pointing at it makes it a survivor)."""
        manifest = await self._manifest(d)
        if manifest is not None and manifest.subject is not None:
            await _delete_quietly(self.driver, paths.referrer_link(name, manifest.subject.digest, d))
        try:
            tag_dirs = await self.driver.list(paths.tags_dir(name))
        except PathNotFoundError:
            tag_dirs = []
        for tag_dir in tag_dirs:
            tag = tag_dir.rsplit("/", 1)[-1]
            await _delete_quietly(self.driver, paths.tag_index_link(name, tag, d).rsplit("/", 1)[0])
        await _delete_quietly(self.driver, paths.manifest_revision_link(name, d).rsplit("/", 1)[0])

    # -- layer links ------------------------------------------------------------

    async def _sweep_links(self, name: str, referenced: set[Digest], marked: set[Digest]) -> None:
        links = await self._links(paths.layers_dir(name))
        candidates = sorted(
            (d for d, mtime in links.items() if d not in referenced and mtime < self.cutoff), key=str
        )
        if not candidates:
            return
        if self.dry_run:
            self.report.links.extend((name, str(d)) for d in candidates)
            return
        for batch in _batches(candidates, self.batch_size):
            fence = Fence(self.driver, self.run_id, batch, self.lease_s)
            await fence.raise_()
            try:
                await self._invalidate(batch, before=True)
                # Manifests pushed (or rewritten) since the mark.
                now_referenced = set(referenced)
                for d in (await self._read_repo(name, with_tags=False)).revisions:
                    now_referenced |= self._refs(await self._manifest(d))
                marked |= now_referenced
                for d in batch:
                    if d in now_referenced:
                        self.report.kept_in_flight += 1
                        continue
                    try:
                        mtime = (await self.driver.stat(paths.layer_link(name, d))).mod_time
                    except PathNotFoundError:
                        continue
                    if not self._unchanged(links[d], mtime):
                        self.report.kept_in_flight += 1
                        continue
                    if not fence.usable():
                        break
                    await _delete_quietly(self.driver, paths.layer_link(name, d).rsplit("/", 1)[0])
                    self.report.links.append((name, str(d)))
                await self._invalidate(batch, before=False)
            finally:
                await fence.lower()

    # -- blobs -----------------------------------------------------------------

    async def _blob_data(self) -> dict[Digest, tuple[float, int]]:
        try:
            infos = await self.driver.walk(paths.BLOBS)
        except PathNotFoundError:
            return {}
        found: dict[Digest, tuple[float, int]] = {}
        for info in infos:
            if info.is_dir or not info.path.endswith("/data"):
                continue
            parts = info.path.split("/")
            try:
                d = Digest.parse(f"{parts[-4]}:{parts[-2]}")
            except DigestError:
                continue
            if paths.blob_data(d) == info.path:
                found[d] = (info.mod_time, info.size)
        return found

    async def _sweep_blobs(self, marked: set[Digest]) -> None:
        blobs = await self._blob_data()
        candidates = sorted(
            (d for d, (mtime, _) in blobs.items() if d not in marked and mtime < self.cutoff), key=str
        )
        # Links that survived the link sweep keep their blobs.
        if not candidates:
            self.progress("sweep blobs", 0, 0)
            return
        done = 0
        for batch in _batches(candidates, self.batch_size):
            self.progress("sweep blobs", done, len(candidates))
            done += len(batch)
            fence: Fence | None = None
            if not self.dry_run:
                fence = Fence(self.driver, self.run_id, batch, self.lease_s)
                await fence.raise_()
            try:
                if fence is not None:
                    await self._invalidate(batch, before=True)
                in_use = await self._in_use(set(batch), marked)
                for d in batch:
                    if d in in_use:
                        continue
                    if fence is None:
                        self.report.blobs.append((str(d), blobs[d][1]))
                        continue
                    try:
                        info = await self.driver.stat(paths.blob_data(d))
                    except PathNotFoundError:
                        continue
                    if not self._unchanged(blobs[d][0], info.mod_time):
                        self.report.kept_in_flight += 1
                        continue
                    if not fence.usable():
                        break
                    await _delete_quietly(self.driver, paths.blob_dir(d))
                    self.report.blobs.append((str(d), info.size))
                if fence is not None:
                    await self._invalidate(batch, before=False)
            finally:
                if fence is not None:
                    await fence.lower()
        self.progress("sweep blobs", len(candidates), len(candidates))

    async def _invalidate(self, batch: list[Digest], *, before: bool) -> None:
        """Forget ``batch`` in the shared cache. Before deleting, a failure
        stops the run (nothing deleted a cache could still serve); after, it
        is logged (the tombstones written before still hold). The storage's
        host-wide generation (``registry.storage.generation``) is bumped
        first, so in-process content caches of every process on the host
        drop what they hold (each deletion bumps it again)."""
        generation = getattr(self.driver, "generation", None)
        if generation is not None:
            generation.bump()
        if self.invalidate is None:
            return
        try:
            await self.invalidate(batch)
        except Exception as e:
            if before:
                raise GCError(
                    f"the blob-descriptor cache (Redis) cannot be reached ({e}); nothing was deleted "
                    "that it could still serve: run garbage collection again when Redis is back"
                ) from None
            log.warn("forgetting swept digests in the cache failed after deleting them: {error}", error=e)

    async def _in_use(self, batch: set[Digest], marked: set[Digest]) -> set[Digest]:
        """The digests of ``batch`` that some repository links (a layer link
        of any age) or that a manifest stored now references."""
        in_use = batch & marked
        if self.dry_run:
            # Nothing was deleted: links the run would have removed do not count.
            would_go = {(n, d) for n, d in self.report.links}
            for name in await self._repositories():
                in_use |= {d for d in await self._links(paths.layers_dir(name)) if (name, str(d)) not in would_go} & batch
            return in_use
        for name in await self._repositories():
            for d in (await self._read_repo(name, with_tags=False)).revisions:
                in_use |= ({d} | self._refs(await self._manifest(d))) & batch
            in_use |= set(await self._links(paths.layers_dir(name))) & batch
        self.report.kept_in_flight += len(in_use - marked)
        return in_use


def _batches(items: list[Digest], size: int) -> Iterable[list[Digest]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def _delete_quietly(driver: IStorageDriver, path: str) -> None:
    try:
        await driver.delete(path)
    except PathNotFoundError:
        pass


async def collect(driver: IStorageDriver, **kwargs: Any) -> GCReport:
    """Run one ``GarbageCollector(driver, **kwargs)``."""
    return await GarbageCollector(driver, **kwargs).run()


def report_json(report: GCReport) -> str:
    return json.dumps(report.to_json(), indent=2)
