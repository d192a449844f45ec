"""An OCI image layout directory: ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``.

Small files (``index.json``, manifests, configs) are read and written
directly; blob content is written through
:class:`~registry.client.consumers.FileConsumer` (a thread pool, via a
``.partial`` name), and read for uploads by
:class:`~registry.client.blobs.FileSource`.  ``index.json`` is replaced
atomically (written to a temporary name, then renamed).

A tag is the ``org.opencontainers.image.ref.name`` annotation of an entry of
``index.json`` (what skopeo's ``oci:DIR:TAG`` uses).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from registry.client.errors import ClientError, DigestMismatch
from registry.digest import Digest, DigestError, sha256_digest
from registry.manifest_types import OCI_INDEX

REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_VERSION = "1.0.0"


class LayoutError(ClientError):
    """The directory is not a usable OCI image layout, or lacks what was asked for."""


class OCILayout:
    """The layout at ``path`` (which need not exist until :meth:`create`)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def exists(self) -> bool:
        return (self.path / "oci-layout").is_file()

    def create(self) -> None:
        """Make the directory a layout if it is not one (keeps an existing one)."""
        if self.exists():
            self._check_version()
            return
        if self.path.exists() and not self.path.is_dir():
            raise LayoutError(f"{self.path} exists and is not a directory")
        (self.path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (self.path / "index.json").exists():
            self._write_index({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    def _check_version(self) -> None:
        try:
            version = json.loads((self.path / "oci-layout").read_text()).get("imageLayoutVersion")
        except (OSError, ValueError, AttributeError):
            raise LayoutError(f"{self.path}/oci-layout is not valid JSON") from None
        if version != LAYOUT_VERSION:
            raise LayoutError(f"{self.path}: unsupported imageLayoutVersion {version!r}")

    def blob_path(self, digest: Digest) -> Path:
        return self.path / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """Whether the blob is present (with ``size`` bytes, when given)."""
        try:
            actual = self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return False
        return size is None or actual == size

    def read_blob(self, digest: Digest) -> bytes:
        """A small blob (manifest, config), verified against its digest."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise LayoutError(f"{self.path} has no blob {digest}") from None
        if sha256_digest(data) != digest:
            raise DigestMismatch(f"{self.blob_path(digest)} does not hash to {digest}")
        return data

    def write_blob(self, data: bytes) -> Digest:
        """Store a small blob; fires with its digest."""
        digest = sha256_digest(data)
        target = self.blob_path(digest)
        if not self.has_blob(digest, len(data)):
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            partial.write_bytes(data)
            os.replace(partial, target)
        return digest

    def index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        if not self.exists():
            raise LayoutError(f"{self.path} is not an OCI image layout (no oci-layout file)")
        self._check_version()
        try:
            document = json.loads((self.path / "index.json").read_text())
        except (OSError, ValueError) as error:
            raise LayoutError(f"{self.path}/index.json cannot be read: {error}") from None
        if not isinstance(document, dict) or not isinstance(document.get("manifests"), list):
            raise LayoutError(f"{self.path}/index.json is not an image index")
        return document

    def _write_index(self, document: dict[str, Any]) -> None:
        partial = self.path / "index.json.partial"
        partial.write_text(json.dumps(document, indent=2))
        os.replace(partial, self.path / "index.json")

    def resolve(self, tag: str | None) -> dict[str, Any]:
        """The ``index.json`` descriptor for ``tag`` (or the only entry when
        ``tag`` is None). Raises :class:`LayoutError` saying what is there."""
        entries = [e for e in self.index()["manifests"] if isinstance(e, dict)]
        if tag is None:
            if len(entries) != 1:
                names = sorted(str(e.get("annotations", {}).get(REF_NAME, e.get("digest"))) for e in entries)
                raise LayoutError(
                    f"{self.path} holds {len(entries)} images ({', '.join(names) or 'none'}): name one as oci:DIR:TAG"
                )
            found = entries[0]
        else:
            matches = [e for e in entries if (e.get("annotations") or {}).get(REF_NAME) == tag]
            if not matches:
                raise LayoutError(f"{self.path} has no image tagged {tag!r}")
            found = matches[-1]
        try:
            Digest.parse(str(found.get("digest", "")))
        except DigestError as error:
            raise LayoutError(f"{self.path}/index.json: {error}") from None
        return found

    def set_tag(self, descriptor: dict[str, Any], tag: str | None) -> None:
        """Record ``descriptor`` in ``index.json`` under ``tag`` (replacing the
        entry that had that tag), or untagged when ``tag`` is None."""
        document = self.index()
        entry = {k: v for k, v in descriptor.items() if k != "annotations"}
        kept = []
        for existing in document["manifests"]:
            annotations = existing.get("annotations") or {} if isinstance(existing, dict) else {}
            if tag is not None and annotations.get(REF_NAME) == tag:
                continue
            if tag is None and existing.get("digest") == entry["digest"] and REF_NAME not in annotations:
                continue
            kept.append(existing)
        if tag is not None:
            entry["annotations"] = {REF_NAME: tag}
        kept.append(entry)
        document["manifests"] = kept
        self._write_index(document)
