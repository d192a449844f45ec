"""Manifest media types: parsing, shape validation and Accept negotiation.
Pure functions, no I/O.

Supported: Docker image manifest v2 schema 2, Docker manifest list, OCI image
manifest (including artifacts: ``artifactType``, any config media type, the
empty descriptor) and OCI image index. Docker schema 1, signed or not, is
refused.

Which media type a body has
---------------------------
1. ``mediaType`` in the body, when present. A ``Content-Type`` sent with it
   must be the same type (``application/json`` or no Content-Type at all
   defers to the body).
2. Otherwise the ``Content-Type`` of the PUT, when it names a supported
   manifest type (OCI manifests and indexes may omit ``mediaType``).
3. Otherwise the shape: a ``manifests`` array is an OCI index, ``config`` is
   an OCI image manifest.

``media_type_of(body)`` re-derives the type from stored bytes with rules 1
and 3, as Distribution does on GET. Validation at PUT guarantees that the
shape of a body without ``mediaType`` agrees with its type, so the type served
is always the type the manifest was pushed with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from registry.digest import Digest, DigestError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_NONDISTRIBUTABLE_PREFIX = "application/vnd.oci.image.layer.nondistributable."

# The OCI empty descriptor's well-known blob: the two bytes ``{}``.
OCI_EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
OCI_EMPTY_CONTENT = b"{}"
OCI_EMPTY_DIGEST = Digest("sha256", "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")

IMAGE_MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
SUPPORTED_TYPES = IMAGE_MANIFEST_TYPES + INDEX_TYPES
SCHEMA1_TYPES = (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED)

# Content-Types that say nothing about which manifest type a body is.
_GENERIC_CONTENT_TYPES = ("", "application/json")

_SCHEMA1_MESSAGE = (
    "Docker image manifest schema 1 is not supported by this registry: push the image "
    "as Docker schema 2 or OCI (e.g. `skopeo copy --format v2s2` or a current docker)"
)


class ManifestError(ValueError):
    """A manifest body is not a valid manifest of a supported type; the
    message says what is wrong in terms the pusher can act on."""


class Schema1Error(ManifestError):
    """The body is a Docker schema 1 manifest (refused)."""

    def __init__(self) -> None:
        super().__init__(_SCHEMA1_MESSAGE)


@dataclass(frozen=True)
class Descriptor:
    """A content descriptor as a manifest references it."""

    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: dict[str, str] | None = None
    urls: tuple[str, ...] = ()

    @property
    def is_foreign(self) -> bool:
        """True for layers clients fetch from ``urls`` instead of the registry."""
        return bool(self.urls) and (
            self.media_type == DOCKER_FOREIGN_LAYER or self.media_type.startswith(OCI_NONDISTRIBUTABLE_PREFIX)
        )


@dataclass(frozen=True)
class Manifest:
    """What the registry needs to know about a validated manifest body."""

    media_type: str
    config: Descriptor | None = None  # image manifests only
    layers: tuple[Descriptor, ...] = ()  # image manifests only
    children: tuple[Descriptor, ...] = ()  # indexes only
    subject: Descriptor | None = None
    artifact_type: str | None = None  # the manifest's own artifactType field
    annotations: dict[str, str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        """Descriptors of blobs that must be in the repository (config and
        non-foreign layers)."""
        found = [self.config] if self.config is not None else []
        found += [layer for layer in self.layers if not layer.is_foreign]
        return tuple(found)

    @property
    def effective_artifact_type(self) -> str | None:
        """The artifact type a referrers listing reports: ``artifactType``,
        else (image manifests) the config's media type."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None:
            return self.config.media_type
        return None


def normalize_media_type(value: str | None) -> str:
    """``value`` without parameters, lowercased (``""`` for None)."""
    if not value:
        return ""
    return value.split(";", 1)[0].strip().lower()


def _load(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"the manifest is not UTF-8 text (byte {e.start} is invalid)") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"the manifest is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ManifestError("the manifest is not valid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"the manifest must be a JSON object, not a JSON {type(obj).__name__}")
    return obj


def _shape_type(obj: dict[str, Any]) -> str | None:
    if "manifests" in obj:
        return OCI_INDEX
    if "config" in obj:
        return OCI_MANIFEST
    return None


def media_type_of(body: bytes) -> str:
    """The media type of stored manifest bytes: ``mediaType`` or, without it,
    the OCI type its shape says. Raises ``ManifestError`` for bytes that are
    not a manifest (which validation at PUT never stores)."""
    obj = _load(body)
    declared = obj.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if obj.get("schemaVersion") == 1:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in obj else DOCKER_SCHEMA1
    shape = _shape_type(obj)
    if shape is None:
        raise ManifestError("stored manifest has neither mediaType nor a recognisable shape")
    return shape


def _string_map(value: Any, where: str) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ManifestError(f"{where} must be an object of string values")
    return dict(value)


def _optional_string(obj: dict[str, Any], key: str, where: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}.{key} must be a non-empty string")
    return value


def parse_descriptor(value: Any, where: str) -> Descriptor:
    """Validate one descriptor object; ``where`` names it in messages
    (e.g. ``layers[2]``)."""
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be a descriptor object with mediaType, digest and size")
    media_type = value.get("mediaType")
    if not isinstance(media_type, str) or not media_type:
        raise ManifestError(f"{where}.mediaType must be a non-empty string")
    raw_digest = value.get("digest")
    if not isinstance(raw_digest, str):
        raise ManifestError(f"{where}.digest must be a digest string such as sha256:<64 hex>")
    try:
        digest = Digest.parse(raw_digest)
    except DigestError as e:
        raise ManifestError(f"{where}.digest: {e}") from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestError(f"{where}.size must be a non-negative integer (the blob's length in bytes)")
    urls = value.get("urls")
    if urls is not None and (not isinstance(urls, list) or not all(isinstance(u, str) for u in urls)):
        raise ManifestError(f"{where}.urls must be an array of strings")
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_optional_string(value, "artifactType", where),
        annotations=_string_map(value.get("annotations"), f"{where}.annotations"),
        urls=tuple(urls or ()),
    )


