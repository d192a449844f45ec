"""HTTP for the registry client: treq over one connection pool, with TLS
settings, retries with backoff, and registry authentication.

:class:`HTTPSession` sends one logical request.  On a ``401`` it reads the
``WWW-Authenticate`` challenges, fetches (or reuses) a Bearer token from the
challenge's realm or switches to Basic, and sends the request again; tokens
are cached per (realm, service, scopes) and fetched anew shortly before they
expire or when the registry refuses one.  Network failures and ``429`` /
``502`` / ``503`` / ``504`` answers are retried with exponential backoff, but
only for requests the caller marks ``idempotent`` (never an upload chunk:
:mod:`registry.client.blobs` resumes those from the server's ``Range``).

Responses are returned unbuffered: the caller streams or reads the body.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence
from urllib.parse import urlsplit

import treq
from OpenSSL import SSL
from treq.client import HTTPClient
from twisted.internet import ssl
from twisted.internet.defer import CancelledError, DeferredLock
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError as TwistedTimeoutError
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTime
from twisted.internet.task import deferLater
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool, ResponseFailed
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS, IResponse
from zope.interface import implementer

from registry.client.auth import (
    Challenge,
    Credentials,
    TokenCache,
    merge_scopes,
    parse_challenges,
    parse_token_response,
)
from registry.client.errors import AuthenticationError, TransportError, Unauthorized, api_error

USER_AGENT = "registry-client/0.1 (+twisted treq)"
# Error bodies are read whole; more than this is cut (they are JSON envelopes).
ERROR_BODY_LIMIT = 64 * 1024
# Statuses worth another try of an idempotent request.
RETRY_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class TLSConfig:
    """How to check the registry's certificate.

    ``verify=False`` accepts any certificate (skopeo's ``--tls-verify=false``).
    ``ca_files`` replace the system trust store when given; ``client_cert`` and
    ``client_key`` present a client certificate.
    """

    verify: bool = True
    ca_files: tuple[Path, ...] = ()
    client_cert: Path | None = None
    client_key: Path | None = None

    @classmethod
    def from_cert_dir(cls, directory: Path, verify: bool = True) -> "TLSConfig":
        """Docker's ``certs.d`` layout (skopeo's ``--cert-dir``): ``*.crt`` are CA
        certificates, ``NAME.cert`` with ``NAME.key`` a client certificate."""
        if not directory.is_dir():
            raise TransportError(f"certificate directory {directory} does not exist")
        cas = tuple(sorted(directory.glob("*.crt")))
        cert = key = None
        for candidate in sorted(directory.glob("*.cert")):
            pair = candidate.with_suffix(".key")
            if not pair.exists():
                raise TransportError(f"client certificate {candidate} has no key file {pair.name}")
            cert, key = candidate, pair
        return cls(verify, cas, cert, key)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries in all; the n-th retry waits about ``base_delay * 2**n``
    seconds (with jitter), at most ``max_delay``."""

    attempts: int = 4
    base_delay: float = 0.2
    max_delay: float = 5.0

    def delay(self, retry: int) -> float:
        bound = min(self.max_delay, self.base_delay * (2**retry))
        return bound / 2 + random.uniform(0, bound / 2)


def _load_pem_certificates(path: Path) -> list[ssl.Certificate]:
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        raise TransportError(f"cannot read CA file {path}: {error}") from None
    marker = "-----END CERTIFICATE-----"
    blocks = [block + marker for block in text.split(marker) if "-----BEGIN CERTIFICATE-----" in block]
    if not blocks:
        raise TransportError(f"CA file {path} holds no PEM certificate")
    try:
        return [ssl.Certificate.loadPEM(block.encode()) for block in blocks]
    except Exception as error:  # pyOpenSSL raises its own Error types
        raise TransportError(f"CA file {path} holds an invalid certificate: {error}") from None


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedConnectionCreator:
    """TLS without certificate checks, still sending SNI."""

    def __init__(self, hostname: str, options: ssl.CertificateOptions) -> None:
        self._hostname = hostname
        self._options = options

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip_address(self._hostname):
            connection.set_tlsext_host_name(self._hostname.encode("idna"))
        return connection


