"""``RegistryClient``: the distribution API (Docker Registry v2 / OCI) of one registry.

Every method is a coroutine (use ``await`` or ``Deferred.fromCoroutine``);
each says what it returns and which :mod:`registry.client.errors` it raises.
Authentication, TLS and retries live in :class:`~registry.client.transport.HTTPSession`;
blob streaming and resumable uploads in :mod:`registry.client.blobs`.

Scheme: ``scheme="https"`` or ``"http"`` is used as given.  Without one, a
loopback registry (``127.0.0.1``, ``localhost``, ``::1``) is spoken to over
plain http, any other over https; with ``tls_verify=False`` https is tried
without certificate checks and, when the registry does not speak TLS, plain
http is used instead (what skopeo's ``--tls-verify=false`` and docker's
insecure registries do).
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable
from urllib.parse import urljoin, quote

from twisted.internet.interfaces import IConsumer

from registry.client.auth import Credentials
from registry.client.blobs import (
    IBlobSource,
    Progress,
    UploadOutcome,
    UploadSettings,
    download_blob,
    upload_blob,
    with_query,
)
from registry.client.consumers import BytesConsumer
from registry.client.errors import (
    ClientError,
    DigestMismatch,
    ManifestUnknown,
    ProtocolError,
    RegistryAPIError,
    TransportError,
    api_error,
)
from registry.client.transport import HTTPSession, RetryPolicy, TLSConfig, drain, read_limited
from registry.digest import Digest, DigestError
from registry.hashing import Sha256
from registry.manifest_types import DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

#: Every manifest media type the client accepts, in order of preference.
MANIFEST_MEDIA_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
#: Manifests larger than this are refused (the registries' own limit is 4 MiB).
MANIFEST_LIMIT = 4 * 1024 * 1024
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;(?:[^,]*?)rel="?next"?', re.IGNORECASE)


@dataclass(frozen=True)
class Manifest:
    """A manifest as fetched: its bytes, media type and (verified) digest."""

    media_type: str
    digest: Digest
    body: bytes

    def json(self) -> Any:
        """The parsed body (raises :class:`ProtocolError` if it is not JSON)."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            raise ProtocolError(f"manifest {self.digest} is not valid JSON") from None

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_LIST)


@dataclass(frozen=True)
class ManifestInfo:
    """What ``HEAD`` says about a manifest."""

    media_type: str
    digest: Digest | None
    size: int | None


class DeleteOutcome(enum.Enum):
    """What :meth:`RegistryClient.delete` did."""

    TAG_REMOVED = "tag removed"  # only the tag; the manifest stays
    MANIFEST_DELETED = "manifest deleted"  # the manifest (and so every tag on it)


def next_link(values: Iterable[str], base: str) -> str | None:
    """The absolute URL of ``rel="next"`` in ``Link`` header values. Pure."""
    for value in values:
        match = _LINK_NEXT_RE.search(value)
        if match:
            return urljoin(base, match.group(1))
    return None


def is_digest(reference: str) -> bool:
    return ":" in reference


def _digest_of(body: bytes) -> Digest:
    return Digest("sha256", Sha256(body).hexdigest())


