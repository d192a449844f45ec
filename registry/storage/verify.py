"""Verified pushes (``validation.manifests.verifylayers``): on manifest PUT,
each layer's uncompressed content must hash to the config's
``rootfs.diff_ids`` entry for it, so corrupted or tampered images (layers
swapped, a diff_id edited, bytes changed inside a gzip stream whose outer
digest was recomputed) are refused with ``MANIFEST_INVALID`` naming the
layer.

What is checked
---------------
Image manifests (Docker schema 2, OCI) whose config is an image config
(``application/vnd.docker.container.image.v1+json``,
``application/vnd.oci.image.config.v1+json``); artifacts and indexes are left
alone. The config must have one ``rootfs.diff_ids`` entry per layer (sha256).
A layer is decompressed according to its media type (``...tar`` as is,
``...tar.gzip``/``+gzip`` with gzip, multi-member streams included, as Go's
reader accepts them, ``+zstd`` with zstd) and its uncompressed bytes are
hashed with the C SHA-256; the same bytes feed the C core's TarSum (v1),
which also proves they are a tar archive Go's reader accepts. Foreign
layers (fetched by clients from ``urls``) and layers of media types this
registry does not know are skipped (they still take their place in
``diff_ids``). The compressed bytes are hashed too: a stored blob that no
longer matches its digest is reported as storage corruption, never recorded.

Cost and bounds
---------------
The work runs in a pool of ``threads`` threads (default 2), never on the
reactor thread: the worker pulls the blob from the driver one chunk at a
time (``blockingCallFromThread``), decompresses it into buffers of at most
``CHUNK`` bytes and hashes them, so memory stays bounded whatever the
compression ratio (a gzip bomb is streamed, not held; zstd frames may need
a window of up to 128 MiB, larger windows are refused). A layer that
inflates beyond ``max_uncompressed`` bytes is refused.

Recorded once
-------------
The outcome for a blob (its diff_id, tarsum, uncompressed size, media type;
or why it is not a valid layer) is written next to the blob, at
``blobs/<alg>/<xx>/<hex>/_layer/<compression>`` (Distribution and this
registry's collector only read ``data`` there; deleting the blob's
directory removes the record with it), and every later manifest using the
blob reads the record instead of decompressing again. Concurrent PUTs in one
process share one computation. The record describes the blob's own content,
so it is written even when the manifest is refused. A "too large" outcome is
recomputed when the limit is raised.

The recorded layer information is served read-only by
``GET /v2/<name>/_registry/layers/<digest>`` (``registry.resources.layers``).
"""

from __future__ import annotations

import gzip
import json
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred
from twisted.internet.threads import blockingCallFromThread, deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import Interface, implementer

from registry.digest import Digest, DigestError
from registry.hashing import Sha256
from registry.manifest_types import Descriptor, Manifest
from registry.storage import paths
from registry.storage.driver import IFileReader, IStorageDriver, PathNotFoundError
from registry.storage.errors import ManifestBlobUnknown, ManifestInvalid
from registry.tarsum import TarSum, TarSumError

log = Logger(namespace="registry.verify")

DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
IMAGE_CONFIG_TYPES = (DOCKER_CONFIG, OCI_CONFIG)
#: The largest image config read for its diff_ids.
CONFIG_MAX = 8 << 20
#: Bytes read from storage / produced by the decompressor per step.
CHUNK = 1 << 20
#: zstd windows beyond this are refused (memory per verification).
ZSTD_MAX_WINDOW = 1 << 27
DEFAULT_MAX_UNCOMPRESSED = 64 << 30
COMPRESSIONS = ("gzip", "zstd", "none")


