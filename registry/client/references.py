"""Image references as skopeo spells them: ``docker://HOST/NAME[:TAG|@DIGEST]``
and ``oci:DIR[:TAG]``. Pure functions.

``HOST`` is the first path component when it looks like a host (has a ``.``
or ``:``, or is ``localhost``), as docker decides; otherwise the image is on
``docker.io`` (single names under ``library/``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from registry.digest import Digest, DigestError
from registry.reference import InvalidNameError, InvalidTagError, check_name, check_tag

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"


class ReferenceError_(ValueError):
    """An image reference is not valid (the message says why)."""


@dataclass(frozen=True)
class DockerReference:
    """An image in a registry; ``reference`` is the tag or digest (default ``latest``)."""

    host: str
    name: str
    tag: str | None = None
    digest: Digest | None = None

    @property
    def reference(self) -> str:
        if self.digest is not None:
            return str(self.digest)
        return self.tag or "latest"

    @property
    def api_host(self) -> str:
        """Where the API is: Docker Hub's is not ``docker.io`` itself."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    def __str__(self) -> str:
        text = f"docker://{self.host}/{self.name}"
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


@dataclass(frozen=True)
class OCIReference:
    """An image in an OCI layout directory, by tag (None: the only image)."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


ImageReference = DockerReference | OCIReference


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost" or component != component.lower()


def parse_docker(text: str) -> DockerReference:
    """Parse the part after ``docker://``."""
    if not text:
        raise ReferenceError_("empty docker:// reference: expected docker://HOST/NAME[:TAG|@DIGEST]")
    remainder = text
    digest: Digest | None = None
    if "@" in remainder:
        remainder, _, digest_text = remainder.partition("@")
        try:
            digest = Digest.parse(digest_text)
        except DigestError as error:
            raise ReferenceError_(f"docker://{text}: {error}") from None
    host, slash, path = remainder.partition("/")
    if not slash or not _looks_like_host(host):
        host, path = DOCKER_HUB, remainder
        if "/" not in path.split(":", 1)[0]:
            path = "library/" + path
    tag: str | None = None
    last_slash = path.rfind("/")
    colon = path.rfind(":")
    if colon > last_slash:
        path, tag = path[:colon], path[colon + 1 :]
    try:
        check_name(path)
        if tag is not None:
            check_tag(tag)
    except (InvalidNameError, InvalidTagError) as error:
        raise ReferenceError_(f"docker://{text}: {error}") from None
    return DockerReference(host, path, tag, digest)


def parse_oci(text: str) -> OCIReference:
    """Parse the part after ``oci:``: ``DIR`` or ``DIR:TAG``."""
    if not text:
        raise ReferenceError_("empty oci: reference: expected oci:DIR[:TAG]")
    path, colon, tag = text.rpartition(":")
    if not colon or "/" in tag or not path:
        return OCIReference(Path(text), None)
    try:
        check_tag(tag)
    except InvalidTagError as error:
        raise ReferenceError_(f"oci:{text}: {error}") from None
    return OCIReference(Path(path), tag)


def parse_reference(text: str) -> ImageReference:
    """``docker://...`` or ``oci:...``; anything else is a :class:`ReferenceError_`."""
    if text.startswith("docker://"):
        return parse_docker(text[len("docker://") :])
    if text.startswith("oci:"):
        return parse_oci(text[len("oci:") :])
    transport = text.split(":", 1)[0] if ":" in text else ""
    hint = f"transport {transport!r} is not supported; " if transport and "/" not in transport else ""
    raise ReferenceError_(
        f"invalid image reference {text!r}: {hint}expected docker://HOST/NAME[:TAG|@DIGEST] or oci:DIR[:TAG]"
    )
