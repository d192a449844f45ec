"""Errors of the registry's data model (layer 4). The HTTP layer maps each to
an OCI error code in one table (``registry.resources.base``)."""

from __future__ import annotations


class ModelError(Exception):
    """Base class of data-model errors: what a request names is not there or
    not consistent (an unknown blob, upload or manifest, a digest that does
    not match). Failures of the storage itself are the driver contract's
    ``registry.storage.driver.StorageError``."""


class BlobUnknown(ModelError):
    def __init__(self, digest: object, name: str | None = None) -> None:
        where = f" in repository {name!r}" if name else ""
        super().__init__(f"blob {digest} is not known{where}")
        self.digest = digest
        self.name = name


class UploadUnknown(ModelError):
    def __init__(self, name: str, upload_id: str) -> None:
        super().__init__(
            f"upload {upload_id!r} is not in progress in repository {name!r} "
            "(it was finished, cancelled, purged, or never started): start a new upload with POST"
        )
        self.name = name
        self.upload_id = upload_id


class DigestMismatch(ModelError):
    def __init__(self, expected: object, actual: object, size: int) -> None:
        super().__init__(
            f"the uploaded content ({size} bytes) has digest {actual}, not the {expected} given; nothing was committed"
        )
        self.expected = expected
        self.actual = actual
        self.size = size


class UploadOffsetMismatch(ModelError):
    """A chunk did not start where the upload ends (out of order or retried)."""

    def __init__(self, start: int, offset: int) -> None:
        super().__init__(
            f"chunk starts at byte {start} but the upload holds {offset} bytes: "
            f"send the next chunk starting at {offset} (GET the upload URL for its status)"
        )
        self.start = start
        self.offset = offset


class NameUnknown(ModelError):
    def __init__(self, name: str) -> None:
        super().__init__(f"repository {name!r} is not known to this registry")
        self.name = name


class ManifestUnknown(ModelError):
    """No manifest under this tag or digest in the repository."""

    def __init__(self, name: str, reference: str) -> None:
        kind = "tag" if ":" not in reference else "digest"
        super().__init__(f"manifest {kind} {reference!r} is not known in repository {name!r}")
        self.name = name
        self.reference = reference


class ManifestBlobUnknown(ModelError):
    """A manifest refers to blobs (or, for an index, manifests) that are not
    in the repository; ``missing`` lists every such digest."""

    def __init__(self, name: str, missing: list[object], what: str = "blob") -> None:
        shown = ", ".join(str(d) for d in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        push = "push the child manifests by digest first" if what == "manifest" else "upload (or mount) them first"
        super().__init__(f"the manifest refers to {what}(s) not in repository {name!r}: {shown}; {push}")
        self.name = name
        self.missing = missing
        self.digest = missing[0]


class ManifestInvalid(ModelError):
    """A manifest is well-formed but inconsistent with the stored content
    (e.g. a descriptor's size differs from the blob's)."""
