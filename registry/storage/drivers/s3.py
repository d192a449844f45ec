"""The S3 storage driver (built-in name ``s3``): objects in an S3 bucket.

Configured with Distribution's keys, so a Distribution ``config.yml`` works
unchanged: ``storage.s3.{accesskey, secretkey, region, regionendpoint,
forcepathstyle, bucket, rootdirectory, secure, v4auth, chunksize,
multipartcopychunksize, multipartcopymaxconcurrency,
multipartcopythresholdsize, storageclass, encrypt}`` (plus ``keyid``,
``sessiontoken``, ``objectacl`` — ``none`` sends no ACL, for buckets with
ACLs disabled — ``skipverify`` as in Distribution, and this driver's
``requesttimeout``, ``uploadconcurrency``, ``signpayload`` and
``cabundle``).
Without ``accesskey``/``secretkey`` the credentials come from botocore's
chain (``AWS_*`` environment variables, ``~/.aws``, instance metadata...).

TLS (an ``https`` ``regionendpoint``)
  The server's certificate is checked against the system's CAs, or only
  against the PEM certificates in the file ``cabundle`` (a private CA);
  ``skipverify: true`` (Distribution's key) checks nothing: for test
  set-ups only, as anyone on the path can then read and change the data.

Payload signing
  A SigV4 request signs either the SHA-256 of its body or the words
  ``UNSIGNED-PAYLOAD``. Hashing a part costs a pass of SHA-256 over every
  byte here, and the endpoint verifies it with another; the registry has
  already hashed the blob once for its digest. ``signpayload: auto`` (the
  default, as botocore and the AWS SDKs do) signs bodies over ``http``,
  where nothing else protects them in transit, and sends bodies over
  ``https`` unsigned (TLS protects them); ``true`` or ``false`` force it
  (``false`` over a trusted network to a plain-http endpoint, as an
  in-cluster Ceph or MinIO: what a presigned URL does). Bodies up to 256
  KiB (metadata, hash states, XML) are always signed.

Non-blocking
  Every S3 request goes through treq on the reactor, over the driver's own
  persistent connection pool, signed with botocore's SigV4 signer (headers,
  or the query for presigned URLs). Signing is pure computation; the only
  calls that may block (resolving or refreshing credentials through
  botocore's chain, hashing a large request body) run in the driver's
  bounded thread pool. Every request has a timeout (``requesttimeout``
  seconds, default 60) and so does every wait for response bytes: a dead,
  slow or full endpoint gives a ``DriverError`` naming the endpoint and
  what to check, never a hang. Bad credentials and a missing bucket give a
  ``DriverError`` saying so; ``check()`` (run when the reactor starts, its
  outcome logged) reports them at start-up.

Keys
  The object at driver path ``/a/b`` is the key ``<rootdirectory>/a/b``.
  Directories are implicit: ``list`` and ``walk`` derive them from key
  prefixes (paginated ListObjectsV2, so 10,000 tags list fine); a directory
  exists while some key lies below it. Keys outside the path grammar (put
  there by something else) are not shown.

Writers: appends on a store without append
  The state of a writer lives in the bucket, never only in this process,
  so ``writer(path, append=True)`` on any instance (or after a crash)
  continues where the last ``close`` left off. New bytes are gathered into
  parts of ``chunksize`` (at least S3's 5 MiB minimum) uploaded with up to
  ``uploadconcurrency`` (this driver's key, default 3) in flight: memory
  per writer is about ``chunksize`` x (``uploadconcurrency`` + 1). When a
  session announces its length (``S3Writer.expect``: the registry passes a
  request's ``Content-Length``) and payloads are unsigned, each part is
  sent while its bytes arrive instead of after it has been gathered.

  One multipart upload stays open across the sessions (PATCH requests) of
  one object, so appending is linear in the bytes appended: no session
  copies or re-reads what earlier sessions sent. After ``close`` the object
  at the key is either

  * a plain object holding every byte, while there are under 5 MiB and
    no multipart upload was needed; or
  * an *append state*: an object whose metadata names the open multipart
    upload (``x-amz-meta-registry-append-upload``), how many of its parts
    hold data (``...-append-parts``) and the total size
    (``...-append-size``), and whose body is the tail: the bytes after
    the last part (under 5 MiB, the minimum size of a part that is not
    the last). Its PUT is the session's atomic durable point.

  A writer's *note* (``set_note``, at most 1 KiB, e.g. the registry's
  hash state of an upload) is stored in the same PUT as object metadata
  (``x-amz-meta-registry-note``), of the append state or of the small
  plain object, and read back by the next ``writer(path, append=True)``
  from its HEAD as ``note``: state that must match the bytes exactly
  costs no request of its own and cannot disagree with them after a
  crash. A session that stores bytes without a note stores none.

  A session continuing an append state reads the tail back (bounded by
  5 MiB, ``If-Match`` its ETag) ahead of its new bytes and sends parts
  numbered after the recorded ones; at ``close`` what is left, if 5 MiB
  or more, becomes a part of its own, else the next tail. A session
  continuing a complete object of 5 MiB or more copies it server-side
  into a new upload's first part(s) (UploadPartCopy, ``If-Match`` its
  ETag), once: later sessions continue that upload. ``commit`` is
  CompleteMultipartUpload (ListParts for the ETags of earlier sessions'
  parts; the tail sent, or copied server-side, as the last part), which
  swaps the complete object in atomically; ``commit`` of a complete object
  with no new bytes is free.

  ``stat`` of an append state reports its total size from the metadata
  (one HEAD, as for any object). Reading it (``reader``, ``get_content``,
  ``move``) first completes the upload (server-side: ListParts, the tail
  copied as the last part, CompleteMultipartUpload): the bytes of an
  uncompleted upload cannot be read. The registry reads an upload's data
  before ``commit`` only to repair a crash between a ``close`` and the
  storing of its hash state, so this is rare; the next append then
  copies the completed object once, as above. ``walk`` and ``list`` see
  an append state's stored length (its tail) as its size.

  A crash within a session loses only that session's unclosed bytes: the
  object keeps the state of the last ``close`` (the offset the registry's
  upload status reports); parts the dead session sent are numbered after
  the recorded ones, ignored by ``commit`` and overwritten by the next
  session. ``cancel`` aborts the upload and deletes the object; ``delete``
  of an append state aborts its upload, ``delete`` of a directory aborts
  the multipart uploads below it, and a bucket lifecycle rule
  ``AbortIncompleteMultipartUpload`` catches the rest (an object replaced
  by ``put_content`` or ``writer(append=False)`` leaves its upload to
  those).

Objects versus directories
  The contract forbids an object where a directory is or below another
  object. S3 has no such rule, so ``put_content``, ``writer(append=False)``
  and ``move`` check first, concurrently: a one-key listing below the path
  and one below its parent. A scratch ``put_content`` (``durable=False``)
  does not: the contract leaves that check to its caller, who owns the
  layout of its scratch objects (an upload's ``startedat``, data and hash
  states), so it is one PUT. A parent that already is a directory has no
  object among its ancestors (the rule this check keeps), so that is all
  for most writes (links next to others); a path in a new subtree (a new
  blob's ``data``, a repository's first link of a kind) also HEADs its
  ancestors up to the deepest directory, walking up a level per round
  trip (a HEAD and a listing of the next one up) for two levels, then
  all the rest at once: 4 requests for a new blob or layer link where
  the old code HEADed all of its 7-10 ancestors.

Moves
  ``move`` is a server-side copy (CopyObject below
  ``multipartcopythresholdsize``, by default 5 GiB here, 32 MiB in
  Distribution: see ``DEFAULT_COPY_THRESHOLD``; a multipart copy in
  ``multipartcopychunksize`` parts with ``multipartcopymaxconcurrency``
  requests in flight above it) followed by a delete of the source.

Staged writes
  ``staged_writer(path)`` (the contract's optional ``IStagedWriting``)
  streams a new object as parts of a multipart upload at its own key,
  invisible until ``commit`` completes it (from the ETags the session
  holds: no ListParts, no HEAD); an object under 5 MiB is one PUT at
  ``commit``. ``cancel`` aborts the upload and leaves the key alone. The
  registry writes a blob whose digest is known up front this way (a
  monolithic upload): no upload directory, no server-side copy.

Redirects
  ``redirect_url(path, "GET")`` is a SigV4-presigned URL valid for 20
  minutes (as Distribution's); other methods get ``None``.
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import re
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime
from typing import Any, NoReturn, TypeVar

import treq
from twisted.internet import error as net_error
from twisted.internet.defer import CancelledError, Deferred, TimeoutError as DeferredTimeout, DeferredSemaphore, ensureDeferred, fail, gatherResults, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseDone, ResponseFailed
from twisted.web.error import SchemeNotSupported
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from registry.storage.params import warn_unknown_params
from registry.transport import widen_sends
from registry.storage.driver import (
    DriverError,
    FileInfo,
    IFileReader,
    IFileWriter,
    IStorageDriver,
    InvalidOffsetError,
    PathNotFoundError,
    check_path,
)

NAME = "s3"
MiB = 1 << 20
GiB = 1 << 30
MIN_PART = 5 * MiB  # S3's minimum size of every part but the last
LAST_PART = 10000  # S3's highest part number: an append upload's final part
MAX_PART = 5 * GiB
DEFAULT_CHUNKSIZE = 10 * MiB
DEFAULT_COPY_CHUNKSIZE = 32 * MiB
DEFAULT_COPY_CONCURRENCY = 8
# CopyObject below 5 GiB (Distribution's default is 32 MiB): one request
# the store may satisfy without copying bytes (Ceph RGW shares them: 0.1 s
# for 256 MiB here, against 2-3 s as 32 MiB UploadPartCopy ranges). Set
# multipartcopythresholdsize: 33554432 for Distribution's parallel part
# copies (faster on AWS for objects of hundreds of MiB).
DEFAULT_COPY_THRESHOLD = MAX_PART
DEFAULT_UPLOAD_CONCURRENCY = 3
DEFAULT_TIMEOUT = 60.0
PRESIGN_SECONDS = 20 * 60
LIST_PAGE = 1000
DELETE_BATCH = 1000
HASH_INLINE = 256 * 1024  # bodies above this are hashed in the thread pool (or not signed)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
READ_HIGH_WATER = 2 * MiB  # a reader pauses its GET above this many buffered bytes
RETRIES = (0.2, 1.0)  # pauses before retrying a request that failed transiently
WALK_LEVELS = 2  # ancestors a new path's object-vs-directory check walks up one at a time

_S3NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
_STORAGE_CLASSES = ("STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING",
                    "GLACIER_IR", "OUTPOSTS", "NONE")
KNOWN_PARAMS = (
    "accesskey", "secretkey", "region", "regionendpoint", "forcepathstyle", "bucket", "rootdirectory",
    "secure", "v4auth", "chunksize", "multipartcopychunksize", "multipartcopymaxconcurrency",
    "multipartcopythresholdsize", "storageclass", "encrypt", "keyid", "sessiontoken", "objectacl",
    "requesttimeout", "uploadconcurrency", "signpayload", "skipverify", "cabundle",
)

T = TypeVar("T")
Body = bytes | list[bytes]  # a request body: bytes, or pieces sent in order


# --- configuration ------------------------------------------------------------


@dataclass(frozen=True)
class S3Config:
    """The validated ``storage.s3`` parameters."""

    bucket: str
    region: str
    endpoint: str  # scheme://host[:port], no trailing slash
    forcepathstyle: bool = False
    accesskey: str | None = None
    secretkey: str | None = None
    sessiontoken: str | None = None
    rootdirectory: str = ""  # without leading/trailing slashes
    chunksize: int = DEFAULT_CHUNKSIZE
    copychunksize: int = DEFAULT_COPY_CHUNKSIZE
    copyconcurrency: int = DEFAULT_COPY_CONCURRENCY
    copythreshold: int = DEFAULT_COPY_THRESHOLD
    uploadconcurrency: int = DEFAULT_UPLOAD_CONCURRENCY
    storageclass: str = "STANDARD"
    encrypt: bool = False
    keyid: str | None = None
    objectacl: str = "private"
    requesttimeout: float = DEFAULT_TIMEOUT
    signpayload: bool = True  # sign the SHA-256 of bodies over HASH_INLINE (else UNSIGNED-PAYLOAD)
    skipverify: bool = False  # https: no certificate check at all
    cabundle: str | None = None  # https: trust only the certificates in this PEM file


def _key(name: str) -> str:
    return f"storage.{NAME}.{name}"


def _bool(params: Mapping[str, Any], name: str, default: bool) -> bool:
    value = params.get(name, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{_key(name)}: must be true or false, got {value!r}")


def _int(params: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = params.get(name, default)
    if isinstance(value, bool):
        raise ValueError(f"{_key(name)}: must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ValueError(f"{_key(name)}: must be a number, got {value!r}") from None
    if not isinstance(value, int):
        raise ValueError(f"{_key(name)}: must be a number, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{_key(name)}: must be between {low} and {high}, got {value}")
    return value


def _str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"{_key(name)}: must be a string, got {value!r}")
    return value


def parse_params(params: Mapping[str, Any]) -> S3Config:
    """Validate ``storage.s3`` parameters; ``ValueError`` names the key."""
    bucket = _str(params, "bucket")
    if bucket is None:
        raise ValueError(f"{_key('bucket')}: required (the name of an existing bucket)")
    secure = _bool(params, "secure", True)
    endpoint = _str(params, "regionendpoint")
    region = _str(params, "region")
    if region is None:
        if endpoint is None:
            raise ValueError(f"{_key('region')}: required (or set {_key('regionendpoint')})")
        region = "us-east-1"
    if endpoint is None:
        endpoint = f"{'https' if secure else 'http'}://s3.{region}.amazonaws.com"
    elif "://" not in endpoint:
        endpoint = f"{'https' if secure else 'http'}://{endpoint}"
    parsed = urllib.parse.urlsplit(endpoint)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{_key('regionendpoint')}: must be an http(s) URL, got {endpoint!r}")
    endpoint = f"{parsed.scheme}://{parsed.netloc}"
    accesskey, secretkey = _str(params, "accesskey"), _str(params, "secretkey")
    if (accesskey is None) != (secretkey is None):
        missing = "secretkey" if secretkey is None else "accesskey"
        raise ValueError(f"{_key(missing)}: required when the other key is set (or leave both out to use the environment)")
    if not _bool(params, "v4auth", True):
        from twisted.logger import Logger

        Logger().warn("storage.s3.v4auth: false is not supported; signing with AWS Signature V4")
    root = params.get("rootdirectory", "") or ""
    if not isinstance(root, str):
        raise ValueError(f"{_key('rootdirectory')}: must be a string, got {root!r}")
    root = root.strip("/")
    if root and not all(_SEGMENT_RE.match(seg) and seg not in (".", "..") for seg in root.split("/")):
        raise ValueError(f"{_key('rootdirectory')}: must be /segment[/segment...] of A-Z a-z 0-9 . _ : -, got {root!r}")
    storageclass = (_str(params, "storageclass") or "STANDARD").upper()
    if storageclass not in _STORAGE_CLASSES:
        raise ValueError(f"{_key('storageclass')}: must be one of {', '.join(_STORAGE_CLASSES)}, got {storageclass!r}")
    timeout = params.get("requesttimeout", DEFAULT_TIMEOUT)
    try:
        timeout = float(timeout)
    except (TypeError, ValueError):
        raise ValueError(f"{_key('requesttimeout')}: must be a number of seconds, got {timeout!r}") from None
    if not 0 < timeout <= 3600:
        raise ValueError(f"{_key('requesttimeout')}: must be between 0 and 3600 seconds, got {timeout}")
    sign = params.get("signpayload", "auto")
    if isinstance(sign, str) and sign.strip().lower() == "auto":
        signpayload = parsed.scheme == "http"
    else:
        try:
            signpayload = _bool(params, "signpayload", True)
        except ValueError:
            raise ValueError(f"{_key('signpayload')}: must be auto, true or false, got {sign!r}") from None
    cabundle = _str(params, "cabundle")
    if cabundle is not None:
        _load_ca_bundle(cabundle)  # unreadable or no certificate: refuse to start, naming the key
    return S3Config(
        bucket=bucket,
        region=region,
        endpoint=endpoint,
        forcepathstyle=_bool(params, "forcepathstyle", False),
        accesskey=accesskey,
        secretkey=secretkey,
        sessiontoken=_str(params, "sessiontoken"),
        rootdirectory=root,
        chunksize=_int(params, "chunksize", DEFAULT_CHUNKSIZE, MIN_PART, MAX_PART),
        # a copied range may absorb a < 5 MiB remainder: keep it under 5 GiB
        copychunksize=_int(params, "multipartcopychunksize", DEFAULT_COPY_CHUNKSIZE, MIN_PART, MAX_PART - MIN_PART),
        copyconcurrency=_int(params, "multipartcopymaxconcurrency", DEFAULT_COPY_CONCURRENCY, 1, 1000),
        copythreshold=_int(params, "multipartcopythresholdsize", DEFAULT_COPY_THRESHOLD, 0, MAX_PART),
        uploadconcurrency=_int(params, "uploadconcurrency", DEFAULT_UPLOAD_CONCURRENCY, 1, 64),
        storageclass=storageclass,
        encrypt=_bool(params, "encrypt", False),
        keyid=_str(params, "keyid"),
        objectacl=_str(params, "objectacl") or "private",
        requesttimeout=timeout,
        signpayload=signpayload,
        skipverify=_bool(params, "skipverify", False),
        cabundle=cabundle,
    )


def _load_ca_bundle(path: str) -> builtins.list[Any]:
    """The certificates (``twisted.internet.ssl.Certificate``) in the PEM
    file ``path``; ``ValueError`` naming ``storage.s3.cabundle`` if it cannot
    be read or holds none."""
    from twisted.internet.ssl import Certificate

    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ValueError(f"{_key('cabundle')}: cannot read {path!r}: {e.strerror or e}") from None
    end = b"-----END CERTIFICATE-----"
    blocks = [b + end for b in text.split(end) if b"-----BEGIN CERTIFICATE-----" in b]
    certs = []
    for block in blocks:
        try:
            certs.append(Certificate.loadPEM(block[block.index(b"-----BEGIN CERTIFICATE-----"):]))
        except Exception as e:
            raise ValueError(f"{_key('cabundle')}: {path!r} holds a certificate that cannot be parsed ({e})") from None
    if not certs:
        raise ValueError(f"{_key('cabundle')}: {path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return certs


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """A TLS client connection that checks no certificate (``skipverify``),
    still sending the host name (SNI) a virtual-hosted endpoint needs."""

    def __init__(self, hostname: str) -> None:
        from twisted.internet.ssl import CertificateOptions

        self._context = CertificateOptions().getContext()  # verify=False by default
        self._hostname = hostname

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        import ipaddress

        from OpenSSL import SSL

        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        try:
            ipaddress.ip_address(self._hostname)
        except ValueError:
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


@implementer(IPolicyForHTTPS)
class _TLSPolicy:
    """How the driver's Agent checks an https endpoint: against the
    ``cabundle`` certificates only, or not at all (``skipverify``)."""

    def __init__(self, config: S3Config) -> None:
        self._skip = config.skipverify
        self._trust: Any = None
        if not self._skip and config.cabundle is not None:
            from twisted.internet.ssl import trustRootFromCertificates

            self._trust = trustRootFromCertificates(_load_ca_bundle(config.cabundle))

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        host = hostname.decode("ascii")
        if self._skip:
            return _UnverifiedTLS(host)
        from twisted.internet.ssl import optionsForClientTLS

        return optionsForClientTLS(host, trustRoot=self._trust)


# --- S3 errors ------------------------------------------------------------------


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """The Agent's connections, as its own factory makes them (TCP for
    ``http``, TCP + TLS for ``https``), each sending up to
    ``registry.transport.SEND_LIMIT`` at a time: a part goes to the store
    in a reactor turn per MiB instead of per 128 KiB (about a tenth of the
    registry's CPU per uploaded byte)."""

    def __init__(self, reactor: Any, tls: IPolicyForHTTPS, timeout: float) -> None:
        self._reactor = reactor
        self._tls = tls
        self._timeout = timeout

    def endpointForURI(self, uri: Any) -> IStreamClientEndpoint:
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._reactor, uri.host.decode("ascii"), uri.port, timeout=self._timeout)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        elif uri.scheme != b"http":
            raise SchemeNotSupported(f"unsupported scheme: {uri.scheme!r}")
        return _WideSends(endpoint)


