"""A typed, asynchronous (Twisted + treq) client of the registry API v2 / OCI
distribution spec, for any registry.

The public API:

* :class:`RegistryClient` (``registry.client.client``): ping, blobs (HEAD,
  streamed verified download into any ``IConsumer`` with Range resume,
  resumable monolithic or chunked upload from an :class:`IBlobSource`,
  cross-repository mount), manifests (get/head/put/delete, delete by tag),
  tags and catalog with pagination, referrers.
* :mod:`registry.client.images`: push and pull whole images (multi-arch
  indexes included) between a registry and an OCI image layout directory,
  and copy between registries.
* :mod:`registry.client.errors`: the typed exceptions.
* :mod:`registry.client.auth`: credentials, ``WWW-Authenticate`` parsing,
  docker ``config.json`` / containers ``auth.json``.
* :mod:`registry.client.cli`: the ``registry-client`` command (``execute``
  runs one on a given reactor).
"""

from registry.client.auth import Credentials, credentials_for, default_auth_files, load_auth_file
from registry.client.blobs import BytesSource, FileSource, IBlobSource, UploadOutcome, UploadSettings
from registry.client.client import (
    MANIFEST_MEDIA_TYPES,
    DeleteOutcome,
    Manifest,
    ManifestInfo,
    RegistryClient,
)
from registry.client.consumers import BytesConsumer, FileConsumer
from registry.client.images import ITransferProgress, copy_image, pull_image, push_image
from registry.client.layout import OCILayout
from registry.client.errors import (
    AuthenticationError,
    ClientError,
    DigestMismatch,
    ProtocolError,
    RegistryAPIError,
    TransportError,
)
from registry.client.transport import RetryPolicy, TLSConfig

__all__ = [
    "AuthenticationError",
    "BytesConsumer",
    "BytesSource",
    "ClientError",
    "Credentials",
    "DeleteOutcome",
    "DigestMismatch",
    "FileConsumer",
    "FileSource",
    "IBlobSource",
    "ITransferProgress",
    "OCILayout",
    "MANIFEST_MEDIA_TYPES",
    "Manifest",
    "ManifestInfo",
    "ProtocolError",
    "RegistryAPIError",
    "RegistryClient",
    "RetryPolicy",
    "TLSConfig",
    "TransportError",
    "UploadOutcome",
    "UploadSettings",
    "copy_image",
    "credentials_for",
    "default_auth_files",
    "load_auth_file",
    "pull_image",
    "push_image",
]
