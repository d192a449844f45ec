"""The upstream registry of a pull-through cache, as the proxy stores see it.

``Upstream`` wraps a :class:`registry.client.RegistryClient` (which speaks
Basic and token authentication with the proxy's own credentials) and turns
its typed errors into what the data model reports:

* the upstream does not have it: ``None`` (the store raises the model's
  ``BlobUnknown`` / ``ManifestUnknown``);
* the upstream cannot be asked (connection refused, timeouts, 5xx, its
  refusal of the proxy's credentials, nonsense answers):
  :class:`UpstreamUnavailable`, a 503 ``UNAVAILABLE`` whose message names no
  upstream URL and no credential (the cause, with the URL, is logged).

The proxy's credentials stay inside the client's session: nothing the
upstream says about them (``WWW-Authenticate``, tokens) reaches a client of
the proxy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, TypeVar
from urllib.parse import urlsplit

from twisted.internet.interfaces import IConsumer
from twisted.logger import Logger

from registry import errors
from registry.client import Credentials, RegistryClient, RetryPolicy
from registry.client.errors import (
    BlobUnknown as ClientBlobUnknown,
    ClientError,
    DigestMismatch,
    ManifestUnknown as ClientManifestUnknown,
    NameUnknown as ClientNameUnknown,
    RegistryAPIError,
)
from registry.digest import Digest
from registry.errors import RegistryError

T = TypeVar("T")

log = Logger(namespace="registry.proxy")


class UpstreamUnavailable(RegistryError):
    """The upstream could not answer and the cache does not hold what was
    asked: 503 ``UNAVAILABLE``. The message is for the proxy's clients (no
    upstream URL); ``cause`` is for the log."""

    def __init__(self, what: str, cause: str) -> None:
        super().__init__(
            errors.UNAVAILABLE,
            f"{what} is not in this pull-through cache and its upstream registry cannot be reached "
            "right now; try again later",
        )
        self.cause = cause


@dataclass(frozen=True)
class UpstreamManifest:
    """A manifest as the upstream served it (digest verified by the client)."""

    digest: Digest
    media_type: str
    body: bytes


def split_remote_url(remoteurl: str) -> tuple[str, str]:
    """``(scheme, host[:port])`` of ``proxy.remoteurl``; raises ``ValueError``
    for anything but an ``http(s)://host[:port]`` URL (a path is ignored only
    when it is ``/``). Pure."""
    parts = urlsplit(remoteurl.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http:// or https:// URL of a registry, e.g. https://registry-1.docker.io")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("must be the registry's base URL (no path, query or fragment)")
    if "@" in parts.netloc:
        raise ValueError("must not carry credentials; use proxy.username and proxy.password")
    return parts.scheme, parts.netloc


async def _unless_unknown(what: str, call: Awaitable[T]) -> T | None:
    """``call``'s result; None when the upstream says it does not have it
    (a 404, or a ``*_UNKNOWN`` code); :class:`UpstreamUnavailable` naming
    ``what`` for any other failure (the cause goes to the log only)."""
    try:
        return await call
    except (ClientBlobUnknown, ClientManifestUnknown, ClientNameUnknown):
        return None
    except RegistryAPIError as e:
        if e.status == 404:
            return None
        raise _unavailable(what, e) from None
    except ClientError as e:
        raise _unavailable(what, e) from None


def _unavailable(what: str, error: Exception) -> UpstreamUnavailable:
    cause = str(error)
    log.warn("upstream failed for {what}: {cause}", what=what, cause=cause)
    return UpstreamUnavailable(what, cause)


class Upstream:
    """The upstream registry: lookups that answer ``None`` for "not there"
    and raise :class:`UpstreamUnavailable` for "cannot say"."""

    def __init__(
        self,
        remoteurl: str,
        *,
        username: str | None = None,
        password: str | None = None,
        reactor: Any = None,
        retry: RetryPolicy | None = None,
        client: RegistryClient | None = None,
    ) -> None:
        scheme, host = split_remote_url(remoteurl)
        credentials = Credentials(username, password or "") if username else None
        # Few, quick retries: a client of the proxy waits for them, and a
        # down upstream should become a 503 (or a cached answer) promptly.
        self.client = client or RegistryClient(
            host,
            reactor=reactor,
            scheme=scheme,
            credentials=credentials,
            retry=retry or RetryPolicy(attempts=2, base_delay=0.2, max_delay=1.0),
        )
        #: Blob downloads started (one per blob fetched, resumes not counted).
        self.blob_fetches = 0

    async def close(self) -> None:
        await self.client.close()

    async def blob_size(self, name: str, d: Digest) -> int | None:
        """The size of blob ``d`` in upstream repository ``name``, or None."""
        return await _unless_unknown(f"blob {d}", self.client.blob_size(name, d))

    async def fetch_blob(self, name: str, d: Digest, consumer: IConsumer, size: int | None) -> int:
        """Stream blob ``d`` into ``consumer``, verified against ``d`` and
        ``size``; raises the client's ``DigestMismatch`` for wrong content
        and :class:`UpstreamUnavailable` for any other failure."""
        self.blob_fetches += 1
        try:
            return await self.client.fetch_blob(name, d, consumer, size=size)
        except DigestMismatch:
            raise
        except ClientError as e:
            raise _unavailable(f"blob {d}", e) from None

    async def manifest_digest(self, name: str, tag: str) -> Digest | None:
        """The digest tag ``tag`` of ``name`` points at upstream (a HEAD), or
        None when the upstream does not know the tag. An upstream that sends
        no ``Docker-Content-Digest`` gets a GET instead."""
        info = await _unless_unknown(f"manifest {name}:{tag}", self.client.head_manifest(name, tag))
        if info is None:
            return None
        if info.digest is not None:
            return info.digest
        manifest = await self.get_manifest(name, tag)
        return manifest.digest if manifest is not None else None

    async def get_manifest(self, name: str, reference: str) -> UpstreamManifest | None:
        """The manifest ``reference`` (tag or digest) of ``name``, or None."""
        m = await _unless_unknown(f"manifest {name}:{reference}", self.client.get_manifest(name, reference))
        if m is None:
            return None
        return UpstreamManifest(m.digest, m.media_type, m.body)

    async def tags(self, name: str) -> list[str] | None:
        """Every tag of ``name`` upstream, or None if the repository is unknown there."""
        return await _unless_unknown(f"the tags of {name}", self.client.tags(name))