@implementer(IStreamClientEndpoint)
class _WideSends:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self._endpoint = endpoint

    def connect(self, factory: Any) -> "Deferred[Any]":
        def widen(protocol: Any) -> Any:
            widen_sends(protocol.transport)
            return protocol

        return self._endpoint.connect(factory).addCallback(widen)


class S3Error(DriverError):
    """An S3 request failed: HTTP status, S3 error code and a message that
    says what to check."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(NAME, detail)
        self.status = status
        self.code = code


def _text(elem: ET.Element | None, tag: str, default: str = "") -> str:
    if elem is None:
        return default
    found = elem.find(_S3NS + tag)
    if found is None:
        found = elem.find(tag)
    return found.text or default if found is not None else default


def _parse_xml(body: bytes, what: str) -> ET.Element:
    try:
        return ET.fromstring(body)
    except ET.ParseError as e:
        raise DriverError(NAME, f"{what}: the endpoint answered something that is not S3 XML ({e})") from None


def _iso_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()


def _http_time(text: str | None) -> float:
    if not text:
        return time.time()
    try:
        return parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError):
        return time.time()


def _valid_relative(rel: str) -> bool:
    return bool(rel) and all(_SEGMENT_RE.match(seg) and seg not in (".", "..") for seg in rel.split("/"))


# --- the driver -------------------------------------------------------------------


@dataclass(frozen=True)
class _Head:
    size: int  # the object's bytes; for an append state, every byte written so far
    mod_time: float
    etag: str
    upload: str = ""  # an append state: the id of its open multipart upload
    parts: int = 0  # ... the parts 1..parts of it that hold the bytes before the tail
    stored: int = 0  # the stored object's own length (for an append state: the tail)
    note: bytes | None = None  # the writer's note stored with these bytes (``S3Writer.set_note``)


# Metadata of an append state (see "Writers" in the module docstring).
META_UPLOAD = "x-amz-meta-registry-append-upload"
META_PARTS = "x-amz-meta-registry-append-parts"
META_SIZE = "x-amz-meta-registry-append-size"
# A writer's note (``S3Writer.set_note``), base64: stored with the bytes it describes.
META_NOTE = "x-amz-meta-registry-note"
MAX_NOTE = 1024  # S3 allows 2 KiB of user metadata in all


@implementer(IStorageDriver)
class S3Driver:
    """An ``IStorageDriver`` over one S3 bucket (see the module docstring)."""

    name = NAME

    def __init__(self, config: S3Config, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self._reactor = reactor
        self._prefix = config.rootdirectory + "/" if config.rootdirectory else ""
        self._http_pool = HTTPConnectionPool(reactor, persistent=True)
        self._http_pool.maxPersistentPerHost = 32
        self._http_pool.cachedConnectionTimeout = 60
        # The Agent itself, not treq's client: treq re-parses every URL
        # (hyperlink, IDNA) and runs a cookie jar, a few ms of CPU per
        # request that a PATCH-heavy upload pays ~20 times per request.
        tls: IPolicyForHTTPS = BrowserLikePolicyForHTTPS()
        if config.skipverify or config.cabundle is not None:
            tls = _TLSPolicy(config)
        endpoints = _Endpoints(reactor, tls, min(config.requesttimeout, 10))
        self._agent = Agent.usingEndpointFactory(reactor, endpoints, pool=self._http_pool)
        self._threads: ThreadPool | None = None
        self._closed = False
        self._credentials: Any = None  # botocore Credentials (maybe refreshable)
        self._signer: tuple[Any, Any] | None = None  # (frozen credentials, their signer)
        self._bucket_checked = False
        parsed = urllib.parse.urlsplit(config.endpoint)
        if config.forcepathstyle:
            self._base = f"{config.endpoint}/{config.bucket}"
        else:
            self._base = f"{parsed.scheme}://{config.bucket}.{parsed.netloc}"
        if config.accesskey is not None:
            from botocore.credentials import Credentials

            self._credentials = Credentials(config.accesskey, config.secretkey, config.sessiontoken)

    # -- resources ---------------------------------------------------------------

    def _pool(self) -> ThreadPool:
        if self._threads is None:
            self._threads = ThreadPool(minthreads=0, maxthreads=4, name=f"storage-{NAME}")
            self._threads.start()
        return self._threads

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> "Deferred[T]":
        if self._closed:
            raise DriverError(NAME, "the driver was closed")
        return deferToThreadPool(self._reactor, self._pool(), fn, *args)

    def close(self) -> "Deferred[None]":
        """Close the connection pool and stop the thread pool (``IStorageDriver.close``;
        the application calls it when it stops). Idempotent; later requests
        fail with ``DriverError``."""
        if self._closed:
            return succeed(None)
        self._closed = True
        ds: list[Deferred[Any]] = [self._http_pool.closeCachedConnections()]
        if self._threads is not None:
            threads, self._threads = self._threads, None
            ds.append(deferToThreadPool(self._reactor, self._reactor.getThreadPool(), threads.stop))
        return gatherResults(ds).addCallback(lambda _: None)

    async def _frozen_credentials(self) -> Any:
        creds = self._credentials
        if creds is None:
            creds = self._credentials = await self._in_thread(_resolve_credentials)
            if creds is None:
                raise DriverError(
                    NAME,
                    "no credentials: set storage.s3.accesskey and storage.s3.secretkey, or provide them "
                    "through the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or ~/.aws",
                )
        refresh_needed = getattr(creds, "refresh_needed", None)
        if refresh_needed is not None and refresh_needed():
            return await self._in_thread(creds.get_frozen_credentials)
        return creds.get_frozen_credentials()

    # -- paths and keys ------------------------------------------------------------

    def _k(self, path: str) -> str:
        return self._prefix + path[1:] if path != "/" else self._prefix

    def _path(self, key: str) -> str:
        return "/" + key[len(self._prefix):]

    def _url(self, key: str, query: Mapping[str, str] | None = None) -> str:
        url = self._base + "/" + urllib.parse.quote(key, safe="/~")
        if query:
            url += "?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote, safe="~")
        return url

    def _write_headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.config.storageclass != "NONE":
            headers["x-amz-storage-class"] = self.config.storageclass
        if self.config.encrypt:
            if self.config.keyid:
                headers["x-amz-server-side-encryption"] = "aws:kms"
                headers["x-amz-server-side-encryption-aws-kms-key-id"] = self.config.keyid
            else:
                headers["x-amz-server-side-encryption"] = "AES256"
        if self.config.objectacl.lower() != "none":
            headers["x-amz-acl"] = self.config.objectacl
        return headers

    # -- HTTP ------------------------------------------------------------------------

    async def _sign(self, method: str, url: str, headers: dict[str, str], payload_hash: str) -> dict[str, str]:
        from botocore.awsrequest import AWSRequest

        creds = await self._frozen_credentials()
        request = AWSRequest(method=method, url=url, headers=headers)
        request.context["payload_sha256"] = payload_hash
        signer = self._signer
        if signer is None or signer[0] != creds:  # one signer per (refreshed) credentials
            signer = self._signer = (creds, _HeaderSigner(creds, "s3", self.config.region))
        signer[1].add_auth(request)
        return dict(request.headers.items())

    async def _payload_hash(self, pieces: builtins.list[bytes], length: int) -> str:
        """The ``x-amz-content-sha256`` of a body: its SHA-256 (in the thread
        pool above ``HASH_INLINE``), or ``UNSIGNED-PAYLOAD`` for a large body
        when ``signpayload`` is off (see "Payload signing")."""
        if length > HASH_INLINE and not self.config.signpayload:
            return UNSIGNED_PAYLOAD

        def digest() -> str:
            h = hashlib.sha256()
            for piece in pieces:
                h.update(piece)
            return h.hexdigest()

        if length <= HASH_INLINE:
            return digest()
        return await self._in_thread(digest)

    async def _request(
        self,
        method: str,
        key: str | None,
        query: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: "Body | _StreamSource" = b"",
        ok: tuple[int, ...] = (200,),
        stream: bool = False,
        what: str = "",
    ) -> IResponse:
        """One signed request; returns the response when its status is in
        ``ok`` (its body unread), else raises ``S3Error``. ``key`` None is
        the bucket itself. Transient failures (connection refused or reset,
        500/503) are retried; a timeout is not."""
        if self._closed:
            raise DriverError(NAME, "the driver was closed")
        url = self._url(key, query) if key is not None else self._base + "/" + (
            "?" + urllib.parse.urlencode(sorted(query.items()), quote_via=urllib.parse.quote, safe="~") if query else ""
        )
        source: _StreamSource | None = None
        if isinstance(body, _StreamSource):
            # A part streamed while its bytes arrive: its hash cannot be known first.
            source, pieces, length, payload_hash = body, [], body.length, UNSIGNED_PAYLOAD
        else:
            pieces = ([body] if body else []) if isinstance(body, bytes) else [p for p in body if p]
            length = sum(len(p) for p in pieces)
            payload_hash = await self._payload_hash(pieces, length) if length else hashlib.sha256(b"").hexdigest()
        what = what or f"{method} {urllib.parse.unquote(url)}"
        # A CompleteMultipartUpload whose answer was lost may have completed:
        # sending it again would fail with NoSuchUpload. Everything else is
        # idempotent (or, for CreateMultipartUpload, harmless to repeat).
        retryable = not (method == "POST" and query is not None and "uploadId" in query)
        attempt = 0
        while True:
            all_headers = dict(headers or {})
            if length or method in ("PUT", "POST"):
                all_headers["Content-Length"] = str(length)
            signed = await self._sign(method, url, all_headers, payload_hash)
            twisted_headers = Headers({k.encode(): [v.encode()] for k, v in signed.items() if k.lower() != "content-length"})
            try:
                producer: Any = None
                if source is not None:
                    producer = source.producer()
                elif length or method in ("PUT", "POST"):
                    producer = _PiecesProducer(pieces, length)
                d = self._agent.request(method.encode(), url.encode("ascii"), twisted_headers, producer)
                deadline = self._reactor.callLater(self.config.requesttimeout, d.cancel)
                if source is not None:
                    # The body arrives at the client's pace: the timeout counts from its last byte.
                    source.on_feed = lambda deadline=deadline: deadline.active() and deadline.reset(self.config.requesttimeout)

                def settled(result: Any, deadline: Any = deadline) -> Any:
                    if deadline.active():
                        deadline.cancel()
                    return result

                d.addBoth(settled)
                response: IResponse = await d
            except (CancelledError, DeferredTimeout, net_error.TimeoutError):
                raise DriverError(
                    NAME, f"{what}: no answer from {self.config.endpoint} within {self.config.requesttimeout:g} s "
                    "(endpoint down, overloaded or full?)",
                ) from None
            except (net_error.ConnectError, net_error.DNSLookupError, ResponseFailed, net_error.ConnectionLost) as e:
                if any(r.check(CancelledError, DeferredTimeout) for r in getattr(e, "reasons", [])):
                    raise DriverError(
                        NAME, f"{what}: no answer from {self.config.endpoint} within {self.config.requesttimeout:g} s "
                        "(endpoint down, overloaded or full?)",
                    ) from None
                if attempt < len(RETRIES) and retryable and not isinstance(e, net_error.DNSLookupError) and not (
                    source is not None and source.aborted
                ):
                    await _sleep(self._reactor, RETRIES[attempt])
                    attempt += 1
                    continue
                raise DriverError(NAME, f"{what}: cannot reach {self.config.endpoint}: {_describe(e)}") from None
            if response.code in ok:
                return response
            content = b"" if method == "HEAD" else await self._body(response, what)
            if response.code in (500, 502, 503, 504) and attempt < len(RETRIES) and retryable:
                await _sleep(self._reactor, RETRIES[attempt])
                attempt += 1
                continue
            raise self._error(response.code, content, what)

    async def _body(self, response: IResponse, what: str, limit: int | None = None) -> bytes:
        """The whole response body, with the request timeout as deadline."""
        d = treq.content(response)
        d.addTimeout(self.config.requesttimeout, self._reactor)
        try:
            return await d
        except (CancelledError, DeferredTimeout, net_error.TimeoutError):
            raise DriverError(NAME, f"{what}: the response body stalled for {self.config.requesttimeout:g} s") from None
        except ResponseFailed as e:
            raise DriverError(NAME, f"{what}: connection lost while reading the response: {_describe(e)}") from None

    def _error(self, status: int, body: bytes, what: str) -> S3Error:
        code, message = "", ""
        if body:
            try:
                root = ET.fromstring(body)
                code, message = _text(root, "Code"), _text(root, "Message")
            except ET.ParseError:
                message = body[:200].decode("utf-8", "replace")
        label = f"HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
        bucket = self.config.bucket
        if code == "NoSuchBucket" or (status == 404 and code == "" and what.startswith("bucket")):
            hint = f"bucket {bucket!r} does not exist at {self.config.endpoint}: create it, or fix storage.s3.bucket"
        elif code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken") or (
            status == 403 and code in ("", "AccessDenied")
        ):
            hint = (
                f"{self.config.endpoint} refused the credentials for bucket {bucket!r}: check storage.s3.accesskey "
                "and storage.s3.secretkey (or the AWS_* environment / ~/.aws), storage.s3.region, and the bucket's policy"
            )
        elif code in ("QuotaExceeded", "EntityTooLarge") or status == 507:
            hint = "the bucket is full (quota reached)"
        elif status in (500, 502, 503, 504) or code in ("SlowDown", "ServiceUnavailable"):
            hint = f"{self.config.endpoint} is unavailable or overloaded; try again"
        elif code == "PermanentRedirect" or status == 301:
            hint = f"bucket {bucket!r} is in another region: fix storage.s3.region / storage.s3.regionendpoint"
        else:
            hint = "the S3 request failed"
        return S3Error(status, code, f"{what}: {hint} ({label})")

    async def _xml(self, method: str, key: str | None, query: Mapping[str, str] | None = None, **kw: Any) -> ET.Element:
        what = kw.get("what") or f"{method} {key}"
        response = await self._request(method, key, query, **kw)
        body = await self._body(response, what)
        root = _parse_xml(body, what)
        if root.tag in ("Error", _S3NS + "Error"):  # S3 may report an error inside a 200
            raise self._error(500 if not _text(root, "Code") else 409, body, what)
        return root

    # -- primitive operations --------------------------------------------------------

    async def _head(self, key: str) -> _Head | None:
        response = await self._request("HEAD", key, ok=(200, 404), what=f"HEAD {key}")
        await self._discard(response)
        if response.code == 404:
            await self._check_bucket()
            return None
        return _parse_head(response.headers)

    async def _materialize(self, path: str, head: _Head) -> _Head:
        """Complete the multipart upload of an append state so the object is
        readable (its tail copied server-side as the last part); returns
        the HEAD of the complete object. Only readers need this: a blob
        upload never reads its data before ``commit`` (which completes it
        anyway) except to repair a crash."""
        key = self._k(path)
        for _ in range(3):
            if not head.upload:
                return head
            try:
                if head.stored:
                    await self._copy_part(key, head.upload, LAST_PART, key, 0, head.stored - 1, head.etag)
                await self._complete_append(path, key, head.upload, head.parts, head.size - head.stored, head.stored)
            except DriverError:
                # Someone else completed or replaced it meanwhile? Look again.
                again = await self._head(key)
                if again is None:
                    raise PathNotFoundError(path, NAME) from None
                if again.upload == head.upload and again.etag == head.etag:
                    raise
                head = again
                continue
            again = await self._head(key)
            if again is None:
                raise PathNotFoundError(path, NAME)
            head = again
        if head.upload:
            raise DriverError(NAME, f"{path}: its append state kept changing while it was being completed")
        return head

    async def _complete_append(self, path: str, key: str, upload_id: str, count: int, size: int, final: int) -> None:
        """Complete an append upload: parts 1..count hold ``size`` bytes and,
        if ``final``, part ``LAST_PART`` its last ``final`` bytes.

        Parts numbered between them are orphans of a session that died
        before its ``close``. S3 would leave them out, but RGW refuses a
        completion that omits an uploaded part, and no part can be deleted:
        so they are completed too (each is 5 MiB or more, as the final part
        is numbered after them), then cut out with a server-side copy of the
        good ranges (only after such a crash)."""
        listed = await self._list_parts(key, upload_id)
        _check_parts(path, listed, count, size)
        orphans = sorted(n for n in listed if count < n < LAST_PART)
        if not final and LAST_PART in listed:
            orphans.append(LAST_PART)  # a dead commit's final part: last, so of any size
        numbers = builtins.list(range(1, count + 1)) + orphans
        if final:
            if listed.get(LAST_PART, ("", -1))[1] != final:
                raise DriverError(NAME, f"{path}: the last part of its multipart upload is not the {final} bytes sent")
            numbers.append(LAST_PART)
        if not numbers:
            await self._put(key, b"")
            return
        await self._complete(key, upload_id, [(n, listed[n][0]) for n in numbers])
        if orphans:
            await self._cut(path, key, size, sum(listed[n][1] for n in orphans), final)

    async def _cut(self, path: str, key: str, keep: int, skip: int, final: int) -> None:
        """Rewrite the object at ``key`` server-side as its first ``keep``
        bytes followed by its last ``final`` (dropping ``skip`` between)."""
        head = await self._head(key)
        if head is None or head.upload or head.size != keep + skip + final:
            raise DriverError(NAME, f"{path} changed while a dead session's parts were being cut out")
        if keep == 0 and final == 0:
            await self._put(key, b"")
            return
        upload_id = await self._create_upload(key)
        try:
            parts = await self._copy_ranges_as_parts(key, upload_id, key, keep, head.etag, 1) if keep else []
            if final:
                number = len(parts) + 1
                start = keep + skip
                parts.append((number, await self._copy_part(key, upload_id, number, key, start, start + final - 1, head.etag)))
            await self._complete(key, upload_id, parts)
        except BaseException:
            await _quietly(self._abort(key, upload_id))
            raise

    async def _put_state(self, key: str, upload_id: str, parts: int, size: int, tail: Body, note: bytes | None = None) -> None:
        """Store an append state at ``key`` (one atomic PUT: the writer's
        durable point): parts 1..parts of the upload, then ``tail``, and
        the session's note, if any."""
        headers = self._write_headers()
        headers.update({META_UPLOAD: upload_id, META_PARTS: str(parts), META_SIZE: str(size)})
        if note is not None:
            headers[META_NOTE] = base64.b64encode(note).decode("ascii")
        response = await self._request("PUT", key, headers=headers, body=tail, what=f"PUT {key} (append state)")
        await self._discard(response)

    async def _get_state_tail(self, key: str, head: _Head) -> bytes:
        """The tail stored in an append state (under 5 MiB), exactly that version."""
        if not head.stored:
            return b""
        what = f"GET {key} (append state)"
        response = await self._request("GET", key, headers={"If-Match": head.etag}, ok=(200, 404, 412), what=what)
        if response.code != 200:
            await self._discard(response)
            raise DriverError(NAME, f"{self._path(key)} changed while it was being appended to")
        data = await self._body(response, what)
        if len(data) != head.stored:
            raise DriverError(NAME, f"{self._path(key)} changed while it was being appended to")
        return data

    async def _list_parts(self, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
        """{part number: (ETag, size)} of a multipart upload (ListParts, paginated)."""
        found: dict[int, tuple[str, int]] = {}
        marker = "0"
        while True:
            root = await self._xml("GET", key, {"uploadId": upload_id, "part-number-marker": marker},
                                   what=f"list parts of {key}")
            for part in root.iter(_S3NS + "Part"):
                found[int(_text(part, "PartNumber", "0"))] = (_text(part, "ETag"), int(_text(part, "Size", "0")))
            marker = _text(root, "NextPartNumberMarker")
            if _text(root, "IsTruncated") != "true" or not marker:
                return found

    async def _check_bucket(self) -> None:
        """A 404 on a HEAD says nothing about why: once, make sure the bucket
        exists, so a missing bucket is a clear error, not "path not found"."""
        if self._bucket_checked:
            return
        response = await self._request("HEAD", None, ok=(200,), what=f"bucket {self.config.bucket!r}")
        await self._discard(response)
        self._bucket_checked = True

    async def _discard(self, response: IResponse) -> None:
        if response.code != 204 and response.length not in (0,):
            try:
                await self._body(response, "discard")
            except DriverError:
                pass

    async def _list_pages(
        self, prefix: str, delimiter: str | None = None, max_keys: int = LIST_PAGE
    ) -> AsyncIterator[tuple[list[tuple[str, int, float]], list[str]]]:
        """Pages of ListObjectsV2: ([(key, size, mtime)], [common prefixes])."""
        token: str | None = None
        while True:
            query = {"list-type": "2", "prefix": prefix, "max-keys": str(max_keys)}
            if delimiter:
                query["delimiter"] = delimiter
            if token:
                query["continuation-token"] = token
            root = await self._xml("GET", None, query, what=f"list {prefix!r}")
            contents = [
                (_text(c, "Key"), int(_text(c, "Size", "0")), _iso_time(_text(c, "LastModified")))
                for c in root.iter(_S3NS + "Contents")
            ]
            prefixes = [_text(p, "Prefix") for p in root.iter(_S3NS + "CommonPrefixes")]
            yield contents, prefixes
            token = _text(root, "NextContinuationToken") or None
            if _text(root, "IsTruncated") != "true" or token is None or max_keys < LIST_PAGE:
                return

    async def _first_below(self, key: str) -> tuple[str, int, float] | None:
        """Some object below directory ``key`` (None: not a directory)."""
        async for contents, _ in self._list_pages(key + "/", max_keys=1):
            return contents[0] if contents else None
        return None

    async def _check_can_create(self, path: str) -> None:
        """``DriverError`` if ``path`` is a directory or lies below an object.

        When the parent already is a directory (some key lies below it),
        no ancestor can be an object (the rule this check keeps), so two
        one-key listings in parallel answer. A path in a new subtree walks
        up: a HEAD of the deepest ancestor not known to be a directory
        and a listing below the one above it, in parallel, until that one
        is a directory (a new blob's or link's directory is usually one
        or two levels deep: 4-6 requests); after ``WALK_LEVELS`` levels
        the ancestors left are HEADed all at once."""
        key = self._k(path)
        segments = path.split("/")[1:]
        ancestors = ["/" + "/".join(segments[:i]) for i in range(1, len(segments))]
        checks: builtins.list[Deferred[Any]] = [ensureDeferred(self._first_below(key))]
        if ancestors:
            checks.append(ensureDeferred(self._first_below(self._k(ancestors[-1]))))
        results = await _gather(checks)
        if results[0] is not None:
            raise DriverError(NAME, f"cannot create {path}: it is a directory")
        if not ancestors or results[1] is not None:
            return
        # ancestors[i:] are no directories; HEAD them one level at a time.
        i = len(ancestors) - 1
        for _ in range(WALK_LEVELS):
            if i == 0:
                break
            head, below = await _gather([
                ensureDeferred(self._head(self._k(ancestors[i]))),
                ensureDeferred(self._first_below(self._k(ancestors[i - 1]))),
            ])
            if head is not None:
                raise DriverError(NAME, f"cannot create {path}: {ancestors[i]} is an object, not a directory")
            if below is not None:
                return  # ancestors[i - 1] is a directory: none above it is an object
            i -= 1
        heads = await _gather([ensureDeferred(self._head(self._k(a))) for a in ancestors[: i + 1]])
        for ancestor, head in zip(ancestors, heads):
            if head is not None:
                raise DriverError(NAME, f"cannot create {path}: {ancestor} is an object, not a directory")

    async def _put(self, key: str, data: Body, note: bytes | None = None) -> None:
        headers = self._write_headers()
        if note is not None:
            headers[META_NOTE] = base64.b64encode(note).decode("ascii")
        response = await self._request("PUT", key, headers=headers, body=data, what=f"PUT {key}")
        await self._discard(response)

    async def _delete_key(self, key: str) -> None:
        response = await self._request("DELETE", key, ok=(200, 204, 404), what=f"DELETE {key}")
        await self._discard(response)

    async def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            objects = "".join(f"<Object><Key>{_xml_escape(k)}</Key></Object>" for k in batch)
            body = f'<?xml version="1.0" encoding="UTF-8"?><Delete><Quiet>true</Quiet>{objects}</Delete>'.encode()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            root = await self._xml("POST", None, {"delete": ""}, headers={"Content-MD5": md5}, body=body,
                                   what=f"delete {len(batch)} objects")
            errors = [(_text(e, "Key"), _text(e, "Code")) for e in root.iter(_S3NS + "Error")]
            errors = [(k, c) for k, c in errors if c != "NoSuchKey"]
            if errors:
                raise DriverError(NAME, f"deleting objects failed for {len(errors)} keys, e.g. {errors[0][0]} ({errors[0][1]})")

    async def _abort_uploads_below(self, prefix: str) -> None:
        """Abort every multipart upload on a key starting with ``prefix``."""
        marker: dict[str, str] = {}
        while True:
            root = await self._xml("GET", None, {"uploads": "", "prefix": prefix, **marker}, what=f"list uploads {prefix!r}")
            uploads = [(_text(u, "Key"), _text(u, "UploadId")) for u in root.iter(_S3NS + "Upload")]
            await gatherResults([ensureDeferred(self._abort(k, u)) for k, u in uploads], consumeErrors=True).addErrback(
                lambda f: f.value.subFailure
            )
            if _text(root, "IsTruncated") != "true" or not uploads:
                return
            marker = {"key-marker": _text(root, "NextKeyMarker"), "upload-id-marker": _text(root, "NextUploadIdMarker")}

    async def _abort(self, key: str, upload_id: str) -> None:
        response = await self._request("DELETE", key, {"uploadId": upload_id}, ok=(200, 204, 404), what=f"abort upload of {key}")
        await self._discard(response)

    async def _create_upload(self, key: str) -> str:
        root = await self._xml("POST", key, {"uploads": ""}, headers=self._write_headers(), what=f"start upload of {key}")
        upload_id = _text(root, "UploadId")
        if not upload_id:
            raise DriverError(NAME, f"start upload of {key}: the endpoint returned no UploadId")
        return upload_id

    async def _upload_part(self, key: str, upload_id: str, number: int, data: "Body | _StreamSource") -> str:
        response = await self._request(
            "PUT", key, {"partNumber": str(number), "uploadId": upload_id}, body=data, what=f"part {number} of {key}"
        )
        await self._discard(response)
        return response.headers.getRawHeaders("etag", [""])[0]

    async def _copy_part(self, key: str, upload_id: str, number: int, source: str, first: int, last: int, etag: str) -> str:
        headers = {
            "x-amz-copy-source": "/" + urllib.parse.quote(f"{self.config.bucket}/{source}", safe="/~"),
            "x-amz-copy-source-range": f"bytes={first}-{last}",
        }
        if etag:
            headers["x-amz-copy-source-if-match"] = etag
        root = await self._xml(
            "PUT", key, {"partNumber": str(number), "uploadId": upload_id}, headers=headers,
            what=f"copy {source} bytes {first}-{last} to part {number} of {key}",
        )
        return _text(root, "ETag")

    async def _complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> None:
        body = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{_xml_escape(e)}</ETag></Part>" for n, e in sorted(parts))
        await self._xml(
            "POST", key, {"uploadId": upload_id},
            body=f"<CompleteMultipartUpload>{body}</CompleteMultipartUpload>".encode(), what=f"complete upload of {key}",
        )

    async def _copy_ranges_as_parts(
        self, key: str, upload_id: str, source: str, size: int, etag: str, first_part: int
    ) -> builtins.list[tuple[int, str]]:
        """Copy ``source`` server-side into parts ``first_part``... of the
        upload, every range at least 5 MiB, ``copyconcurrency`` at a time."""
        chunk = self.config.copychunksize
        bounds = []
        start = 0
        while start < size:
            end = min(start + chunk, size)
            if size - end < MIN_PART:
                end = size  # fold a short remainder into this range
            bounds.append((start, end - 1))
            start = end
        semaphore = DeferredSemaphore(self.config.copyconcurrency)

        def one(i: int, first: int, last: int) -> Deferred[tuple[int, str]]:
            async def run() -> tuple[int, str]:
                number = first_part + i
                return number, await self._copy_part(key, upload_id, number, source, first, last, etag)

            return semaphore.run(lambda: ensureDeferred(run()))

        results = await gatherResults([one(i, a, b) for i, (a, b) in enumerate(bounds)], consumeErrors=True).addErrback(
            lambda f: f.value.subFailure
        )
        return list(results)

    async def _server_copy(self, source: str, dest: str, head: _Head) -> None:
        if head.size < max(self.config.copythreshold, 1) or head.size < MIN_PART:
            headers = self._write_headers()
            headers["x-amz-copy-source"] = "/" + urllib.parse.quote(f"{self.config.bucket}/{source}", safe="/~")
            await self._xml("PUT", dest, headers=headers, what=f"copy {source} to {dest}")
            return
        upload_id = await self._create_upload(dest)
        try:
            parts = await self._copy_ranges_as_parts(dest, upload_id, source, head.size, head.etag, 1)
            await self._complete(dest, upload_id, parts)
        except BaseException:
            await _quietly(self._abort(dest, upload_id))
            raise

    # -- IStorageDriver -----------------------------------------------------------------

    def get_content(self, path: str) -> "Deferred[bytes]":
        """Fire with the whole object (one GET)."""
        return ensureDeferred(self._get_content(path))

    async def _get_content(self, path: str) -> bytes:
        key = self._k(path)
        response = await self._request("GET", key, ok=(200, 404), what=f"GET {path}")
        if response.code == 404:
            await self._not_found(response, path)
        if _is_state(response):
            await self._discard(response)
            head = await self._head(key)
            if head is None:
                raise PathNotFoundError(path, NAME)
            await self._materialize(path, head)
            return await self._get_content(path)
        return await self._body(response, f"GET {path}")

    async def _not_found(self, response: Any, path: str) -> NoReturn:
        """Raise for a 404 of ``GET path``: the bucket's absence as the
        gateway's error, else ``PathNotFoundError``."""
        content = await self._body(response, f"GET {path}")
        error = self._error(404, content, f"GET {path}")
        if error.code == "NoSuchBucket":
            raise error
        raise PathNotFoundError(path, NAME)

    def put_content(self, path: str, data: bytes, durable: bool = True) -> "Deferred[None]":
        """Check that ``path`` can hold an object, then PUT it (atomic; every
        PUT is durable). A scratch put (``durable=False``) is one PUT: its
        caller owns the layout of its scratch objects, so the contract lets
        a driver skip the object-versus-directory check (see "Objects versus
        directories")."""
        return ensureDeferred(self._put_content(path, bytes(data), durable))

    async def _put_content(self, path: str, data: bytes, durable: bool = True) -> None:
        if durable:
            await self._check_can_create(path)
        await self._put(self._k(path), data)

    def reader(self, path: str, offset: int = 0) -> "Deferred[IFileReader]":
        """Fire with a reader streaming one GET from ``offset``."""
        return ensureDeferred(self._reader(path, offset))

    async def _reader(self, path: str, offset: int) -> IFileReader:
        key = self._k(path)
        headers = {"Range": f"bytes={offset}-"} if offset > 0 else {}
        response = await self._request("GET", key, headers=headers, ok=(200, 206, 404, 416), what=f"GET {path}")
        if response.code in (404, 416):
            if response.code == 404:
                await self._not_found(response, path)
            await self._body(response, f"GET {path}")
            head = await self._head(key)
            if head is None:
                raise PathNotFoundError(path, NAME)
            if head.upload:
                await self._materialize(path, head)
                return await self._reader(path, offset)
            if offset == head.size:
                return S3Reader(self, None, 0, path, offset)
            raise InvalidOffsetError(path, offset, NAME)
        if _is_state(response):
            await self._discard(response)
            head = await self._head(key)
            if head is None:
                raise PathNotFoundError(path, NAME)
            await self._materialize(path, head)
            return await self._reader(path, offset)
        skip = 0
        if response.code == 200 and offset > 0:  # the range was ignored
            if response.length is not None and isinstance(response.length, int) and offset > response.length:
                await self._discard(response)
                raise InvalidOffsetError(path, offset, NAME)
            skip = offset
        return S3Reader(self, response, skip, path, offset)

    def writer(self, path: str, append: bool = False) -> "Deferred[IFileWriter]":
        """Fire with an ``S3Writer`` (see the module docstring)."""
        return ensureDeferred(self._writer(path, append))

    #: Writers keep a note with their bytes (``S3Writer.note``, ``set_note``).
    writer_notes = True

    async def _writer(self, path: str, append: bool) -> IFileWriter:
        key = self._k(path)
        if append:
            head = await self._head(key)
            if head is None:
                raise PathNotFoundError(path, NAME)
            return S3Writer(self, path, key, head)
        await self._check_can_create(path)
        return S3Writer(self, path, key, None)

    #: ``IStagedWriting``: ``staged_writer`` (a multipart upload at the key).
    staged_writes = True

    def staged_writer(self, path: str) -> "Deferred[IFileWriter]":
        """Fire with an ``S3StagedWriter`` for ``path`` (see "Staged
        writes") at once: the object-versus-directory check (2-6 requests
        for a new blob's path) runs while the bytes arrive, and ``commit``
        waits for it."""
        check = ensureDeferred(self._check_can_create(path))
        return succeed(S3StagedWriter(self, path, self._k(path), check))

    def stat(self, path: str) -> "Deferred[FileInfo]":
        """HEAD the object; else look for a key below (a directory)."""
        return ensureDeferred(self._stat(path))

    async def _stat(self, path: str) -> FileInfo:
        key = self._k(path)
        head = await self._head(key)
        if head is not None:
            return FileInfo(path, head.size, head.mod_time, False)
        below = await self._first_below(key)
        if below is None:
            raise PathNotFoundError(path, NAME)
        return FileInfo(path, 0, below[2], True)

    def list(self, path: str) -> "Deferred[list[str]]":
        """Direct children of ``path`` from a paginated delimited listing."""
        return ensureDeferred(self._list(path))

    async def _list(self, path: str) -> builtins.list[str]:
        prefix = self._k(path) if path == "/" else self._k(path) + "/"
        children: set[str] = set()
        async for contents, prefixes in self._list_pages(prefix, delimiter="/"):
            for key, _, _ in contents:
                rel = key[len(prefix):]
                if _valid_relative(rel):
                    children.add(rel)
            for common in prefixes:
                rel = common[len(prefix):].rstrip("/")
                if _valid_relative(rel):
                    children.add(rel)
        if not children and path != "/":
            raise PathNotFoundError(path, NAME)
        base = "" if path == "/" else path
        return sorted(f"{base}/{name}" for name in children)

    def move(self, source: str, dest: str) -> "Deferred[None]":
        """Server-side copy (multipart above the threshold), then delete."""
        return ensureDeferred(self._move(source, dest))

    async def _move(self, source: str, dest: str) -> None:
        src_key = self._k(source)
        head = await self._head(src_key)
        if head is None:
            raise PathNotFoundError(source, NAME)
        if source == dest:
            return
        # The destination's check and the source's completion at once.
        check = ensureDeferred(self._check_can_create(dest))
        if head.upload:
            head = (await _gather([ensureDeferred(self._materialize(source, head)), check]))[0]
        else:
            await check
        await self._server_copy(src_key, self._k(dest), head)
        await self._delete_key(src_key)

    def delete(self, path: str) -> "Deferred[None]":
        """Delete an object, or every key below a directory (batched)."""
        return ensureDeferred(self._delete(path))

    async def _delete(self, path: str) -> None:
        key = self._k(path)
        if path != "/":
            head = await self._head(key)
            if head is not None:
                if head.upload:
                    await self._abort(key, head.upload)
                await self._delete_key(key)
                return
        prefix = key if path == "/" else key + "/"
        found = False
        # Collect a page, delete it, list again: deleting while paginating is
        # not guaranteed to be stable.
        while True:
            keys: builtins.list[str] = []
            async for contents, _ in self._list_pages(prefix):
                keys.extend(k for k, _, _ in contents)
                if len(keys) >= 10 * DELETE_BATCH:
                    break
            if not keys:
                break
            found = True
            await self._delete_keys(keys)
        await self._abort_uploads_below(prefix)
        if not found and path != "/":
            raise PathNotFoundError(path, NAME)

    def walk(self, path: str) -> "Deferred[builtins.list[FileInfo]]":
        """Every object and directory below ``path`` from a recursive listing."""
        return ensureDeferred(self._walk(path))

    async def _walk(self, path: str) -> builtins.list[FileInfo]:
        prefix = self._k(path) if path == "/" else self._k(path) + "/"
        base = "" if path == "/" else path
        infos: dict[str, FileInfo] = {}
        dir_times: dict[str, float] = {}
        async for contents, _ in self._list_pages(prefix):
            for key, size, mtime in contents:
                rel = key[len(prefix):]
                if not _valid_relative(rel):
                    continue
                full = f"{base}/{rel}"
                infos[full] = FileInfo(full, size, mtime, False)
                segments = rel.split("/")
                for i in range(1, len(segments)):
                    d = f"{base}/" + "/".join(segments[:i])
                    dir_times[d] = max(dir_times.get(d, 0.0), mtime)
        if not infos and path != "/":
            raise PathNotFoundError(path, NAME)
        for d, mtime in dir_times.items():
            infos.setdefault(d, FileInfo(d, 0, mtime, True))
        return [infos[p] for p in sorted(infos, key=lambda p: p.split("/"))]

    def redirect_url(self, path: str, method: str = "GET") -> "Deferred[str | None]":
        """A presigned GET URL (20 minutes); ``None`` for other methods."""
        return ensureDeferred(self._redirect_url(path, method))

    async def _redirect_url(self, path: str, method: str) -> str | None:
        if method.upper() != "GET":
            return None
        from botocore.auth import S3SigV4QueryAuth
        from botocore.awsrequest import AWSRequest

        creds = await self._frozen_credentials()
        request = AWSRequest(method="GET", url=self._url(self._k(path)))
        S3SigV4QueryAuth(creds, "s3", self.config.region, expires=PRESIGN_SECONDS).add_auth(request)
        url: str = request.url
        return url

    # -- start-up check -------------------------------------------------------------------

    def check(self) -> "Deferred[None]":
        """Fail with a ``DriverError`` that says what to fix when the
        endpoint is unreachable, the credentials are refused or the bucket
        is missing (one HEAD of the bucket and a one-key listing)."""
        return ensureDeferred(self._check())

    async def _check(self) -> None:
        response = await self._request("HEAD", None, ok=(200,), what=f"bucket {self.config.bucket!r}")
        await self._discard(response)
        self._bucket_checked = True
        async for _ in self._list_pages(self._prefix, max_keys=1):
            break


# --- readers and writers ----------------------------------------------------------------


class _BodyStream(Protocol):
    """Receives a GET's body, pausing the connection while too much is buffered."""

    def __init__(self, skip: int) -> None:
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.skip = skip
        self.done = False
        self.failure: Failure | None = None
        self.waiter: Deferred[None] | None = None
        self.paused = False

    def dataReceived(self, data: bytes) -> None:
        if self.skip:
            dropped = min(self.skip, len(data))
            self.skip -= dropped
            data = data[dropped:]
            if not data:
                return
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > READ_HIGH_WATER and not self.paused and self.transport is not None:
            self.paused = True
            producer: Any = self.transport
            producer.pauseProducing()
        self._wake()

    def connectionLost(self, reason: Failure = net_error.ConnectionDone()) -> None:  # type: ignore[assignment]
        self.done = True
        if not reason.check(ResponseDone, PotentialDataLoss):
            self.failure = reason
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            waiter.callback(None)

    def take(self, max_bytes: int) -> bytes:
        out: list[bytes] = []
        want = max_bytes
        while self.chunks and want > 0:
            chunk = self.chunks.popleft()
            if len(chunk) > want:
                self.chunks.appendleft(chunk[want:])
                chunk = chunk[:want]
            out.append(chunk)
            want -= len(chunk)
        data = b"".join(out)
        self.buffered -= len(data)
        if self.paused and self.buffered <= READ_HIGH_WATER // 2 and self.transport is not None:
            self.paused = False
            producer: Any = self.transport
            producer.resumeProducing()
        return data


@implementer(IFileReader)
class S3Reader:
    """Streams one GET of the object; a ``read`` waits at most the request
    timeout for bytes. A GET reads one version of the object even if it is
    replaced meanwhile; if the connection drops (an endpoint closing a
    connection a slow client left paused), the reader continues with a
    ranged GET of the same version (``If-Match`` its ETag) or fails."""

    RESUMES = 3

    def __init__(self, driver: S3Driver, response: IResponse | None, skip: int, path: str, offset: int) -> None:
        self._driver = driver
        self._path = path
        self._stream = _BodyStream(skip)
        self._pos = offset  # absolute offset of the next byte read() returns
        self._etag = ""
        self._resumes = 0
        self._closed = False
        if response is None:
            self._stream.done = True
        else:
            self._etag = response.headers.getRawHeaders("etag", [""])[0]
            response.deliverBody(self._stream)

    async def _resume(self) -> bool:
        """After a dropped connection: a new GET from ``_pos`` (True), or
        False when that is not possible (no ETag, too many drops)."""
        if not self._etag or self._resumes >= self.RESUMES or self._closed:
            return False
        self._resumes += 1
        driver = self._driver
        response = await driver._request(
            "GET", driver._k(self._path), headers={"Range": f"bytes={self._pos}-", "If-Match": self._etag},
            ok=(206, 412), what=f"GET {self._path} from byte {self._pos}",
        )
        if response.code == 412:
            await driver._discard(response)
            raise DriverError(NAME, f"reading {self._path}: the object was replaced while it was being read")
        self._stream = _BodyStream(0)
        response.deliverBody(self._stream)
        return True

    def read(self, max_bytes: int) -> "Deferred[bytes]":
        return ensureDeferred(self._read(max_bytes))

    async def _read(self, max_bytes: int) -> bytes:
        stream = self._stream
        while not stream.chunks and not stream.done:
            waiter: Deferred[None] = Deferred()
            stream.waiter = waiter
            waiter.addTimeout(self._driver.config.requesttimeout, self._driver._reactor)
            try:
                await waiter
            except (CancelledError, DeferredTimeout, net_error.TimeoutError):
                stream.waiter = None
                self._abort()
                raise DriverError(
                    NAME, f"reading {self._path}: no bytes from {self._driver.config.endpoint} for "
                    f"{self._driver.config.requesttimeout:g} s",
                ) from None
        if stream.chunks:
            data = stream.take(max_bytes)
            self._pos += len(data)
            return data
        if stream.failure is not None:
            if await self._resume():
                return await self._read(max_bytes)
            raise DriverError(NAME, f"reading {self._path}: connection lost: {_describe(stream.failure.value)}")
        return b""

    def _abort(self) -> None:
        if not self._stream.done and self._stream.transport is not None:
            producer: Any = self._stream.transport
            producer.stopProducing()
        self._stream.done = True

    def close(self) -> "Deferred[None]":
        self._closed = True
        self._abort()
        self._stream.chunks.clear()
        return succeed(None)


@implementer(IFileWriter)
class S3Writer:
    """Appends to one object; see "Writers" in the module docstring."""

    def __init__(self, driver: S3Driver, path: str, key: str, base: _Head | None) -> None:
        self._driver = driver
        self._path = path
        self._key = key
        self._base = base  # the object this session appends to (None: a new object)
        self.size = base.size if base is not None else 0
        open_upload = base is not None and bool(base.upload)
        # An append state left by an earlier session: its multipart upload
        # (parts 1..parts) continues; its tail (the state object's body, under
        # 5 MiB) goes ahead of the new bytes, or is copied as the last part.
        self._upload_id: str | None = base.upload if base is not None and open_upload else None
        self._own_upload = False  # True when this session started the upload (abort it on failure)
        self._base_parts = base.parts if base is not None and open_upload else 0
        self._tail_unread = base is not None and open_upload and base.stored > 0
        # A complete object under 5 MiB goes ahead of the new bytes in
        # memory; 5 MiB or more is copied server-side as the first part(s).
        self._small_base = base is not None and not open_upload and 0 < base.size < MIN_PART
        self._copy_base = base is not None and not open_upload and base.size >= MIN_PART
        self._dirty = base is None  # a new object must be (re)created even if empty
        self._pending: list[bytes] = []
        self._pending_len = 0
        self._parts: dict[int, str] = {}  # parts sent or copied by this session
        self._next_part = self._base_parts + 1
        self._inflight: list[Deferred[None]] = []
        self._done = False
        # Streaming (see ``expect``): bytes the session has announced and not
        # yet written, and the part being streamed while they arrive.
        self._expected: int | None = None
        self._stream: _StreamSource | None = None
        self._failed: BaseException | None = None  # the first part upload of this session that failed
        #: The note stored with the bytes this writer continues (None: none).
        self.note: bytes | None = base.note if base is not None else None
        self._new_note: bytes | None = None

    def set_note(self, note: bytes) -> None:
        """Store ``note`` (at most 1 KiB) with the bytes at this session's
        ``close``, in the same atomic PUT (object metadata), for the next
        ``writer(path, append=True)`` to read as ``note``: the registry
        keeps an upload's hash state there, so a PATCH writes one object
        and a resume on any instance reads one. A session that stores
        bytes without a note of its own stores none; a ``commit``ted
        object has none."""
        if len(note) > MAX_NOTE:
            raise DriverError(NAME, f"writing {self._path}: a writer's note holds at most {MAX_NOTE} bytes, not {len(note)}")
        self._new_note = bytes(note)

    @property
    def _chunk(self) -> int:
        return self._driver.config.chunksize

    def expect(self, nbytes: int) -> None:
        """A hint: this session will write ``nbytes`` more bytes (the
        request's ``Content-Length``). With ``signpayload`` off, parts are
        then sent to S3 while their bytes arrive (a part's length must be
        known when it starts), instead of after each part has been gathered:
        the session's bytes are planned as parts of ``chunksize`` (the last
        one up to 5 MiB longer rather than leaving a short remainder), and
        only under 5 MiB is gathered as the tail. A session that ends
        short (the client went away) cancels the part it was streaming and
        falls back to gathering: every byte written is kept, as always."""
        if nbytes > 0 and not self._driver.config.signpayload and not self._done and self._stream is None:
            self._expected = nbytes

    def write(self, data: bytes) -> "Deferred[None]":
        if not data:
            return succeed(None)
        if self._done:
            raise DriverError(NAME, f"writing {self._path}: the writer was closed")
        return ensureDeferred(self._write(data if isinstance(data, bytes) else bytes(data)))

    async def _write(self, data: bytes) -> None:
        if self._small_base:
            await self._load_small_base()
        if self._tail_unread:
            await self._load_tail()
        self._dirty = True
        self.size += len(data)
        if self._expected is not None:
            if len(data) <= self._expected:
                await self._write_streaming(data)
                return
            self._unstream()  # more than announced: gather from here on
        chunk = self._chunk
        if len(data) > chunk and not self._pending:
            view = memoryview(data)
            while len(view) >= chunk:  # a huge write: parts straight from it
                await self._send(bytes(view[:chunk]))
                view = view[chunk:]
            data = bytes(view)
        if data:
            self._pending.append(data)
            self._pending_len += len(data)
        if self._pending_len >= chunk:
            # A part of chunksize or a little more: the pieces as written,
            # handed to the socket one by one (never joined into a copy).
            await self._send(self._take())

    async def _write_streaming(self, data: bytes) -> None:
        assert self._expected is not None
        self._expected -= len(data)
        while data:
            stream = self._stream
            if stream is None:
                length = _stream_length(self._pending_len + len(data) + self._expected, self._chunk)
                if length is None:  # under 5 MiB left in this session: the tail
                    self._pending.append(data)
                    self._pending_len += len(data)
                    return
                stream = await self._start_stream(length)
            n = min(len(data), stream.length - stream.fed)
            stream.feed(data if n == len(data) else data[:n])
            data = data[n:]
            if stream.fed == stream.length:
                self._stream = None

    async def _start_stream(self, length: int) -> "_StreamSource":
        """Start the next part as a request of ``length`` bytes fed as they
        arrive (the gathered bytes first), within ``uploadconcurrency``."""
        upload_id = await self._ensure_upload()
        number = self._next_part
        if number >= LAST_PART:
            raise DriverError(NAME, f"writing {self._path}: more than {LAST_PART - 1} parts: raise storage.s3.chunksize")
        self._next_part += 1
        while len(self._inflight) >= self._driver.config.uploadconcurrency:
            await self._inflight.pop(0)
        stream = self._stream = _StreamSource(length, number)
        for piece in self._take():
            stream.feed(piece)
        self._inflight.append(ensureDeferred(self._send_stream(upload_id, stream)))
        return stream

    async def _send_stream(self, upload_id: str, stream: "_StreamSource") -> None:
        try:
            etag = await self._driver._upload_part(self._key, upload_id, stream.number, stream)
        except BaseException as e:
            if stream.aborted:
                return  # cancelled by ``_unstream``: its bytes went back to the gathered ones
            self._failed = self._failed or e
            raise
        self._parts[stream.number] = etag
        stream.pieces = []

    def _unstream(self) -> None:
        """Stop streaming: a part still being fed is cancelled (S3 keeps no
        part of a request cut short), its bytes go back in front of the
        gathered ones and its number is free again."""
        self._expected = None
        stream, self._stream = self._stream, None
        if stream is None:
            return
        stream.abort()
        self._next_part = stream.number
        self._pending = stream.pieces + self._pending
        self._pending_len += stream.fed

    def _take(self) -> builtins.list[bytes]:
        pieces = self._pending
        self._pending, self._pending_len = [], 0
        return pieces

    async def _load_small_base(self) -> None:
        """Existing bytes under 5 MiB cannot be a part of their own: read
        them back (bounded) to go ahead of the new bytes."""
        base = self._base
        assert base is not None and base.size < MIN_PART
        self._small_base = False
        data = await self._driver._get_content(self._path)
        if len(data) != base.size:
            raise DriverError(NAME, f"{self._path} changed while it was being appended to")
        self._pending.insert(0, data)
        self._pending_len += len(data)

    async def _load_tail(self) -> None:
        """The tail of an earlier session (under 5 MiB) goes ahead of the new bytes."""
        base = self._base
        assert base is not None
        self._tail_unread = False
        data = await self._driver._get_state_tail(self._key, base)
        self._pending.insert(0, data)
        self._pending_len += len(data)

    async def _ensure_upload(self) -> str:
        if self._upload_id is not None:
            return self._upload_id
        upload_id = self._upload_id = await self._driver._create_upload(self._key)
        self._own_upload = True
        base = self._base
        if self._copy_base and base is not None:
            self._copy_base = False
            parts = await self._driver._copy_ranges_as_parts(self._key, upload_id, self._key, base.size, base.etag, 1)
            self._parts.update(parts)
            self._next_part = len(parts) + 1
        return upload_id

    async def _send(self, body: Body) -> None:
        """Upload ``body`` as the next part, at most ``uploadconcurrency``
        parts in flight (waiting for the oldest is the backpressure)."""
        upload_id = await self._ensure_upload()
        number = self._next_part
        if number >= LAST_PART:
            raise DriverError(NAME, f"writing {self._path}: more than {LAST_PART - 1} parts: raise storage.s3.chunksize")
        self._next_part += 1
        while len(self._inflight) >= self._driver.config.uploadconcurrency:
            await self._inflight.pop(0)
        self._inflight.append(ensureDeferred(self._send_part(upload_id, number, body)))

    async def _send_part(self, upload_id: str, number: int, body: Body) -> None:
        try:
            self._parts[number] = await self._driver._upload_part(self._key, upload_id, number, body)
        except BaseException as e:
            self._failed = self._failed or e
            raise

    def _check_failed(self) -> None:
        """A part of this session failed (its number is counted but holds
        nothing): the session must not record a state, whatever came after."""
        if self._failed is not None:
            raise DriverError(NAME, f"writing {self._path}: a part upload failed: {_describe(self._failed)}")

    async def _wait_inflight(self) -> None:
        inflight, self._inflight = self._inflight, []
        error: BaseException | None = None
        for d in inflight:
            try:
                await d
            except BaseException as e:  # wait for every part, report the first failure
                error = error or e
        if error is not None:
            raise error

    async def _close_session(self) -> None:
        """Make everything written so far durable in the bucket without
        completing: a plain object while it is small, else the append state."""
        self._unstream()
        await self._wait_inflight()
        self._check_failed()
        if not self._dirty:
            return
        note = self._new_note
        if self._upload_id is None and not self._copy_base and self._pending_len < MIN_PART:
            await self._driver._put(self._key, self._take(), note)
            return
        if self._pending_len >= MIN_PART:
            await self._send(self._take())  # a part of its own; the tail stays empty
        else:
            await self._ensure_upload()  # copies a >= 5 MiB base once
        await self._wait_inflight()
        tail = self._take()
        assert self._upload_id is not None
        await self._driver._put_state(self._key, self._upload_id, self._next_part - 1, self.size, tail, note)

    async def _commit_session(self) -> None:
        """CompleteMultipartUpload: the object at the key becomes every byte."""
        self._unstream()
        await self._wait_inflight()
        self._check_failed()
        if self._upload_id is None and not self._copy_base:
            if self._dirty:
                await self._driver._put(self._key, self._take())
            return
        if self._copy_base and not self._dirty:
            return  # a complete object, nothing new
        upload_id = await self._ensure_upload()
        base = self._base
        final = 0
        if self._pending_len:
            final = self._pending_len
            await self._send_part(upload_id, LAST_PART, self._take())
        elif self._tail_unread and base is not None:
            self._tail_unread = False
            final = base.stored
            await self._driver._copy_part(self._key, upload_id, LAST_PART, self._key, 0, base.stored - 1, base.etag)
        await self._driver._complete_append(self._path, self._key, upload_id, self._next_part - 1, self.size - final, final)

    def close(self) -> "Deferred[None]":
        """Make the bytes so far durable (stat-able, appendable by anyone)."""
        return ensureDeferred(self._end(self._close_session))

    def commit(self) -> "Deferred[None]":
        """Complete the object: readable at its path as every byte written."""
        return ensureDeferred(self._end(self._commit_session))

    async def _end(self, finish: Callable[[], Awaitable[None]]) -> None:
        if self._done:
            return
        self._done = True
        try:
            await finish()
        except BaseException:
            await self._abandon()
            raise

    def cancel(self) -> "Deferred[None]":
        """Abort the upload and delete the object."""
        return ensureDeferred(self._cancel())

    async def _cancel(self) -> None:
        self._done = True
        self._own_upload = True  # the earlier sessions' upload goes too
        await self._abandon()
        await self._driver._delete_key(self._key)

    async def _abandon(self) -> None:
        self._unstream()
        await _quietly(self._wait_inflight())
        self._pending, self._pending_len = [], 0
        # An upload an earlier session's state refers to stays: the state
        # (the last close) is still good.
        if self._upload_id is not None and self._own_upload:
            upload_id, self._upload_id = self._upload_id, None
            await _quietly(self._driver._abort(self._key, upload_id))


@implementer(IFileWriter)
class S3StagedWriter(S3Writer):
    """A new object whose bytes nobody sees until ``commit`` (see "Staged
    writes" in the module docstring): parts of a multipart upload at the
    key (streamed while they arrive, as ``S3Writer``), completed by
    ``commit`` from the ETags this session holds (no ListParts); under
    5 MiB in all, one PUT at ``commit``. ``cancel`` and ``close`` abort the
    upload and never touch the object at the key."""

    def __init__(self, driver: S3Driver, path: str, key: str, check: "Deferred[None]") -> None:
        super().__init__(driver, path, key, None)
        #: Why ``path`` cannot be created (``check``, made at open), once known.
        self._refused: BaseException | None = None
        self._checked: Deferred[None] = check.addErrback(self._refuse)

    def _refuse(self, failure: Failure) -> None:
        self._refused = failure.value

    def write(self, data: bytes) -> "Deferred[None]":
        if self._refused is not None:
            return fail(self._refused)  # no more parts for an object that cannot be
        return super().write(data)

    def set_note(self, note: bytes) -> None:
        raise DriverError(NAME, f"writing {self._path}: a staged writer keeps no note")

    def close(self) -> "Deferred[None]":
        """A staged object cannot be continued: discard it (as ``cancel``)."""
        return self.cancel()

    def cancel(self) -> "Deferred[None]":
        """Abort the multipart upload, if any; the key is left as it is."""
        return ensureDeferred(self._cancel_staged())

    async def _cancel_staged(self) -> None:
        if self._done:
            return
        self._done = True
        await self._abandon()

    def commit(self) -> "Deferred[None]":
        """Complete the upload (or PUT a small object): the object appears
        at the key, atomically, as every byte written."""
        return ensureDeferred(self._end(self._commit_staged))

    async def _commit_staged(self) -> None:
        self._unstream()
        await self._wait_inflight()
        self._check_failed()
        await self._checked
        if self._refused is not None:
            raise self._refused
        if self._upload_id is None:
            await self._driver._put(self._key, self._take())
            return
        if self._pending_len:
            await self._send(self._take())  # the last part may be short
            await self._wait_inflight()
            self._check_failed()
        parts = sorted(self._parts.items())
        if [n for n, _ in parts] != builtins.list(range(1, self._next_part)):
            raise DriverError(NAME, f"writing {self._path}: parts {[n for n, _ in parts]} sent, not 1..{self._next_part - 1}")
        await self._driver._complete(self._key, self._upload_id, parts)


def _stream_length(left: int, chunk: int) -> int | None:
    """The length of the next streamed part when a session still has
    ``left`` bytes to place: ``chunksize``, or all of them when that leaves
    no remainder under 5 MiB; None under 5 MiB (gathered as the tail)."""
    if left < MIN_PART:
        return None
    if left <= chunk or left - chunk < MIN_PART:
        return left
    return chunk


def _check_parts(path: str, listed: dict[int, tuple[str, int]], count: int, size: int) -> None:
    """The parts 1..count the append state records must all be there and hold ``size`` bytes."""
    missing = [n for n in range(1, count + 1) if n not in listed]
    if missing:
        raise DriverError(NAME, f"{path}: part {missing[0]} of its multipart upload is gone (aborted by a lifecycle rule?)")
    found = sum(listed[n][1] for n in range(1, count + 1))
    if found != size:
        raise DriverError(NAME, f"{path}: its multipart upload holds {found} bytes in parts 1-{count}, its state says {size}")


# --- helpers ------------------------------------------------------------------------------


@implementer(IBodyProducer)
class _PiecesProducer:
    """A request body from a list of pieces, each handed to the transport
    when its buffer has drained (a streaming producer): the transport then
    sends straight from the piece (no join of a whole part into a copy, as
    treq's bytes body or a write of the joined part would cost), and no
    64 KiB pacing by a cooperator caps the speed."""

    def __init__(self, pieces: builtins.list[bytes], length: int) -> None:
        self._pieces = deque(pieces)
        self.length = length
        self._consumer: Any = None
        self._paused = False
        self._done: Deferred[None] | None = None

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        self._produce()
        return done

    def _produce(self) -> None:
        while self._pieces and not self._paused:
            self._consumer.write(self._pieces.popleft())  # may pause us
        if not self._pieces and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        if self._done is not None:
            self._produce()

    def stopProducing(self) -> None:
        # The request was cancelled: its Deferred must not fire any more.
        self._paused = True
        self._pieces.clear()
        self._done = None


class _PartAborted(Exception):
    """A streamed part was cancelled because its session ended short."""


class _StreamSource:
    """The body of a part streamed while its bytes arrive: ``length`` is
    announced up front, ``feed`` adds bytes; every piece is kept until the
    part is stored (a retried request replays them; a cancelled part hands
    them back to the writer)."""

    def __init__(self, length: int, number: int) -> None:
        self.length = length
        self.number = number
        self.pieces: builtins.list[bytes] = []
        self.fed = 0
        self.aborted = False
        self.on_feed: Callable[[], object] | None = None
        self._live: _StreamProducer | None = None

    def feed(self, data: bytes) -> None:
        self.pieces.append(data)
        self.fed += len(data)
        if self._live is not None:
            self._live.more()
        if self.on_feed is not None:
            self.on_feed()

    def producer(self) -> "_StreamProducer":
        """A producer for one attempt of the request: every piece fed so far, then the rest as it comes."""
        if self._live is not None:
            self._live.stopProducing()
        self._live = _StreamProducer(self)
        return self._live

    def abort(self) -> None:
        self.aborted = True
        if self._live is not None:
            self._live.fail(_PartAborted(f"part {self.number} cancelled after {self.fed} of {self.length} bytes"))


@implementer(IBodyProducer)
class _StreamProducer:
    def __init__(self, source: _StreamSource) -> None:
        self._source = source
        self.length = source.length
        self._index = 0
        self._consumer: Any = None
        self._paused = False
        self._done: Deferred[None] | None = None

    def startProducing(self, consumer: Any) -> "Deferred[None]":
        self._consumer = consumer
        done: Deferred[None] = Deferred()
        self._done = done
        if self._source.aborted:
            self.fail(_PartAborted("part cancelled"))
        else:
            self.more()
        return done

    def more(self) -> None:
        if self._done is None or self._consumer is None:
            return
        pieces = self._source.pieces
        while self._index < len(pieces) and not self._paused:
            self._index += 1
            self._consumer.write(pieces[self._index - 1])  # may pause us
            if self._done is None:
                return
        if self._index == len(pieces) and self._source.fed == self.length and self._done is not None:
            done, self._done = self._done, None
            done.callback(None)

    def fail(self, error: Exception) -> None:
        if self._done is not None:
            done, self._done = self._done, None
            done.errback(error)

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self.more()

    def stopProducing(self) -> None:
        self._paused = True
        self._done = None


class _HeaderSigner:
    """botocore's S3 SigV4 header signer, with the payload hash we computed
    (or ``UNSIGNED-PAYLOAD``) instead of botocore reading the body."""

    _class: Any = None  # built once, on first use (botocore is imported lazily)

    def __new__(cls, credentials: Any, service: str, region: str) -> Any:
        if cls._class is None:
            from botocore.auth import S3SigV4Auth

            class Signer(S3SigV4Auth):
                def payload(self, request: Any) -> str:
                    value: str = request.context["payload_sha256"]
                    return value

            cls._class = Signer
        return cls._class(credentials, service, region)


def _resolve_credentials() -> Any:
    """botocore's credential chain (blocking: runs in the thread pool)."""
    import botocore.session

    return botocore.session.get_session().get_credentials()


def _parse_head(headers: Headers) -> _Head:
    length = int(headers.getRawHeaders("content-length", ["0"])[0])
    etag = headers.getRawHeaders("etag", [""])[0]
    mod_time = _http_time(headers.getRawHeaders("last-modified", [None])[0])
    upload = headers.getRawHeaders(META_UPLOAD, [""])[0]
    note: bytes | None = None
    encoded = headers.getRawHeaders(META_NOTE, [""])[0]
    if encoded:
        try:
            note = base64.b64decode(encoded, validate=True)
        except ValueError:
            note = None  # unreadable: as if there were none (its reader re-derives what it held)
    if upload:
        try:
            parts = int(headers.getRawHeaders(META_PARTS, ["0"])[0])
            size = int(headers.getRawHeaders(META_SIZE, ["0"])[0])
        except ValueError:
            parts = size = -1
        if parts < 1 or size < length:
            raise DriverError(NAME, f"an object's append state is malformed ({META_PARTS}, {META_SIZE})")
        return _Head(size, mod_time, etag, upload, parts, length, note)
    return _Head(length, mod_time, etag, "", 0, length, note)


def _is_state(response: IResponse) -> bool:
    """Is this GET's object an append state (not the data itself)?"""
    return bool(response.headers.getRawHeaders(META_UPLOAD, [""])[0])


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _describe(exc: BaseException) -> str:
    reasons = getattr(exc, "reasons", None)
    if reasons:
        return "; ".join(_describe(r.value) for r in reasons)
    return f"{type(exc).__name__}: {exc}"


def _gather(steps: builtins.list[Deferred[Any]]) -> "Deferred[builtins.list[Any]]":
    """Every step's result, or the first failure (as itself)."""
    return gatherResults(steps, consumeErrors=True).addErrback(lambda f: f.value.subFailure)


def _sleep(reactor: Any, seconds: float) -> "Deferred[None]":
    d: Deferred[None] = Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


async def _quietly(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        pass


def create(params: Mapping[str, Any], reactor: Any = None) -> S3Driver:
    """Build the driver from ``storage.s3`` parameters (``ValueError`` names
    the key at fault)."""
    warn_unknown_params(NAME, params, known=KNOWN_PARAMS)
    driver = S3Driver(parse_params(params), reactor)
    driver._reactor.callWhenRunning(_startup_check, driver)
    return driver


def _startup_check(driver: S3Driver) -> None:
    """Once the reactor runs: ``check()`` the bucket, logging an error that
    says what to fix (requests will fail with the same message), or that
    the bucket is reachable."""
    from twisted.logger import Logger

    log = Logger(namespace="registry.storage.s3")
    if driver._closed:
        return
    endpoint, bucket = driver.config.endpoint, driver.config.bucket

    def ok(_: object) -> None:
        log.info("storage.s3: bucket {bucket!r} at {endpoint} is reachable", bucket=bucket, endpoint=endpoint)

    def failed(failure: Failure) -> None:
        if not driver._closed:
            log.error("storage.s3: start-up check failed: {error}", error=str(failure.value))

    driver.check().addCallbacks(ok, failed)


__all__ = ["S3Driver", "S3Reader", "S3Writer", "S3Config", "S3Error", "create", "parse_params", "check_path"]
