"""Digest grammar (OCI image-spec descriptor digests). Pure functions.

``algorithm ":" encoded`` where the algorithm is one or more lowercase
components joined by ``+ . _ -`` and ``encoded`` is ``[a-zA-Z0-9=_-]+``.
Registered algorithms have a fixed encoding: sha256 is 64 lowercase hex,
sha512 128. This registry stores and verifies sha256 content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_DIGEST_RE = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")
_ENCODINGS = {
    "sha256": re.compile(r"^[a-f0-9]{64}$"),
    "sha512": re.compile(r"^[a-f0-9]{128}$"),
}
SUPPORTED_ALGORITHMS = ("sha256",)


class DigestError(ValueError):
    """A string is not a valid digest; ``unsupported`` is True when it is
    well-formed but uses an algorithm this registry does not store."""

    def __init__(self, message: str, unsupported: bool = False) -> None:
        super().__init__(message)
        self.unsupported = unsupported


@dataclass(frozen=True, order=True)
class Digest:
    """A parsed, validated content digest such as ``sha256:<64 hex>``."""

    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, text: str | bytes) -> "Digest":
        """Parse and validate ``text``; raise ``DigestError`` saying what is wrong."""
        if isinstance(text, bytes):
            try:
                text = text.decode("ascii")
            except UnicodeDecodeError:
                raise DigestError("digest must be ASCII") from None
        m = _DIGEST_RE.match(text)
        if not m:
            raise DigestError(
                f"invalid digest {text[:150]!r}: expected <algorithm>:<encoded>, e.g. sha256:<64 lowercase hex>"
            )
        alg, enc = m.group(1), m.group(2)
        pattern = _ENCODINGS.get(alg)
        if pattern is None:
            raise DigestError(
                f"unsupported digest algorithm {alg!r}: this registry accepts sha256", unsupported=True
            )
        if not pattern.match(enc):
            raise DigestError(f"invalid {alg} digest {text[:150]!r}: the encoded part must be lowercase hex of the right length")
        if alg not in SUPPORTED_ALGORITHMS:
            raise DigestError(
                f"unsupported digest algorithm {alg!r}: this registry accepts sha256", unsupported=True
            )
        return cls(alg, enc)

    @classmethod
    def from_sha256_bytes(cls, raw: bytes) -> "Digest":
        return cls("sha256", raw.hex())


def sha256_digest(data: bytes) -> Digest:
    """The sha256 Digest of ``data`` (small payloads: manifests, configs)."""
    from registry.hashing import Sha256

    return Digest("sha256", Sha256(data).hexdigest())
