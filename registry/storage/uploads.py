"""Resumable blob uploads whose whole state lives in the storage driver.

An upload is ``_uploads/<id>/`` with ``data`` (the bytes so far),
``startedat`` and ``hashstates/sha256/<offset>`` — the SHA-256 state after
``offset`` bytes, in Go's MarshalBinary format, as Distribution writes it.
Every request that appends bytes stores the state at its new offset, so any
instance sharing the storage (or this one after a crash) continues the
upload, and finishing verifies the digest from the stored state without
re-reading the data.

After a crash the data may hold bytes past the newest stored state (the
process died between writing data and writing state). ``resume_point``
repairs that: it hashes only the tail past the newest usable state and stores
the state at the data's size, so the offset it reports is always one the
upload can really be finished from.

Durability: everything under ``_uploads/`` is scratch. ``startedat``, the
hash states and the data of an unfinished upload are written without fsync
(``put_content(..., durable=False)``, a writer ``close``d, not committed):
a killed process loses none of it, and what a crash of the machine loses
only turns into a shorter upload to resume (a lost state is re-derived from
the data; a state past the data is dropped) or an unknown one to restart.
A wrong state can never make a wrong blob: ``commit`` compares the digest
with the client's. What a commit acknowledges is durable before the
response: ``move`` makes the data durable as the blob, then the link is
written durably.

Drivers whose writers keep a note with their bytes (``writer_notes``: the
S3 driver, where every object is a request) get the hash state as that
note instead of a ``hashstates`` object: it is stored by the same atomic
write as the data's state (so the two cannot disagree after a crash), and
any instance opening the upload's writer reads it with the data's size
(one request where a resume otherwise reads ``startedat``, lists and reads
the states). A note is used only when it is the state at exactly the
data's size (the state records how many bytes it hashed); otherwise, and
for uploads without one, the ``hashstates`` way below is the fallback.

Blobs whose digest is known before their bytes (a monolithic ``POST
?digest=`` with a body, or a ``PUT ?digest=`` bringing every byte of a
session that holds none): when the driver has staged writes
(``IStagedWriting``, the S3 driver) the bytes go straight to the blob's
path through a staged writer, invisible there until the hash computed
while they streamed equals the digest; then the writer commits (the blob
is durable), the link is written (durable) and the response may say so.
A wrong digest cancels the writer: nothing appears at the blob's path and
nothing committed there is touched. No ``_uploads`` object is written
(``open_for_digest``, ``StagedBlobAppender``). A blob already stored is
not written again: the bytes are hashed, verified and dropped, and the
blob linked. Other drivers keep the upload-then-``commit`` path.

Fewer storage round trips: the store remembers, per upload it served last,
the offset and hash where the last request left it (``_Resume``). The next
request of that upload in this process checks only the data's size (which
it learns from opening the writer, or one ``stat`` to commit); if it is
still that offset, no other process appended, and the remembered hash is
the one the stored state holds. Otherwise (another instance served the
upload in between, a crash, a failed request) it reads the stored state as
before.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from twisted.internet.defer import Deferred, DeferredList, ensureDeferred, gatherResults, succeed
from zope.interface import implementer

from registry.digest import Digest
from registry.hashing import Sha256
from registry.storage import paths
from registry.storage.driver import IFileWriter, IStorageDriver, PathNotFoundError
from registry.storage.errors import BlobUnknown, DigestMismatch, UploadOffsetMismatch, UploadUnknown
from registry.storage.interfaces import IBlobStore, IUploadAppender, IUploadLock, IUploadStore
from registry.storage.locks import ProcessLocks

READ_CHUNK = 1 << 20
#: Uploads whose last offset and hash this process remembers.
RESUME_ENTRIES = 4096


def new_upload_id() -> str:
    return str(uuid.uuid4())


Release = Callable[[], Awaitable[None]]


@implementer(IUploadAppender)
class UploadAppender:
    """Appends one request's bytes to an upload, hashing as they pass.

    Obtained from ``UploadStore.open_appender`` holding the upload's lock;
    ``finish`` (or ``fail``) must be awaited exactly once to release it."""

    def __init__(
        self,
        store: "UploadStore",
        name: str,
        upload_id: str,
        writer: IFileWriter,
        hasher: Sha256,
        release: Release,
    ) -> None:
        self.store = store
        self.name = name
        self.upload_id = upload_id
        self.start_offset = hasher.bytes_hashed
        self._writer = writer
        self._hasher = hasher
        self._release: Release | None = release

    @property
    def offset(self) -> int:
        """Bytes in the upload, including those appended so far."""
        return self._hasher.bytes_hashed

    def expect(self, nbytes: int) -> None:
        """A hint for the writer: this request brings ``nbytes`` (its
        ``Content-Length``); a writer that can use it (the S3 driver's,
        streaming parts as they arrive) takes it, others have no ``expect``."""
        hint = getattr(self._writer, "expect", None)
        if hint is not None:
            hint(nbytes)

    def write(self, data: bytes) -> "Deferred[None]":
        """Hash and append ``data``; the Deferred fires when the driver can
        take more (backpressure)."""
        self._hasher.update(data)
        return self._writer.write(data)

    async def finish(self) -> int:
        """Close the writer and store the hash state at the new offset, so
        the upload continues from here. Returns the new offset.

        The state is stored while the writer closes (one round trip to the
        storage instead of two): if the close fails, a state past the
        data's size is dropped by the next ``resume_point``, as after a
        crash, so it is never matched against other bytes."""
        try:
            if self.offset != self.start_offset and self.store._notes:
                # One write: the data's state carries the hash state.
                self._writer.set_note(self._hasher.state())  # type: ignore[attr-defined]
            steps: list[Deferred[Any]] = [self._writer.close()]
            if self.offset != self.start_offset and not self.store._notes:
                # Scratch: a state lost with the machine is re-derived.
                steps.append(self.store.driver.put_content(
                    paths.upload_hashstate(self.name, self.upload_id, self.offset),
                    self._hasher.state(),
                    durable=False,
                ))
            await _all(steps)
            self.store._remember(self.name, self.upload_id, self._hasher)
            return self.offset
        finally:
            await self._done()

    async def fail(self) -> None:
        """The request failed in storage: release without storing a state;
        the next ``resume_point`` re-derives the state from the data.
        With writer notes the hash state goes with whatever the close
        stores: it is used only if it hashed exactly the bytes stored."""
        try:
            if self.offset != self.start_offset and self.store._notes:
                self._writer.set_note(self._hasher.state())  # type: ignore[attr-defined]
            await self._writer.close()
        except Exception:
            pass
        finally:
            await self._done()

    async def _done(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            await release()


@implementer(IUploadAppender)
class StagedBlobAppender:
    """Streams one request's body to blob ``digest`` through a staged
    writer (see the module docstring), hashing as it passes; ``finish``
    verifies the digest, commits the blob, links it into ``name`` and, for
    a session's ``PUT``, removes the session. ``committed`` is then True:
    the caller must not ``commit`` again. With no writer (the blob is
    already stored) the bytes are only hashed."""

    start_offset = 0

    def __init__(
        self,
        store: "UploadStore",
        name: str,
        digest: Digest,
        writer: IFileWriter | None,
        upload_id: str | None = None,
        release: Release | None = None,
    ) -> None:
        self.store = store
        self.name = name
        self.digest = digest
        #: The session this request finishes (a PUT), or None (a POST).
        self.upload_id = upload_id
        self.committed = False
        self._writer = writer
        self._hasher = Sha256()
        self._release = release

    @property
    def offset(self) -> int:
        return self._hasher.bytes_hashed

    def expect(self, nbytes: int) -> None:
        """The request's ``Content-Length`` for the writer (S3 streams parts)."""
        hint = getattr(self._writer, "expect", None)
        if hint is not None:
            hint(nbytes)

    def write(self, data: bytes) -> "Deferred[None]":
        self._hasher.update(data)
        if self._writer is None:
            return succeed(None)
        return self._writer.write(data)

    async def finish(self) -> int:
        """Verify, commit (the blob is durable), link (durable), remove the
        session if any; fire with the blob's size. ``DigestMismatch`` (the
        staged bytes discarded, nothing committed) when the bytes are not
        ``digest``'s."""
        store = self.store
        try:
            size = self._hasher.bytes_hashed
            actual = Digest("sha256", self._hasher.hexdigest())
            if actual != self.digest:
                raise DigestMismatch(self.digest, actual, size)
            writer, self._writer = self._writer, None
            if writer is not None:
                try:
                    await writer.commit()
                except BaseException:
                    await _quietly(writer.cancel())
                    raise
            # A garbage collection sweeping a blob we did not write while we
            # link it fails the link (``BlobUnknown``): the bytes were not kept.
            await store.blobs.descriptors.link(self.name, self.digest)
            if self.upload_id is not None:
                await store.driver.delete(paths.upload_dir(self.name, self.upload_id))
            self.committed = True
            return size
        finally:
            await self.fail()

    async def fail(self) -> None:
        """Discard the staged bytes (nothing is left at the blob's path) and
        release the session's lock, if held. Never fails."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await _quietly(writer.cancel())
        if self._release is not None:
            release, self._release = self._release, None
            await release()


@implementer(IUploadStore)
class UploadStore:
    """Starts, appends to, inspects, finishes and cancels uploads through a
    driver. A finished upload becomes a blob of ``blobs``, linked through its
    descriptors; requests of one upload exclude each other through ``lock``
    (``ProcessLocks`` unless given)."""

    def __init__(
        self,
        driver: IStorageDriver,
        blobs: IBlobStore,
        lock: IUploadLock | None = None,
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.driver = driver
        self.blobs = blobs
        self.lock: IUploadLock = lock if lock is not None else ProcessLocks()
        self._now = now or (lambda: datetime.now(timezone.utc))
        #: The driver's writers keep a note: the hash state lives there.
        self._notes = bool(getattr(driver, "writer_notes", False))
        #: The driver has staged writes: known digests go straight to the blob.
        self._staged = bool(getattr(driver, "staged_writes", False))
        #: (name, upload id) -> the hash at the end of the upload's last
        #: request here (its ``bytes_hashed`` is the offset), newest last.
        self._resume: dict[tuple[str, str], Sha256] = {}

    def _remember(self, name: str, upload_id: str, hasher: Sha256) -> None:
        key = (name, upload_id)
        resume = self._resume
        resume.pop(key, None)
        if len(resume) >= RESUME_ENTRIES:
            del resume[next(iter(resume))]
        resume[key] = hasher

    def _recall(self, name: str, upload_id: str) -> Sha256 | None:
        """Take (and forget) the remembered hash of an upload: whoever takes
        it owns it, and remembers it again once the upload is consistent."""
        return self._resume.pop((name, upload_id), None)

    async def create(self, name: str) -> str:
        """Start an upload in repository ``name``; returns its id."""
        upload_id = new_upload_id()
        started = self._now().strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode()
        # Under the upload's lock like every change to it: an upload whose
        # lock cannot be taken (a shared lock service is down) is refused
        # before it exists, not left behind unusable.
        release = await self.lock.acquire(name, upload_id)
        try:
            await gatherResults(
                [
                    self.driver.put_content(paths.upload_startedat(name, upload_id), started, durable=False),
                    self.driver.put_content(paths.upload_data(name, upload_id), b"", durable=False),
                ],
                consumeErrors=True,
            ).addErrback(lambda f: f.value.subFailure)
            self._remember(name, upload_id, Sha256())
        finally:
            await release()
        return upload_id

    async def started_at(self, name: str, upload_id: str) -> bytes:
        try:
            return await self.driver.get_content(paths.upload_startedat(name, upload_id))
        except PathNotFoundError:
            raise UploadUnknown(name, upload_id) from None

    async def status(self, name: str, upload_id: str) -> int:
        """The offset the client can continue from (repairing a torn tail)."""
        release = await self.lock.acquire(name, upload_id)
        try:
            if self._notes:
                noted = await self._noted_point(paths.upload_data(name, upload_id))
                if noted is not None:
                    return noted.bytes_hashed
            offset, _ = await self._resume_point(name, upload_id)
            return offset
        finally:
            await release()

    async def open_for_digest(
        self, name: str, upload_id: str | None, digest: Digest, expect_start: int | None = None
    ) -> IUploadAppender:
        """An appender for a request whose body ends with ``digest``'s blob
        complete: ``upload_id`` None starts one (a monolithic ``POST
        ?digest=``), else the session a ``PUT ?digest=`` finishes. A
        ``StagedBlobAppender`` (``committed`` after ``finish``) when the
        driver has staged writes and the body is all of the blob (a new
        upload, or a session holding no bytes yet); otherwise the usual
        ``UploadAppender``, and the caller commits."""
        staged = self._staged and digest.algorithm == "sha256" and expect_start in (None, 0)
        if upload_id is None:
            if staged:
                return await self._staged_appender(name, digest)
            upload_id = await self.create(name)
            return await self.open_appender(name, upload_id)
        return await self.open_appender(name, upload_id, expect_start, digest if staged else None)

    async def _staged_appender(
        self, name: str, digest: Digest, upload_id: str | None = None, release: Release | None = None
    ) -> StagedBlobAppender:
        """A ``StagedBlobAppender``: with a staged writer at the blob's path,
        or none when the blob is already stored (one stat, as ``commit``).
        On failure the caller still holds ``release``."""
        writer: IFileWriter | None = None
        if await self.blobs.descriptors.size(digest) is None:
            writer = await self.driver.staged_writer(paths.blob_data(digest))  # type: ignore[attr-defined]
        return StagedBlobAppender(self, name, digest, writer, upload_id, release)

    async def open_appender(
        self, name: str, upload_id: str, expect_start: int | None = None, staged: Digest | None = None
    ) -> IUploadAppender:
        """Lock the upload and return an appender positioned at its end.

        ``expect_start`` is the first byte of a client's ``Content-Range``;
        if it is not the upload's offset, raises ``UploadOffsetMismatch``.
        ``staged`` (``open_for_digest``): the blob's digest, when the body
        brings all of it; if the upload holds no bytes yet, the appender is
        a ``StagedBlobAppender`` instead."""
        release = await self.lock.acquire(name, upload_id)
        try:
            data_path = paths.upload_data(name, upload_id)
            known = self._recall(name, upload_id)
            if known is not None or self._notes:
                # Opening the writer tells the data's size: if it is where
                # our last request left it, the remembered hash is current;
                # else the note stored with the data may be the state there.
                try:
                    writer = await self.driver.writer(data_path, append=True)
                except PathNotFoundError:
                    pass  # cancelled, purged or damaged: the careful way says which
                else:
                    current = known if known is not None and writer.size == known.bytes_hashed else self._noted(writer)
                    if current is not None:
                        if expect_start is not None and expect_start != writer.size:
                            await writer.close()
                            self._remember(name, upload_id, current)
                            raise UploadOffsetMismatch(expect_start, writer.size)
                        if staged is not None and writer.size == 0:
                            await writer.close()  # nothing written: no request
                            return await self._staged_appender(name, staged, upload_id, release)
                        return UploadAppender(self, name, upload_id, writer, current, release)
                    await writer.close()
            offset, hasher = await self._resume_point(name, upload_id)
            if expect_start is not None and expect_start != offset:
                raise UploadOffsetMismatch(expect_start, offset)
            writer = await self.driver.writer(data_path, append=True)
            if writer.size != offset:
                await writer.close()
                raise UploadOffsetMismatch(writer.size, offset)
            if staged is not None and offset == 0:
                await writer.close()
                return await self._staged_appender(name, staged, upload_id, release)
            return UploadAppender(self, name, upload_id, writer, hasher, release)
        except BaseException:
            await release()
            raise

    async def commit(self, name: str, upload_id: str, expected: Digest) -> int:
        """Verify the upload against ``expected`` from its stored state and
        move it into the blob store, linked into ``name``. Returns the size.

        Raises ``DigestMismatch`` (nothing committed; the upload stays so the
        client may inspect or cancel it) or ``UploadUnknown``."""
        release = await self.lock.acquire(name, upload_id)
        try:
            data_path = paths.upload_data(name, upload_id)
            known = self._recall(name, upload_id)
            hasher: Sha256 | None = None
            if known is not None:
                try:
                    if (await self.driver.stat(data_path)).size == known.bytes_hashed:
                        hasher = known
                except PathNotFoundError:
                    pass
            if hasher is None and self._notes:
                hasher = await self._noted_point(data_path)
            if hasher is None:
                size, hasher = await self._resume_point(name, upload_id)
            size = hasher.bytes_hashed
            actual = Digest("sha256", hasher.hexdigest())
            if actual != expected:
                raise DigestMismatch(expected, actual, size)
            moved = False
            cleanup: Deferred[None] | None = None
            try:
                for attempt in range(3):
                    if await self.blobs.descriptors.size(expected) is None:
                        # ``move`` makes the bytes durable, then the blob's name.
                        await self.driver.move(data_path, paths.blob_data(expected))
                        moved = True
                        # The upload's bytes are the blob's now: what is left
                        # of it goes while the blob is linked (on an object
                        # store, a few round trips less before the answer).
                        cleanup = self.driver.delete(paths.upload_dir(name, upload_id))
                    try:
                        await self.blobs.descriptors.link(name, expected)
                        break
                    except BlobUnknown:
                        # A garbage collection swept the stored copy while we
                        # linked it: ours is still here, store it instead.
                        if moved or attempt == 2:
                            raise
            except BaseException:
                if cleanup is not None:
                    await DeferredList([cleanup], consumeErrors=True)
                raise
            await (cleanup if cleanup is not None else self.driver.delete(paths.upload_dir(name, upload_id)))
            return size
        finally:
            await release()

    async def cancel(self, name: str, upload_id: str) -> None:
        release = await self.lock.acquire(name, upload_id)
        self._recall(name, upload_id)
        try:
            await self.started_at(name, upload_id)
            await self.driver.delete(paths.upload_dir(name, upload_id))
        finally:
            await release()

    def _noted(self, writer: IFileWriter) -> Sha256 | None:
        """The hash state at the end of the data ``writer`` continues, from
        the note stored with it (None: no usable note, find it the careful way)."""
        if not self._notes:
            return None
        size = writer.size
        note = getattr(writer, "note", None)
        if note is None:
            return Sha256() if size == 0 else None
        try:
            hasher = Sha256.from_state(note)
        except ValueError:
            return None
        return hasher if hasher.bytes_hashed == size else None

    async def _noted_point(self, data_path: str) -> Sha256 | None:
        """``_noted`` of the data at ``data_path`` (a writer opened and closed
        with nothing written: one read of the data's state)."""
        try:
            writer = await self.driver.writer(data_path, append=True)
        except PathNotFoundError:
            return None
        try:
            return self._noted(writer)
        finally:
            await writer.close()

    async def _resume_point(self, name: str, upload_id: str) -> tuple[int, Sha256]:
        """(offset, hasher at offset) the upload can be continued from.

        Uses the newest stored state at or below the data's size, hashes any
        tail past it and stores the state at the data's size. States above
        the data's size (data lost after its state was stored) are dropped,
        so they can never be matched against different bytes later."""
        data_path = paths.upload_data(name, upload_id)
        states_dir = paths.upload_hashstates_dir(name, upload_id)

        async def data_size() -> int | None:
            try:
                return (await self.driver.stat(data_path)).size
            except PathNotFoundError:
                return None

        async def state_entries() -> list[str]:
            try:
                return await self.driver.list(states_dir)
            except PathNotFoundError:
                return []

        # Three independent reads at once (one round trip on a remote
        # store); an unknown upload is reported as such whatever the others say.
        started = ensureDeferred(self.started_at(name, upload_id))
        others = _all([ensureDeferred(data_size()), ensureDeferred(state_entries())])
        try:
            await started
        except BaseException:
            others.addErrback(lambda _: None)
            raise
        found_size, entries = await others
        if found_size is None:
            await self.driver.put_content(data_path, b"", durable=False)
            size = 0
        else:
            size = found_size
        offsets: list[int] = []
        for entry in entries:
            base = entry.rsplit("/", 1)[-1]
            if base.isdigit():
                offsets.append(int(base))
        hasher: Sha256 | None = None
        for off in sorted(offsets, reverse=True):
            state_path = paths.upload_hashstate(name, upload_id, off)
            if off > size:
                await _delete_quietly(self.driver, state_path)
                continue
            try:
                candidate = Sha256.from_state(await self.driver.get_content(state_path))
            except (ValueError, PathNotFoundError):
                await _delete_quietly(self.driver, state_path)
                continue
            if candidate.bytes_hashed != off:
                await _delete_quietly(self.driver, state_path)
                continue
            hasher = candidate
            break
        if hasher is None:
            hasher = Sha256()
        if hasher.bytes_hashed < size:
            reader = await self.driver.reader(data_path, hasher.bytes_hashed)
            try:
                while hasher.bytes_hashed < size:
                    chunk = await reader.read(min(READ_CHUNK, size - hasher.bytes_hashed))
                    if not chunk:
                        break
                    hasher.update(chunk)
            finally:
                await reader.close()
            await self.driver.put_content(
                paths.upload_hashstate(name, upload_id, hasher.bytes_hashed), hasher.state(), durable=False
            )
        return hasher.bytes_hashed, hasher


def _all(steps: list[Deferred[Any]]) -> "Deferred[list[Any]]":
    """Every step's result once all have finished, or the first failure
    (after all have finished: nothing is left running behind an error)."""
    def settle(results: list[tuple[bool, Any]]) -> Any:
        for ok, value in results:
            if not ok:
                return value  # the Failure
        return [value for _, value in results]

    return DeferredList(steps, consumeErrors=True).addCallback(settle)


async def _quietly(d: "Deferred[Any]") -> None:
    try:
        await d
    except Exception:
        pass


async def _delete_quietly(driver: IStorageDriver, path: str) -> Any:
    try:
        await driver.delete(path)
    except PathNotFoundError:
        pass