def _descriptor_list(obj: dict[str, Any], key: str, required: bool) -> tuple[Descriptor, ...]:
    value = obj.get(key)
    if value is None:
        if required:
            raise ManifestError(f"the manifest has no {key!r} array")
        return ()
    if not isinstance(value, list):
        raise ManifestError(f"{key} must be an array of descriptors")
    return tuple(parse_descriptor(item, f"{key}[{i}]") for i, item in enumerate(value))


def parse_manifest(body: bytes, content_type: str | None) -> Manifest:
    """Validate ``body`` pushed with ``content_type`` and describe it.

    Raises ``Schema1Error`` for Docker schema 1 and ``ManifestError`` for
    anything else that is not a valid manifest of a supported type."""
    ct = normalize_media_type(content_type)
    if ct in SCHEMA1_TYPES:
        raise Schema1Error()
    obj = _load(body)
    schema_version = obj.get("schemaVersion")
    declared = obj.get("mediaType")
    if (schema_version == 1 and not isinstance(schema_version, bool)) or declared in SCHEMA1_TYPES:
        raise Schema1Error()
    if schema_version != 2 or isinstance(schema_version, bool):
        raise ManifestError(f"schemaVersion must be 2, not {json.dumps(schema_version)[:40]}")
    if declared is not None and (not isinstance(declared, str) or not declared):
        raise ManifestError("mediaType must be a non-empty string when present")

    if declared is not None:
        if ct not in _GENERIC_CONTENT_TYPES and ct != declared:
            raise ManifestError(
                f"the Content-Type {ct!r} does not match the manifest's mediaType {declared!r}: "
                "send the manifest with Content-Type equal to its mediaType"
            )
        media_type = declared
    elif ct not in _GENERIC_CONTENT_TYPES:
        media_type = ct
    else:
        shape = _shape_type(obj)
        if shape is None:
            raise ManifestError(
                "cannot tell the manifest's type: it has no mediaType, the request no manifest Content-Type, "
                "and neither a 'config' nor a 'manifests' field"
            )
        media_type = shape

    if media_type not in SUPPORTED_TYPES:
        raise ManifestError(
            f"unsupported manifest media type {media_type!r}"
            + (" (a manifest with a config and layers must be an OCI image manifest; put the custom type in "
               "artifactType or config.mediaType)" if "config" in obj else "")
            + f"; this registry accepts {', '.join(SUPPORTED_TYPES)}"
        )
    if media_type in (DOCKER_MANIFEST, DOCKER_LIST) and declared != media_type:
        raise ManifestError(f"a Docker manifest must carry \"mediaType\": {json.dumps(media_type)} in its body")

    artifact_type = _optional_string(obj, "artifactType", "manifest")
    annotations = _string_map(obj.get("annotations"), "annotations")
    subject = parse_descriptor(obj["subject"], "subject") if obj.get("subject") is not None else None
    if media_type == DOCKER_MANIFEST and subject is not None:
        raise ManifestError("a Docker schema 2 manifest cannot have a subject; use an OCI image manifest")

    if media_type in IMAGE_MANIFEST_TYPES:
        if "manifests" in obj:
            raise ManifestError(f"an image manifest ({media_type}) must not have a 'manifests' field; that is an index")
        if obj.get("config") is None:
            raise ManifestError(f"an image manifest ({media_type}) must have a 'config' descriptor")
        config = parse_descriptor(obj["config"], "config")
        layers = _descriptor_list(obj, "layers", required=True)
        if media_type == DOCKER_MANIFEST and artifact_type is not None:
            raise ManifestError("a Docker schema 2 manifest cannot have an artifactType; use an OCI image manifest")
        return Manifest(media_type, config=config, layers=layers, subject=subject,
                        artifact_type=artifact_type, annotations=annotations)

    if "config" in obj or "layers" in obj:
        raise ManifestError(f"an index ({media_type}) must not have 'config' or 'layers' fields; that is an image manifest")
    children = _descriptor_list(obj, "manifests", required=True)
    if media_type == DOCKER_LIST:
        for i, child in enumerate(children):
            if child.media_type not in (DOCKER_MANIFEST, OCI_MANIFEST):
                raise ManifestError(
                    f"manifests[{i}].mediaType {child.media_type!r}: a Docker manifest list may only list image manifests"
                )
    return Manifest(media_type, children=children, subject=subject, artifact_type=artifact_type, annotations=annotations)


def accepted_types(accept_values: list[str]) -> list[str] | None:
    """The media types an ``Accept`` header (all its lines, split on commas)
    allows, or None when it allows anything (no header, ``*/*``)."""
    types = [normalize_media_type(v) for v in accept_values]
    types = [t for t in types if t]
    if not types or "*/*" in types:
        return None
    return types


def is_acceptable(media_type: str, accept_values: list[str]) -> bool:
    """True if a client that sent these Accept values takes ``media_type``."""
    allowed = accepted_types(accept_values)
    if allowed is None:
        return True
    major = media_type.split("/", 1)[0]
    return media_type in allowed or f"{major}/*" in allowed
