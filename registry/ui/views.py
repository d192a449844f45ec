"""What the web page shows, gathered from the data model: plain data for
the templates (``registry.ui.pages``), no HTML here.

Everything is read through ``DataModel`` and its store interfaces, the same
calls the API makes (``tags.resolve``, ``manifests.get``, ``catalog.page``,
``manifests.referrers``, ``blobs.repo_size``/``get_content``), so a cache or
a proxy wrapping a store serves the page too. Independent reads run
concurrently, at most ``CONCURRENCY`` at a time (a storage driver's thread
pool then stays busy without being flooded).

A manifest's summary (media type, total size, created time, platforms)
depends only on its bytes and those of its config and children, which never
change for a digest: ``SummaryCache`` keeps the most recent ones, so a
repository page read again costs one tag lookup per tag. Whether a tag
exists and where it points is always read anew.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, TypeVar

from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, gatherResults

from registry.digest import Digest, DigestError
from registry.manifest_types import Descriptor, Manifest, ManifestError, media_type_of, parse_manifest
from registry.storage.errors import BlobUnknown, ManifestUnknown, NameUnknown
from registry.storage.model import DataModel

T = TypeVar("T")
R = TypeVar("R")

#: Reads in flight at once for one page.
CONCURRENCY = 32
#: The largest config blob read for a summary or shown on a manifest page.
MAX_CONFIG_BYTES = 4 * 1024 * 1024
#: Config media types whose content is JSON worth showing.
_JSON_SUFFIXES = ("+json", "/json")


async def bounded(fn: Callable[[T], Awaitable[R]], items: Iterable[T], limit: int = CONCURRENCY) -> list[R]:
    """``[await fn(x) for x in items]``, with at most ``limit`` running at once."""
    semaphore = DeferredSemaphore(limit)
    work: list[Deferred[R]] = [semaphore.run(_start, fn, x) for x in items]
    if not work:
        return []
    results: list[R] = await gatherResults(work, consumeErrors=True).addErrback(_first_error)
    return results


def _start(fn: Callable[[T], Awaitable[R]], x: T) -> Deferred[R]:
    async def call() -> R:
        return await fn(x)

    return ensureDeferred(call())


def _first_error(failure: Any) -> Any:
    """gatherResults wraps a failure in FirstError; pass the cause on."""
    from twisted.internet.defer import FirstError

    if failure.check(FirstError):
        return failure.value.subFailure
    return failure


def platform_text(platform: Any) -> str:
    """``os/architecture[/variant]`` of an index entry's ``platform`` ("" when absent)."""
    if not isinstance(platform, dict):
        return ""
    parts = [platform.get("os"), platform.get("architecture"), platform.get("variant")]
    return "/".join(str(p) for p in parts if isinstance(p, str) and p)


def is_json_type(media_type: str) -> bool:
    return media_type.endswith(_JSON_SUFFIXES)


@dataclass(frozen=True)
class Summary:
    """One manifest at a glance."""

    digest: Digest
    media_type: str
    #: Compressed bytes a pull transfers: config plus layers; for an index,
    #: the sum over its children (None when a child cannot be read).
    size: int | None
    #: ``created`` from the config, as written there (None when absent).
    created: str | None = None
    #: ``os/arch[/variant]`` of each child, for an index.
    platforms: tuple[str, ...] = ()
    artifact_type: str | None = None


class SummaryCache:
    """The most recent ``capacity`` summaries, by digest (a digest's content
    never changes, so a summary never goes stale)."""

    def __init__(self, capacity: int = 20_000) -> None:
        self.capacity = capacity
        self._items: OrderedDict[Digest, Summary] = OrderedDict()

    def get(self, d: Digest) -> Summary | None:
        found = self._items.get(d)
        if found is not None:
            self._items.move_to_end(d)
        return found

    def put(self, summary: Summary) -> None:
        self._items[summary.digest] = summary
        self._items.move_to_end(summary.digest)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)


