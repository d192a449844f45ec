"""The contracts of the registry's data model (layer 4), as resources see it.

Resources depend on these interfaces only, never on the classes that
implement them over a storage driver, so a wrapper can stand in for any of
them without a resource changing:

- a cache (``registry.storage.cache``, in-process or Redis) wraps
  ``IBlobDescriptors`` (a blob's size, whether a repository links it), and
  may wrap ``ITagStore.resolve`` and ``IManifestStore.get``;
- a pull-through proxy wraps ``IBlobStore``, ``IManifestStore`` and
  ``ITagStore`` with read-through stores backed by an upstream registry;
- a shared ``IUploadLock`` (Redis) replaces the process-local one so
  instances sharing the storage never interleave requests of one upload.

``registry.storage.model.DataModel`` holds one of each and takes them as
constructor arguments; ``DataModel.over(driver)`` builds the defaults.

Every method returns an awaitable (the implementations are coroutines;
``Deferred`` works too) and fails with the ``registry.storage.errors``
(``ModelError`` subclasses) named in its docstring; any other failure is a
storage failure (``registry.storage.driver.StorageError``) passed through.
Digests are ``registry.digest.Digest``; names are valid repository names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from registry.digest import Digest
    from registry.manifest_types import Manifest
    from registry.storage.driver import IFileReader


class IBlobDescriptors(Interface):
    """What is known about blobs without reading them: the size of a stored
    blob, and which repositories link it. These are the lookups every pull
    and push repeats (HEAD of a layer, manifest reference checks, mounts),
    and the ones a cache wraps.

    Every change of a link goes through ``link`` / ``unlink`` here, so a
    wrapper sees it. Blobs themselves come into being elsewhere (an upload's
    commit, a manifest's bytes) and are never changed, only removed by
    garbage collection: a cache may keep a size it has seen, but must not
    keep a ``None`` (the blob may be stored a moment later)."""

    def size(d: "Digest") -> "Awaitable[int | None]":
        """Fire with the size in bytes of stored blob ``d``, or ``None`` if it
        is not stored (in any repository)."""

    def is_linked(name: str, d: "Digest") -> "Awaitable[bool]":
        """Fire with True if repository ``name`` links blob ``d`` (whether the
        blob's data is stored is ``size``'s question)."""

    def link(name: str, d: "Digest") -> "Awaitable[None]":
        """Make blob ``d`` part of repository ``name``. Idempotent. The caller
        has made sure the blob is stored; fails with ``BlobUnknown`` (and no
        link left) if a garbage collection in another process removed it
        meanwhile (``registry.storage.fence``)."""

    def unlink(name: str, d: "Digest") -> "Awaitable[None]":
        """Remove blob ``d`` from repository ``name`` (its data stays until
        garbage collection). Fails with ``BlobUnknown`` if it was not linked."""


class IBlobStore(Interface):
    """Blob content: sizes as a repository sees them, readers, small
    content, redirects. A pull-through proxy wraps this to fetch what is
    missing from its upstream."""

    descriptors = Attribute(
        "The IBlobDescriptors every lookup and link change of this store goes through "
        "(the data model's other stores use the same one)."
    )

    def repo_size(name: str, d: "Digest") -> "Awaitable[int]":
        """Fire with the size of blob ``d`` as repository ``name`` sees it.
        Fails with ``BlobUnknown`` unless ``name`` links it and it is stored."""

    def open(d: "Digest", offset: int = 0) -> "Awaitable[IFileReader]":
        """Fire with a reader of blob ``d``'s bytes from ``offset``. Fails with
        ``BlobUnknown`` if it is not stored (the caller checked the
        repository with ``repo_size``)."""

    def get_content(d: "Digest") -> "Awaitable[bytes]":
        """Fire with all bytes of small blob ``d`` (manifests). Fails with
        ``BlobUnknown`` if it is not stored."""

    def put_content(d: "Digest", data: bytes) -> "Awaitable[None]":
        """Store small ``data`` (whose digest the caller computed as ``d``),
        unless a blob of that size is stored already. Links nothing."""

    def redirect_url(d: "Digest", method: str = "GET") -> "Awaitable[str | None]":
        """Fire with a URL the client may fetch blob ``d`` from directly
        (a driver-signed URL), or ``None`` to serve it here."""


class ITagStore(Interface):
    """Tags: names of a repository that point at manifest digests."""

    def resolve(name: str, tag: str) -> "Awaitable[Digest]":
        """Fire with the digest ``tag`` points at in ``name``. Fails with
        ``ManifestUnknown`` if the tag does not exist (or its link is corrupt)."""

    def tag(name: str, tag: str, d: "Digest") -> "Awaitable[None]":
        """Point ``tag`` of ``name`` at manifest ``d`` (replacing where it
        pointed before)."""

    def untag(name: str, tag: str) -> "Awaitable[None]":
        """Remove ``tag`` from ``name``. Fails with ``ManifestUnknown`` if it
        does not exist."""

    def untag_each(name: str, tags: "list[str]") -> "Awaitable[list[str]]":
        """Remove each of ``tags`` from ``name``; fire with those that
        existed. Where tags are cached across instances, one wait for every
        instance's cache, not one per tag (a manifest DELETE removes all its
        tags)."""

    def all(name: str) -> "Awaitable[list[str] | None]":
        """Fire with every tag of ``name``, sorted by code point; ``None``
        when the repository has no tags at all (no tags directory)."""

    def tags_of(name: str, d: "Digest") -> "Awaitable[list[str]]":
        """Fire with the tags of ``name`` that point at ``d`` (reads every
        tag: for deletes, not for pulls)."""


class IManifestStore(Interface):
    """Manifests of repositories, and the referrers index."""

    def exists(name: str, d: "Digest") -> "Awaitable[bool]":
        """Fire with True if manifest ``d`` is a revision of ``name``."""

    def get(name: str, d: "Digest") -> "Awaitable[bytes]":
        """Fire with the exact bytes pushed as manifest ``d`` of ``name``.
        Fails with ``ManifestUnknown`` if it is not a revision there (or its
        bytes are gone)."""

    def put(name: str, body: bytes, manifest: "Manifest", d: "Digest", tag: str | None = None) -> "Awaitable[None]":
        """Store ``body`` (parsed as ``manifest``, digest ``d``) as a revision
        of ``name``, and tag it ``tag`` if given. Fails, before anything is
        written, with ``ManifestBlobUnknown`` (a referenced blob or child
        manifest is not in ``name``) or ``ManifestInvalid``; or with
        ``ManifestBlobUnknown`` after undoing its writes, when a concurrent
        garbage collection removed a referenced blob (never a success that
        leaves a dangling reference)."""

    def delete(name: str, d: "Digest") -> "Awaitable[list[str]]":
        """Remove manifest ``d`` from ``name``, with every tag pointing at it
        and its referrers entry. Fires with the tags removed; fails with
        ``ManifestUnknown`` if it is not a revision of ``name``."""

    def referrers(name: str, subject: "Digest") -> "Awaitable[list[dict[str, Any]]]":
        """Fire with the descriptors (``mediaType``, ``digest``, ``size``,
        and when present ``artifactType``, ``annotations``) of the manifests
        of ``name`` whose subject is ``subject``; ``[]`` when there are none
        or the repository is unknown. Never fails for an unknown name."""


class ICatalog(Interface):
    """The repositories in the storage."""

    def repositories() -> "Awaitable[list[str]]":
        """Fire with every repository name, sorted by code point."""

    def exists(name: str) -> "Awaitable[bool]":
        """Fire with True if ``name`` is a repository (has layers or
        manifests)."""

    def page(n: int, last: str | None = None, prefix: str = "") -> "Awaitable[tuple[list[str], bool]]":
        """Fire with ``(names, more)``: at most ``n`` repository names that
        sort after ``last`` (code-point order, as ``repositories``) and
        start with ``prefix``, and whether more such names follow. Reads
        only what the page needs (the web page shows 10,000 repositories a
        page at a time without walking them all)."""


class IUploadLock(Interface):
    """Mutual exclusion of the requests of one upload: the requests that
    read or change an upload's state (append, status, commit, cancel) hold
    its lock, so two of them never interleave. The process-local
    implementation is ``registry.storage.locks.ProcessLocks``; instances
    sharing a storage need a shared one (Redis)."""

    def acquire(name: str, upload_id: str) -> "Awaitable[Callable[[], Awaitable[None]]]":
        """Wait until the caller holds the lock of upload ``upload_id`` of
        repository ``name``; fire with its ``release``. The holder calls
        ``release()`` exactly once and awaits what it returns (a shared lock
        may need a round trip to let go; a process-local one fires at once).
        Cancelling the wait gives up the place in the queue."""


class IUploadAppender(Interface):
    """One request's bytes appended to an upload while the upload's lock is
    held. ``finish`` or ``fail`` must be awaited exactly once (it releases
    the lock)."""

    upload_id = Attribute("The upload's id.")
    start_offset = Attribute("Bytes the upload held when this appender was opened.")
    offset = Attribute("Bytes in the upload, including those appended so far.")

    def write(data: bytes) -> "Deferred[None]":
        """Hash and append ``data`` (called once per body chunk: the hot
        path). Fires when storage can take more, which is the backpressure;
        the caller waits for it before the next ``write``. Fails with a
        ``StorageError``."""

    def finish() -> "Awaitable[int]":
        """Make the appended bytes part of the upload (stores the hash state
        at the new offset) and release the lock. Fires with the new offset."""

    def fail() -> "Awaitable[None]":
        """Release the lock after a failed request without storing a state;
        the next request re-derives it from the data. Never fails."""


class IUploadStore(Interface):
    """Resumable blob uploads."""

    def create(name: str) -> "Awaitable[str]":
        """Start an upload in repository ``name``; fire with its id."""

    def started_at(name: str, upload_id: str) -> "Awaitable[bytes]":
        """Fire with the upload's start time (RFC 3339, as stored). Fails with
        ``UploadUnknown``."""

    def status(name: str, upload_id: str) -> "Awaitable[int]":
        """Fire with the offset the client continues from (repairing a torn
        tail after a crash). Fails with ``UploadUnknown``."""

    def open_appender(name: str, upload_id: str, expect_start: int | None = None) -> "Awaitable[IUploadAppender]":
        """Lock the upload and fire with an ``IUploadAppender`` at its end.
        Fails with ``UploadUnknown``, or ``UploadOffsetMismatch`` when
        ``expect_start`` (a ``Content-Range`` start) is not the upload's
        offset; the lock is released on failure."""

    def open_for_digest(
        name: str, upload_id: str | None, digest: "Digest", expect_start: int | None = None
    ) -> "Awaitable[IUploadAppender]":
        """As ``open_appender``, for a body after which the upload is
        committed as ``digest`` (``upload_id`` None: a new upload). If the
        appender's ``committed`` is True after ``finish``, ``finish`` already
        verified, stored and linked the blob (the caller does not
        ``commit``); otherwise the caller commits as usual."""

    def commit(name: str, upload_id: str, expected: "Digest") -> "Awaitable[int]":
        """Verify the upload's content against ``expected`` from its stored
        hash state, make it blob ``expected`` linked into ``name`` and remove
        the upload. Fires with the blob's size. Fails with ``UploadUnknown``
        or ``DigestMismatch`` (nothing committed; the upload stays)."""

    def cancel(name: str, upload_id: str) -> "Awaitable[None]":
        """Remove the upload and its data. Fails with ``UploadUnknown``."""