def manifest_media_type(content_type: str | None, body: bytes) -> str:
    """The manifest's media type: ``mediaType`` in the body, else ``Content-Type``,
    else its shape (an OCI index has ``manifests``)."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("mediaType"), str):
        return str(document["mediaType"])
    if content_type:
        base = content_type.split(";", 1)[0].strip()
        if base and base != "application/json":
            return base
    if isinstance(document, dict) and "manifests" in document:
        return OCI_INDEX
    return OCI_MANIFEST


class RegistryClient:
    """One registry (``host[:port]``); see the module docstring for the scheme.

    ``credentials`` are used for Basic challenges and sent to token servers.
    Call :meth:`close` at the end (it closes pooled connections).
    """

    def __init__(
        self,
        host: str,
        *,
        reactor: Any = None,
        scheme: str | None = None,
        credentials: Credentials | None = None,
        tls: TLSConfig | None = None,
        retry: RetryPolicy | None = None,
        upload: UploadSettings | None = None,
        connections: int = 8,
        idle_timeout: float | None = 60.0,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if scheme not in (None, "http", "https"):
            raise ValueError(f"scheme must be 'http' or 'https', not {scheme!r}")
        self.host = host
        self.reactor = reactor
        tls = tls or TLSConfig()
        self.tls = tls
        self.upload_settings = upload or UploadSettings()
        #: Seconds a blob body may stall before its download is resumed.
        self.idle_timeout = idle_timeout
        self.session = HTTPSession(
            reactor,
            credentials=credentials,
            tls=tls,
            retry=retry or RetryPolicy(),
            connections_per_host=connections,
        )
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if scheme is not None:
            self._scheme: str | None = scheme
        elif not tls.verify:
            self._scheme = None  # probe https, fall back to http
        elif hostname in LOOPBACK_HOSTS:
            self._scheme = "http"
        else:
            self._scheme = "https"

    async def close(self) -> None:
        """Close pooled connections."""
        await self.session.close()

    # ------------------------------------------------------------------ helpers

    async def base_url(self) -> str:
        """``<scheme>://<host>``, probing the scheme first if it is not decided."""
        if self._scheme is None:
            try:
                # One try: a server that does not speak TLS fails the same way every time.
                response = await self.session.send("GET", f"https://{self.host}/v2/", idempotent=False)
                await drain(response)
                self._scheme = "https"
            except TransportError:
                self._scheme = "http"
        return f"{self._scheme}://{self.host}"

    async def _repo_url(self, name: str) -> str:
        return f"{await self.base_url()}/v2/{name}"

    @staticmethod
    def _pull(name: str) -> tuple[str, ...]:
        return (f"repository:{name}:pull",)

    @staticmethod
    def _push(name: str) -> tuple[str, ...]:
        return (f"repository:{name}:pull,push",)

    # ------------------------------------------------------------------ base

    async def ping(self) -> str:
        """``GET /v2/``; returns the ``Docker-Distribution-API-Version`` header
        (``registry/2.0``), or ``""`` if the registry sends none.

        Raises :class:`RegistryAPIError` when the answer is not 200 (after
        authenticating if asked), :class:`TransportError` when unreachable.
        """
        url = f"{await self.base_url()}/v2/"
        response = await self.session.request("GET", url)
        body = await read_limited(response)
        if response.code != 200:
            raise api_error(response.code, body, f"GET {url}")
        values = response.headers.getRawHeaders("docker-distribution-api-version", [])
        return values[0] if values else ""

    # ------------------------------------------------------------------ blobs

    async def blob_size(self, name: str, digest: Digest) -> int | None:
        """``HEAD`` the blob: its size, or None when the repository does not have it."""
        url = f"{await self._repo_url(name)}/blobs/{digest}"
        response = await self.session.request("HEAD", url, scopes=self._pull(name))
        await drain(response)
        if response.code == 200:
            values = response.headers.getRawHeaders("content-length", [])
            try:
                return int(values[0]) if values else 0
            except ValueError:
                raise ProtocolError(f"HEAD {url}: invalid Content-Length {values[0]!r}") from None
        if response.code == 404:
            return None
        raise api_error(response.code, b"", f"HEAD {url}")

    async def fetch_blob(
        self,
        name: str,
        digest: Digest,
        consumer: IConsumer,
        *,
        size: int | None = None,
        progress: Progress | None = None,
    ) -> int:
        """Stream the blob into ``consumer``, verifying digest (and ``size``);
        resumes dropped connections with Range. Fires with the byte count.
        See :func:`registry.client.blobs.download_blob` for the errors."""
        url = f"{await self._repo_url(name)}/blobs/{digest}"
        return await download_blob(
            self.session, url, digest, consumer, scopes=self._pull(name), size=size, progress=progress,
            idle_timeout=self.idle_timeout,
        )

    async def read_blob(self, name: str, digest: Digest, limit: int = 16 * 1024 * 1024) -> bytes:
        """A small blob (a config) in memory, verified; more than ``limit`` is an error."""
        consumer = BytesConsumer(limit)
        try:
            await self.fetch_blob(name, digest, consumer)
        except DigestMismatch:
            if consumer.overflowed:
                consumer.value()  # raises the clearer "too large" error
            raise
        except ClientError:
            if consumer.overflowed:
                consumer.value()
            raise
        return consumer.value()

    async def push_blob(
        self,
        name: str,
        digest: Digest,
        source: IBlobSource,
        *,
        mount_from: str | None = None,
        check_exists: bool = True,
        progress: Progress | None = None,
    ) -> UploadOutcome:
        """Make the repository have the blob: nothing when it has it already
        (``check_exists``), a cross-repository mount from ``mount_from`` when
        the registry allows, else an upload (monolithic or chunked, resumed
        after failures). Fires with what was done."""
        if check_exists and await self.blob_size(name, digest) is not None:
            return UploadOutcome.EXISTS
        scopes = self._push(name)
        if mount_from is not None:
            scopes = scopes + self._pull(mount_from)
        return await upload_blob(
            self.session,
            await self._repo_url(name),
            digest,
            source,
            scopes=scopes,
            mount_from=mount_from,
            settings=self.upload_settings,
            progress=progress,
        )

    async def mount_blob(self, name: str, digest: Digest, source_name: str) -> bool:
        """Cross-repository mount only: True when ``name`` now has the blob
        from ``source_name``; False when the registry would not mount (the
        upload it started instead is cancelled)."""
        uploads = f"{await self._repo_url(name)}/blobs/uploads/"
        url = with_query(uploads, mount=str(digest), **{"from": source_name})
        response = await self.session.request("POST", url, scopes=self._push(name) + self._pull(source_name))
        body = await read_limited(response)
        if response.code == 201:
            return True
        if response.code != 202:
            raise api_error(response.code, body, f"mount {digest} from {source_name}")
        location = (response.headers.getRawHeaders("location") or [None])[0]
        if location:
            cancel = await self.session.request(
                "DELETE", urljoin(uploads, location), scopes=self._push(name), redirects=False
            )
            await drain(cancel)  # best effort: an abandoned upload is harmless
        return False

    # ------------------------------------------------------------------ manifests

    async def get_manifest(
        self, name: str, reference: str, accept: Iterable[str] = MANIFEST_MEDIA_TYPES
    ) -> Manifest:
        """The manifest for a tag or digest, verified against the digest asked
        for (or the registry's ``Docker-Content-Digest``).

        Raises :class:`ManifestUnknown` (or another :class:`RegistryAPIError`),
        :class:`DigestMismatch`, :class:`TransportError`.
        """
        url = f"{await self._repo_url(name)}/manifests/{quote(reference, safe=':')}"
        response = await self.session.request(
            "GET", url, scopes=self._pull(name), headers={"Accept": ", ".join(accept)}
        )
        body = await read_limited(response, MANIFEST_LIMIT + 1)
        if response.code != 200:
            raise api_error(response.code, body, f"GET manifest {name}:{reference}")
        if len(body) > MANIFEST_LIMIT:
            raise ProtocolError(f"manifest {name}:{reference} is larger than {MANIFEST_LIMIT} bytes")
        actual = _digest_of(body)
        expected: Digest | None = None
        if is_digest(reference):
            expected = _parse_digest(reference)
        else:
            header = response.headers.getRawHeaders("docker-content-digest", [])
            if header and header[0].startswith("sha256:"):
                expected = _parse_digest(header[0])
        if expected is not None and expected != actual:
            raise DigestMismatch(
                f"manifest {name}:{reference}: the content has digest {actual}, expected {expected}"
            )
        content_type = (response.headers.getRawHeaders("content-type") or [None])[0]
        return Manifest(manifest_media_type(content_type, body), actual, body)

    async def head_manifest(self, name: str, reference: str) -> ManifestInfo | None:
        """``HEAD`` a manifest: its type, digest and size, or None if unknown."""
        url = f"{await self._repo_url(name)}/manifests/{quote(reference, safe=':')}"
        response = await self.session.request(
            "HEAD", url, scopes=self._pull(name), headers={"Accept": ", ".join(MANIFEST_MEDIA_TYPES)}
        )
        await drain(response)
        if response.code == 404:
            return None
        if response.code != 200:
            raise api_error(response.code, b"", f"HEAD manifest {name}:{reference}")
        headers = response.headers
        digest_values = headers.getRawHeaders("docker-content-digest", [])
        digest = _parse_digest(digest_values[0]) if digest_values else (
            _parse_digest(reference) if is_digest(reference) else None
        )
        length_values = headers.getRawHeaders("content-length", [])
        size = int(length_values[0]) if length_values and length_values[0].isdigit() else None
        media_type = (headers.getRawHeaders("content-type") or [""])[0].split(";", 1)[0].strip()
        return ManifestInfo(media_type, digest, size)

    async def put_manifest(self, name: str, reference: str, body: bytes, media_type: str) -> Digest:
        """``PUT`` a manifest under a tag or its digest; fires with its digest.

        Raises :class:`ManifestInvalid`, :class:`ManifestBlobUnknown`, ... or
        :class:`DigestMismatch` if the registry reports another digest.
        """
        url = f"{await self._repo_url(name)}/manifests/{quote(reference, safe=':')}"
        response = await self.session.request(
            "PUT",
            url,
            scopes=self._push(name),
            headers={"Content-Type": media_type},
            body=lambda: body,
            redirects=False,
        )
        answer = await read_limited(response)
        if response.code != 201:
            raise api_error(response.code, answer, f"PUT manifest {name}:{reference}")
        digest = _digest_of(body)
        values = response.headers.getRawHeaders("docker-content-digest", [])
        if values and values[0].startswith("sha256:") and _parse_digest(values[0]) != digest:
            raise DigestMismatch(f"PUT manifest {name}:{reference}: registry stored {values[0]}, sent {digest}")
        return digest

    async def delete_manifest(self, name: str, digest: Digest) -> None:
        """``DELETE`` the manifest by digest (every tag on it goes too).
        Raises :class:`ManifestUnknown`, :class:`Unsupported` (deletes disabled), ..."""
        url = f"{await self._repo_url(name)}/manifests/{digest}"
        response = await self.session.request(
            "DELETE", url, scopes=(f"repository:{name}:delete",), redirects=False
        )
        body = await read_limited(response)
        if response.code != 202:
            raise api_error(response.code, body, f"DELETE manifest {name}@{digest}")

    async def delete(self, name: str, reference: str) -> tuple[DeleteOutcome, Digest | None]:
        """Delete by digest, or by tag: ``DELETE`` of the tag removes only the
        tag where the registry supports it; otherwise the tag is resolved and
        the manifest deleted. Fires with what was done and the digest deleted
        (None when only a tag was removed)."""
        if is_digest(reference):
            digest = _parse_digest(reference)
            await self.delete_manifest(name, digest)
            return DeleteOutcome.MANIFEST_DELETED, digest
        url = f"{await self._repo_url(name)}/manifests/{quote(reference)}"
        response = await self.session.request(
            "DELETE", url, scopes=(f"repository:{name}:delete",), redirects=False
        )
        body = await read_limited(response)
        if response.code == 202:
            return DeleteOutcome.TAG_REMOVED, None
        error = api_error(response.code, body, f"DELETE tag {name}:{reference}")
        if response.code in (401, 403):
            raise error
        info = await self.head_manifest(name, reference)
        if info is None:
            if isinstance(error, ManifestUnknown) or response.code == 404:
                raise error
            raise ManifestUnknown(404, error.errors, f"{name}:{reference} is not a known tag")
        digest = info.digest or (await self.get_manifest(name, reference)).digest
        await self.delete_manifest(name, digest)
        return DeleteOutcome.MANIFEST_DELETED, digest

    # ------------------------------------------------------------------ listings

    async def _paginate(self, url: str, key: str, scopes: tuple[str, ...]) -> list[str]:
        found: list[str] = []
        next_url: str | None = url
        pages = 0
        while next_url is not None:
            pages += 1
            if pages > 100_000:
                raise ProtocolError(f"GET {url}: pagination does not end")
            response = await self.session.request("GET", next_url, scopes=scopes)
            body = await read_limited(response, 64 * 1024 * 1024)
            if response.code != 200:
                raise api_error(response.code, body, f"GET {next_url}")
            try:
                document = json.loads(body)
                items = document.get(key) or []
            except (ValueError, AttributeError):
                raise ProtocolError(f"GET {next_url}: the answer is not a JSON object with {key!r}") from None
            if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
                raise ProtocolError(f"GET {next_url}: {key!r} is not a list of strings")
            found.extend(items)
            next_url = next_link(response.headers.getRawHeaders("link", []), next_url)
        return found

    async def tags(self, name: str, page_size: int | None = None) -> list[str]:
        """Every tag of the repository, following ``Link`` pagination."""
        url = f"{await self._repo_url(name)}/tags/list"
        if page_size is not None:
            url = with_query(url, n=str(page_size))
        return await self._paginate(url, "tags", self._pull(name))

    async def catalog(self, page_size: int | None = None) -> list[str]:
        """Every repository name, following ``Link`` pagination."""
        url = f"{await self.base_url()}/v2/_catalog"
        if page_size is not None:
            url = with_query(url, n=str(page_size))
        return await self._paginate(url, "repositories", ("registry:catalog:*",))

    async def referrers(self, name: str, digest: Digest, artifact_type: str | None = None) -> dict[str, Any]:
        """The OCI image index of manifests whose ``subject`` is ``digest``.

        Uses the referrers API; a registry without it (404 on the endpoint)
        is asked for the fallback tag ``sha256-<hex>``, filtered by
        ``artifact_type`` here; no such tag is an empty index.
        """
        url = f"{await self._repo_url(name)}/referrers/{digest}"
        if artifact_type is not None:
            url = with_query(url, artifactType=artifact_type)
        response = await self.session.request("GET", url, scopes=self._pull(name))
        body = await read_limited(response, MANIFEST_LIMIT)
        if response.code == 200:
            try:
                document = json.loads(body)
            except ValueError:
                raise ProtocolError(f"GET {url}: the answer is not JSON") from None
            if not isinstance(document, dict):
                raise ProtocolError(f"GET {url}: the answer is not an image index")
            return document
        if response.code not in (404, 405):
            raise api_error(response.code, body, f"GET {url}")
        empty: dict[str, Any] = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
        try:
            fallback = await self.get_manifest(name, f"{digest.algorithm}-{digest.hex}", (OCI_INDEX,))
        except ManifestUnknown:
            return empty
        except RegistryAPIError as error:
            if error.status == 404:
                return empty
            raise
        document = fallback.json()
        if artifact_type is not None and isinstance(document, dict):
            document["manifests"] = [
                m for m in document.get("manifests", []) if isinstance(m, dict) and m.get("artifactType") == artifact_type
            ]
        return document if isinstance(document, dict) else empty


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as error:
        raise ProtocolError(str(error)) from None