def parse_stored(body: bytes) -> tuple[Manifest, dict[str, Any]]:
    """A stored manifest's description and its JSON object (validated at
    push; ``ManifestError`` if the stored bytes are not a manifest)."""
    manifest = parse_manifest(body, media_type_of(body))
    obj = json.loads(body)
    if not isinstance(obj, dict):
        raise ManifestError("the stored manifest is not a JSON object")
    return manifest, obj


class Reader:
    """The page's reads of one data model."""

    def __init__(self, model: DataModel, cache: SummaryCache | None = None) -> None:
        self.model = model
        self.cache = cache if cache is not None else SummaryCache()

    # -- repositories ---------------------------------------------------------

    async def repositories(self, n: int, last: str | None, prefix: str) -> tuple[list[str], bool]:
        """A page of repository names (``ICatalog.page``)."""
        return await self.model.catalog.page(n, last, prefix)

    # -- one repository's tags -----------------------------------------------

    async def tags(self, name: str) -> list[str]:
        """Every tag of ``name``, sorted. Fails with ``NameUnknown`` when
        ``name`` is no repository."""
        tags = await self.model.tags.all(name)
        if tags is None:
            if not await self.model.catalog.exists(name):
                raise NameUnknown(name)
            return []
        return tags

    async def tag_rows(self, name: str, tags: list[str]) -> list[tuple[str, Summary | None]]:
        """Each tag with the summary of the manifest it points at (None when
        the tag's link or manifest is broken). Manifests several tags share
        are read once."""
        async def resolve(tag: str) -> Digest | None:
            try:
                return await self.model.tags.resolve(name, tag)
            except ManifestUnknown:
                return None

        digests = await bounded(resolve, tags)
        unique = list(dict.fromkeys(d for d in digests if d is not None))
        summaries: dict[Digest, Summary | None] = {d: self.cache.get(d) for d in unique}
        missing = [d for d, s in summaries.items() if s is None]  # only these need reads
        summaries.update(zip(missing, await bounded(lambda d: self.summary(name, d), missing)))
        return [(tag, summaries.get(d) if d is not None else None) for tag, d in zip(tags, digests)]

    async def summary(self, name: str, d: Digest) -> Summary | None:
        """The summary of manifest ``d`` of ``name`` (None when it is not
        there or cannot be parsed)."""
        cached = self.cache.get(d)
        if cached is not None:
            return cached
        try:
            manifest, obj = parse_stored(await self.model.manifests.get(name, d))
        except (ManifestUnknown, ManifestError, ValueError):
            return None
        if manifest.is_index:
            children = [c for c in manifest.children]
            child_summaries = await bounded(lambda c: self.summary(name, c.digest), children)
            sizes = [s.size if s is not None else None for s in child_summaries]
            total = None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)
            raw_children = obj.get("manifests") or []
            platforms = tuple(
                p for p in (platform_text(c.get("platform")) for c in raw_children if isinstance(c, dict)) if p
            )
            summary = Summary(d, manifest.media_type, total, None, platforms, manifest.artifact_type)
        else:
            size = sum(layer.size for layer in manifest.layers) + (manifest.config.size if manifest.config else 0)
            created = await self._created(manifest.config)
            summary = Summary(d, manifest.media_type, size, created, (), manifest.effective_artifact_type)
        self.cache.put(summary)
        return summary

    async def _created(self, config: Descriptor | None) -> str | None:
        if config is None or not is_json_type(config.media_type) or config.size > MAX_CONFIG_BYTES:
            return None
        try:
            obj = json.loads(await self.model.blobs.get_content(config.digest))
        except (BlobUnknown, ValueError):
            return None
        created = obj.get("created") if isinstance(obj, dict) else None
        return created if isinstance(created, str) else None

    # -- one manifest ----------------------------------------------------------

    async def resolve(self, name: str, reference: str) -> Digest:
        """The digest ``reference`` (a tag or a digest) names in ``name``.
        Fails with ``ManifestUnknown``."""
        try:
            return Digest.parse(reference)
        except DigestError:
            if ":" in reference:
                raise
        return await self.model.tags.resolve(name, reference)

    async def manifest(self, name: str, reference: str) -> ManifestDetail:
        """Everything the manifest page shows. Fails with ``ManifestUnknown``
        (or ``NameUnknown``) when there is no such manifest."""
        d = await self.resolve(name, reference)
        body = await self.model.manifests.get(name, d)
        manifest, obj = parse_stored(body)
        detail = ManifestDetail(
            name=name,
            reference=reference,
            digest=d,
            media_type=manifest.media_type,
            body_size=len(body),
            manifest=manifest,
            pretty=json.dumps(obj, indent=2, ensure_ascii=False),
        )
        if manifest.is_index:
            raw_children = [c for c in obj.get("manifests") or [] if isinstance(c, dict)]
            detail.children = [
                (child, platform_text(raw.get("platform"))) for child, raw in zip(manifest.children, raw_children)
            ]
        elif manifest.config is not None:
            detail.config = await self._config(name, manifest.config)
        detail.referrers = await self.model.manifests.referrers(name, d)
        return detail

    async def _config(self, name: str, config: Descriptor) -> ConfigDetail:
        shown = ConfigDetail(descriptor=config)
        if not is_json_type(config.media_type):
            shown.note = "not JSON: content not shown"
            return shown
        if config.size > MAX_CONFIG_BYTES:
            shown.note = f"larger than {MAX_CONFIG_BYTES} bytes: content not shown"
            return shown
        try:
            await self.model.blobs.repo_size(name, config.digest)
            data = await self.model.blobs.get_content(config.digest)
        except BlobUnknown:
            shown.note = "the config blob is missing from this repository"
            return shown
        try:
            obj = json.loads(data)
        except ValueError:
            shown.note = "the config blob is not valid JSON"
            return shown
        shown.pretty = json.dumps(obj, indent=2, ensure_ascii=False)
        if isinstance(obj, dict):
            shown.fill(obj)
        return shown