def _is_ip_address(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@implementer(IPolicyForHTTPS)
class TLSPolicy:
    """The Agent's HTTPS policy built from a :class:`TLSConfig`."""

    def __init__(self, config: TLSConfig) -> None:
        self._config = config
        client_certificate = None
        if config.client_cert is not None and config.client_key is not None:
            pem = config.client_cert.read_bytes() + b"\n" + config.client_key.read_bytes()
            client_certificate = ssl.PrivateCertificate.loadPEM(pem)
        self._client_certificate = client_certificate
        certificates = [cert for path in config.ca_files for cert in _load_pem_certificates(path)]
        self._trust = ssl.trustRootFromCertificates(certificates) if certificates else ssl.platformTrust()

    def creatorForNetloc(self, hostname: bytes, port: int) -> IOpenSSLClientConnectionCreator:
        name = hostname.decode("idna")
        if not self._config.verify:
            keyword: dict[str, Any] = {}
            if self._client_certificate is not None:
                keyword = {
                    "privateKey": self._client_certificate.privateKey.original,
                    "certificate": self._client_certificate.original,
                }
            return _UnverifiedConnectionCreator(name, ssl.CertificateOptions(verify=False, **keyword))
        creator: IOpenSSLClientConnectionCreator = ssl.optionsForClientTLS(
            name, trustRoot=self._trust, clientCertificate=self._client_certificate
        )
        return creator


def describe_failure(error: BaseException) -> str:
    """One line for a network-level failure (treq/Twisted nest the real reason)."""
    reasons = getattr(error, "reasons", None)
    if reasons:
        return "; ".join(describe_failure(reason.value) for reason in reasons)
    if isinstance(error, SSL.Error):
        return f"TLS error: {error}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


NETWORK_ERRORS: tuple[type[BaseException], ...] = (
    ConnectError,
    DNSLookupError,
    ResponseNeverReceived,
    ResponseFailed,
    TwistedTimeoutError,
    CancelledError,
    SSL.Error,
)

BodyFactory = Callable[[], Any]


@dataclass
class _HostAuth:
    """What a registry host asked for last: Basic, or Bearer with a realm."""

    basic: bool = False
    bearer: Challenge | None = None


@dataclass
class HTTPSession:
    """treq over a private connection pool, with auth and retries (module docstring).

    ``credentials`` answers Basic challenges and is sent to token servers;
    without it, Bearer tokens are requested anonymously.
    """

    reactor: Any
    credentials: Credentials | None = None
    tls: TLSConfig = field(default_factory=TLSConfig)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    connections_per_host: int = 8
    connect_timeout: float = 30.0
    response_timeout: float = 120.0
    user_agent: str = USER_AGENT

    def __post_init__(self) -> None:
        self._pool = HTTPConnectionPool(self.reactor, persistent=True)
        self._pool.maxPersistentPerHost = self.connections_per_host
        self._pool.retryAutomatically = False
        policy: IPolicyForHTTPS = TLSPolicy(self.tls) if (self.tls != TLSConfig()) else BrowserLikePolicyForHTTPS()
        agent = Agent(self.reactor, contextFactory=policy, pool=self._pool, connectTimeout=self.connect_timeout)
        self._client = HTTPClient(agent)
        clock: IReactorTime = self.reactor
        self.tokens = TokenCache(clock.seconds)
        self._hosts: dict[str, _HostAuth] = {}
        self._token_locks: dict[tuple[str, str, tuple[str, ...]], DeferredLock] = {}
        self.token_requests = 0

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._pool.closeCachedConnections()

    async def sleep(self, seconds: float) -> None:
        await deferLater(self.reactor, seconds, lambda: None)

    # ------------------------------------------------------------------ sending

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: BodyFactory | None = None,
        idempotent: bool = True,
        redirects: bool = True,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> IResponse:
        """One request without registry auth; retries network failures and
        retryable statuses when ``idempotent``. Fails with :class:`TransportError`."""
        all_headers = {"User-Agent": self.user_agent, **(headers or {})}
        retry = 0
        while True:
            try:
                response: IResponse = await self._client.request(
                    method,
                    url,
                    headers=Headers({name: [value] for name, value in all_headers.items()}),
                    data=body() if body is not None else None,
                    params=list(params) if params else None,
                    allow_redirects=redirects,
                    unbuffered=True,
                    timeout=self.response_timeout,
                )
            except NETWORK_ERRORS as error:
                if idempotent and retry + 1 < self.retry.attempts:
                    await self.sleep(self.retry.delay(retry))
                    retry += 1
                    continue
                raise TransportError(f"{method} {url}: {describe_failure(error)}") from None
            if response.code in RETRY_STATUSES and idempotent and retry + 1 < self.retry.attempts:
                await drain(response)
                await self.sleep(_retry_after(response, self.retry.delay(retry), self.retry.max_delay))
                retry += 1
                continue
            return response

    async def request(
        self,
        method: str,
        url: str,
        *,
        scopes: Iterable[str] = (),
        headers: dict[str, str] | None = None,
        body: BodyFactory | None = None,
        idempotent: bool = True,
        redirects: bool = True,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> IResponse:
        """Send a registry request with authentication (module docstring).

        ``scopes`` are the token scopes the request needs (``repository:NAME:pull``).
        Fails with :class:`TransportError`, or :class:`Unauthorized` /
        :class:`AuthenticationError` when the registry cannot be satisfied.
        """
        wanted = tuple(scopes)
        host = urlsplit(url).netloc
        for attempt in range(3):
            auth_header = self._auth_header(host, wanted)
            sent = dict(headers or {})
            if auth_header:
                sent["Authorization"] = auth_header
            response = await self.send(
                method, url, headers=sent, body=body, idempotent=idempotent, redirects=redirects, params=params
            )
            if response.code != 401:
                return response
            text = await read_limited(response)
            challenges = parse_challenges(response.headers.getRawHeaders("www-authenticate", []))
            if attempt < 2 and await self._authenticate(host, challenges, wanted, auth_header):
                continue
            error = api_error(401, text, f"{method} {url}")
            raise Unauthorized(401, error.errors, self._unauthorized_context(method, url, challenges, auth_header))
        raise AssertionError("unreachable")

    def _unauthorized_context(self, method: str, url: str, challenges: list[Challenge], sent: str | None) -> str:
        if sent is None and self.credentials is None and challenges:
            return f"{method} {url}: authentication required and no credentials given (use --creds or --authfile)"
        if sent is not None:
            return f"{method} {url}: the registry refused the credentials"
        return f"{method} {url}"

    # ------------------------------------------------------------------ auth

    def _auth_header(self, host: str, scopes: tuple[str, ...]) -> str | None:
        state = self._hosts.get(host)
        if state is None:
            return None
        if state.bearer is not None:
            key = TokenCache.key(state.bearer.realm, state.bearer.params.get("service", ""), scopes)
            token = self.tokens.get(key)
            return f"Bearer {token}" if token else None
        if state.basic and self.credentials is not None and self.credentials.username:
            return self.credentials.basic_header()
        return None

    async def _authenticate(
        self, host: str, challenges: list[Challenge], scopes: tuple[str, ...], sent: str | None
    ) -> bool:
        """Prepare credentials for the retry of a request refused with 401;
        False when there is nothing new to try."""
        state = self._hosts.setdefault(host, _HostAuth())
        bearer = next((c for c in challenges if c.scheme == "bearer" and c.realm), None)
        if bearer is not None:
            state.bearer = bearer
            service = bearer.params.get("service", "")
            key = TokenCache.key(bearer.realm, service, scopes)
            # One token request per key at a time: parallel requests that all
            # met a 401 wait for the first one's token instead of each asking.
            lock = self._token_locks.setdefault(key, DeferredLock())
            await lock.acquire()
            try:
                if sent is not None and sent == f"Bearer {self.tokens.get(key)}":
                    # This very token was refused (expired early, or too narrow): fetch anew.
                    self.tokens.discard(key)
                if self.tokens.get(key) is not None:
                    return True
                requested = merge_scopes([*scopes, *bearer.params.get("scope", "").split()])
                token, expires_in = await self.fetch_token(bearer.realm, service, requested)
                self.tokens.put(key, token, expires_in)
            finally:
                lock.release()
            return True
        if any(c.scheme == "basic" for c in challenges):
            if self.credentials is None or not self.credentials.username:
                return False
            if sent is not None and sent.startswith("Basic "):
                return False  # these credentials were refused
            state.basic = True
            return True
        return False

    async def fetch_token(self, realm: str, service: str, scopes: list[str]) -> tuple[str, float]:
        """Ask the token server at ``realm`` for a token; ``(token, expires_in)``.

        With an identity token, an OAuth2 ``refresh_token`` POST; otherwise a
        GET with Basic credentials when there are any (anonymous without).
        """
        self.token_requests += 1
        creds = self.credentials
        params: list[tuple[str, str]] = []
        if service:
            params.append(("service", service))
        params += [("scope", scope) for scope in scopes]
        if creds is not None and creds.identity_token:
            form = params + [
                ("grant_type", "refresh_token"),
                ("refresh_token", creds.identity_token),
                ("client_id", "registry-client"),
            ]
            from urllib.parse import urlencode

            encoded = urlencode(form).encode()
            response = await self.send(
                "POST",
                realm,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                body=lambda: encoded,
            )
        else:
            headers = {}
            if creds is not None and creds.username:
                headers["Authorization"] = creds.basic_header()
                params.append(("account", creds.username))
            response = await self.send("GET", realm, headers=headers, params=params)
        body = await read_limited(response)
        if response.code in (401, 403):
            who = f"user {creds.username!r}" if creds is not None and creds.username else "anonymous access"
            raise AuthenticationError(f"token server {realm} refused {who} (HTTP {response.code})")
        if response.code != 200:
            raise AuthenticationError(f"token server {realm} answered HTTP {response.code}")
        return parse_token_response(body, realm)


def _retry_after(response: IResponse, fallback: float, cap: float) -> float:
    values = response.headers.getRawHeaders("retry-after", [])
    if values:
        try:
            return max(0.0, min(float(values[0]), cap))
        except ValueError:
            pass
    return fallback


async def read_limited(response: IResponse, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """The body of ``response`` (for small answers), cut at ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0

    def collect(data: bytes) -> None:
        nonlocal size
        if size < limit:
            chunks.append(data[: limit - size])
        size += len(data)

    try:
        await treq.collect(response, collect)
    except NETWORK_ERRORS as error:
        raise TransportError(f"reading the answer failed: {describe_failure(error)}") from None
    return b"".join(chunks)


async def drain(response: IResponse) -> None:
    """Read and drop the body (so the connection can go back to the pool)."""
    try:
        await treq.collect(response, lambda _data: None)
    except NETWORK_ERRORS:
        pass