def compression_of(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"``, ``"none"`` for a layer media type; None when
    it is not a layer type this registry knows how to read."""
    mt = media_type.split(";", 1)[0].strip().lower()
    if not ("image.rootfs." in mt or "image.layer." in mt):
        return None
    if mt.endswith((".tar.gzip", "+gzip")):
        return "gzip"
    if mt.endswith("+zstd"):
        return "zstd"
    if mt.endswith(".tar"):
        return "none"
    return None


def record_path(d: Digest, compression: str) -> str:
    """Where the outcome for blob ``d`` read with ``compression`` is recorded."""
    return f"{paths.blob_dir(d)}/_layer/{compression}"


def is_record_path(path: str) -> bool:
    """True for a record written by this module (``registry check`` accepts them)."""
    parts = path.split("/")
    return len(parts) >= 3 and parts[-2] == "_layer" and parts[-1] in COMPRESSIONS


@dataclass(frozen=True)
class LayerInfo:
    """The recorded outcome for one blob read as a layer."""

    digest: str
    compression: str
    media_type: str
    diff_id: str | None = None
    tarsum: str | None = None
    size: int | None = None  # uncompressed bytes
    error: str | None = None  # why the blob is not a valid layer
    limit: int | None = None  # set when the error is "larger than limit"

    def to_json(self) -> dict[str, Any]:
        doc = {
            "digest": self.digest,
            "compression": self.compression,
            "mediaType": self.media_type,
            "diffID": self.diff_id,
            "tarsum": self.tarsum,
            "size": self.size,
            "error": self.error,
            "limit": self.limit,
        }
        return {k: v for k, v in doc.items() if v is not None}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> LayerInfo:
        return cls(
            digest=str(doc["digest"]),
            compression=str(doc["compression"]),
            media_type=str(doc.get("mediaType", "")),
            diff_id=doc.get("diffID"),
            tarsum=doc.get("tarsum"),
            size=doc.get("size"),
            error=doc.get("error"),
            limit=doc.get("limit"),
        )


class _Refused(Exception):
    """The blob is not a valid layer (recorded)."""

    def __init__(self, message: str, limit: int | None = None) -> None:
        super().__init__(message)
        self.limit = limit


class _Corrupt(Exception):
    """The stored blob does not match its digest (not recorded)."""


class _Stopping(Exception):
    """The verifier is closing."""


class _Source:
    """A blocking ``read(n)`` over a driver reader, for a worker thread: each
    call runs the reader's ``read`` on the reactor and waits. Hashes what
    passes through (to check the blob's own digest)."""

    def __init__(self, reactor: Any, reader: IFileReader, stopping: threading.Event) -> None:
        self._reactor = reactor
        self._reader = reader
        self._stopping = stopping
        self.sha = Sha256()
        self.size = 0
        self._buf = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``b""`` at the end); the driver is asked for
        ``CHUNK`` bytes at a time whatever ``n`` the decompressor uses."""
        if self._pos >= len(self._buf):
            if self._stopping.is_set():
                raise _Stopping()
            read: Callable[[int], Any] = self._reader.read
            data: bytes = blockingCallFromThread(self._reactor, read, CHUNK)
            self.sha.update(data)
            self.size += len(data)
            self._buf, self._pos = data, 0
            if not data:
                return b""
        if n < 0 or n >= len(self._buf) - self._pos:
            out = self._buf[self._pos :] if self._pos else self._buf
            self._buf, self._pos = b"", 0
            return out
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def readable(self) -> bool:
        return True


def _decompress_and_hash(source: _Source, compression: str, limit: int) -> tuple[str, str, int]:
    """(diff_id, tarsum, uncompressed size) of the layer ``source`` streams.
    Runs in a worker thread."""
    sha = Sha256()
    tarsum = TarSum("v1")
    size = 0
    stream: Any
    if compression == "gzip":
        stream = gzip.GzipFile(fileobj=cast(Any, source), mode="rb")
    elif compression == "zstd":
        try:
            import zstandard
        except ImportError:  # a dependency; only a broken install lacks it
            raise _Refused("zstd layers cannot be verified: the zstandard package is not installed") from None
        stream = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            cast(Any, source), read_size=CHUNK, read_across_frames=True
        )
    else:
        stream = source
    try:
        while True:
            chunk = stream.read(CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise _Refused(
                    f"it inflates to more than {limit} bytes (validation.manifests.maxuncompressedlayersize)", limit
                )
            sha.update(chunk)
            tarsum.update(chunk)
        return "sha256:" + sha.hexdigest(), tarsum.finish(), size
    except TarSumError as e:
        raise _Refused(f"its uncompressed content is not a valid tar archive: {e}") from None
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise _Refused(f"it is not valid {compression} data: {e}") from None
    except Exception as e:
        if type(e).__name__ == "ZstdError":
            raise _Refused(f"it is not valid zstd data: {e}") from None
        raise


class ILayerVerifier(Interface):
    """Checks an image manifest's layers against its config before it is stored."""

    def verify(name: str, manifest: Manifest) -> "Deferred[None] | Any":
        """Raise ``ManifestInvalid`` naming the first layer whose uncompressed
        digest is not its ``rootfs.diff_ids`` entry (or that is no valid
        layer); the blobs are known to be in repository ``name``."""


@implementer(ILayerVerifier)
class LayerVerifier:
    """See the module docstring. ``close()`` stops the thread pool (the
    application's ``VerifierService`` calls it)."""

    def __init__(
        self,
        driver: IStorageDriver,
        *,
        max_uncompressed: int = DEFAULT_MAX_UNCOMPRESSED,
        threads: int = 2,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.driver = driver
        self.max_uncompressed = max_uncompressed
        self.reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=threads, name="registry-verify")
        self._started = False
        self._stopping = threading.Event()
        self._inflight: dict[tuple[Digest, str], list[Deferred[LayerInfo]]] = {}
        #: Layers decompressed by this verifier (not read from a record).
        self.computed = 0

    # -- the manifest check ------------------------------------------------------

    async def verify(self, name: str, manifest: Manifest) -> None:
        config = manifest.config
        if config is None or config.media_type not in IMAGE_CONFIG_TYPES:
            return
        diff_ids = await self._diff_ids(name, config)
        if len(diff_ids) != len(manifest.layers):
            raise ManifestInvalid(
                f"the image config {config.digest} lists {len(diff_ids)} rootfs.diff_ids but the manifest has "
                f"{len(manifest.layers)} layers; each layer needs its diff_id"
            )
        for i, (layer, diff_id) in enumerate(zip(manifest.layers, diff_ids)):
            if layer.is_foreign:
                continue
            compression = compression_of(layer.media_type)
            if compression is None:
                continue
            info = await self.layer(layer, compression, name)
            where = f"layer {i} ({layer.digest}, {layer.media_type})"
            if info.error is not None:
                raise ManifestInvalid(f"{where} is not a valid image layer: {info.error}")
            if info.diff_id != diff_id:
                raise ManifestInvalid(
                    f"{where} does not match the image config: its uncompressed content has digest "
                    f"{info.diff_id}, but rootfs.diff_ids[{i}] in config {config.digest} is {diff_id}; "
                    "the image is corrupted or was altered: rebuild or re-export it"
                )

    async def _diff_ids(self, name: str, config: Descriptor) -> list[str]:
        if config.size > CONFIG_MAX:
            raise ManifestInvalid(
                f"the image config {config.digest} is {config.size} bytes, more than the {CONFIG_MAX} this "
                "registry reads to verify layers"
            )
        try:
            body = await self.driver.get_content(paths.blob_data(config.digest))
        except PathNotFoundError:
            raise ManifestBlobUnknown(name, [config.digest], "blob") from None
        try:
            doc = json.loads(body)
            raw = doc["rootfs"]["diff_ids"]
        except (ValueError, KeyError, TypeError):
            raise ManifestInvalid(
                f"the image config {config.digest} has no rootfs.diff_ids list (it is not a valid image config "
                "JSON); layers cannot be verified against it"
            ) from None
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise ManifestInvalid(f"rootfs.diff_ids in the image config {config.digest} must be a list of digests")
        out = []
        for i, text in enumerate(raw):
            try:
                d = Digest.parse(text)
            except DigestError as e:
                raise ManifestInvalid(f"rootfs.diff_ids[{i}] in the image config {config.digest} is not a digest: {e}") from None
            if d.algorithm != "sha256":
                raise ManifestInvalid(
                    f"rootfs.diff_ids[{i}] in the image config {config.digest} is {d.algorithm}; this registry "
                    "verifies sha256 diff_ids only"
                )
            out.append(str(d))
        return out

    # -- one layer, once ------------------------------------------------------------

    async def recorded(self, d: Digest, compression: str) -> LayerInfo | None:
        """The record for blob ``d`` read with ``compression``, if any."""
        try:
            data = await self.driver.get_content(record_path(d, compression))
            return LayerInfo.from_json(json.loads(data))
        except PathNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # damaged: recomputed and rewritten

    async def layer(self, layer: Descriptor, compression: str, name: str = "") -> LayerInfo:
        """The outcome for ``layer``'s blob: recorded, or computed once (and
        recorded) while concurrent callers in this process wait for it."""
        d = layer.digest
        info = await self.recorded(d, compression)
        if info is not None and not (info.limit is not None and info.limit < self.max_uncompressed):
            return info
        key = (d, compression)
        waiters = self._inflight.get(key)
        if waiters is not None:
            mine: Deferred[LayerInfo] = Deferred()
            waiters.append(mine)
            return await mine
        waiters = self._inflight[key] = []
        try:
            info = await self._compute(d, compression, layer.media_type, name)
        except BaseException as e:
            del self._inflight[key]
            for w in waiters:
                w.errback(e)
            raise
        del self._inflight[key]
        for w in waiters:
            w.callback(info)
        return info

    async def _compute(self, d: Digest, compression: str, media_type: str, name: str) -> LayerInfo:
        if self._stopping.is_set():
            raise _Stopping()
        try:
            reader = await self.driver.reader(paths.blob_data(d))
        except PathNotFoundError:
            raise ManifestBlobUnknown(name, [d], "blob") from None
        source = _Source(self.reactor, reader, self._stopping)
        if not self._started:
            self.pool.start()
            self._started = True
        work: Callable[[], tuple[str, str, int]] = lambda: self._checked(source, d, compression)
        try:
            diff_id, tarsum, size = await deferToThreadPool(self.reactor, self.pool, work)
            info = LayerInfo(str(d), compression, media_type, diff_id=diff_id, tarsum=tarsum, size=size)
        except _Refused as e:
            info = LayerInfo(str(d), compression, media_type, error=str(e), limit=e.limit)
        except _Corrupt as e:
            raise ManifestInvalid(str(e)) from None
        finally:
            await reader.close()
        self.computed += 1
        await self._record(d, info)
        log.info(
            "verified layer {digest} ({compression}): {outcome}",
            digest=str(d), compression=compression, outcome=info.error or f"{info.diff_id}, {info.size} bytes",
        )
        return info

    def _checked(self, source: _Source, d: Digest, compression: str) -> tuple[str, str, int]:
        """In a worker: the layer's hashes, after checking the stored bytes'
        own digest (a refusal is only recorded for intact bytes)."""
        refused: _Refused | None = None
        result: tuple[str, str, int] | None = None
        try:
            result = _decompress_and_hash(source, compression, self.max_uncompressed)
        except _Refused as e:
            refused = e
            if e.limit is not None:
                raise  # stopped early: the digest of the whole blob is unknown
            while source.read(CHUNK):  # the rest, for the blob's digest
                pass
        if d.algorithm == "sha256" and source.sha.hexdigest() != d.hex:
            raise _Corrupt(
                f"the stored blob {d} does not match its digest ({source.size} bytes hash to "
                f"sha256:{source.sha.hexdigest()}): the storage is damaged; run `registry check` and push it again"
            )
        if refused is not None:
            raise refused
        assert result is not None
        return result

    async def _record(self, d: Digest, info: LayerInfo) -> None:
        path = record_path(d, info.compression)
        await self.driver.put_content(path, json.dumps(info.to_json(), sort_keys=True).encode())
        # A collection may have swept the blob meanwhile: no record without data.
        try:
            await self.driver.stat(paths.blob_data(d))
        except PathNotFoundError:
            try:
                await self.driver.delete(path)
            except PathNotFoundError:
                pass

    async def close(self) -> None:
        """Stop: work in progress ends at its next read; the pool stops."""
        self._stopping.set()
        if self._started:
            # The workers end at their next read; stop() joins them, so wait
            # (on the reactor) for in-flight computations to end first.
            from twisted.internet.task import deferLater

            for _ in range(500):
                if not self._inflight:
                    break
                await deferLater(self.reactor, 0.01, lambda: None)
            self.pool.stop()
            self._started = False