@dataclass
class ConfigDetail:
    """An image config: the fields worth a table, and the whole JSON."""

    descriptor: Descriptor
    pretty: str | None = None
    note: str | None = None
    created: str | None = None
    platform: str = ""
    env: list[str] = field(default_factory=list)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    workdir: str | None = None
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    diff_ids: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)

    def fill(self, obj: dict[str, Any]) -> None:
        """Take the known fields of config JSON ``obj`` (wrong types are skipped)."""
        created = obj.get("created")
        self.created = created if isinstance(created, str) else None
        self.platform = platform_text(obj)
        cfg = obj.get("config")
        if isinstance(cfg, dict):
            self.env = _strings(cfg.get("Env")) or []
            self.entrypoint = _strings(cfg.get("Entrypoint"))
            self.cmd = _strings(cfg.get("Cmd"))
            self.workdir = cfg.get("WorkingDir") if isinstance(cfg.get("WorkingDir"), str) else None
            self.user = cfg.get("User") if isinstance(cfg.get("User"), str) else None
            labels = cfg.get("Labels")
            if isinstance(labels, dict):
                self.labels = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in labels.items()}
        rootfs = obj.get("rootfs")
        if isinstance(rootfs, dict):
            self.diff_ids = _strings(rootfs.get("diff_ids")) or []
        history = obj.get("history")
        if isinstance(history, list):
            self.history = [h for h in history if isinstance(h, dict)]


def _strings(value: Any) -> list[str] | None:
    if isinstance(value, list):
        return [v if isinstance(v, str) else json.dumps(v) for v in value]
    return None


@dataclass
class ManifestDetail:
    """A manifest as its page shows it."""

    name: str
    reference: str
    digest: Digest
    media_type: str
    body_size: int
    manifest: Manifest
    pretty: str
    config: ConfigDetail | None = None
    #: For an index: each child with its ``os/arch[/variant]``.
    children: list[tuple[Descriptor, str]] = field(default_factory=list)
    #: Referrer descriptors (``IManifestStore.referrers``).
    referrers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        """Config plus layers (image manifests)."""
        m = self.manifest
        return sum(layer.size for layer in m.layers) + (m.config.size if m.config else 0)
