"""``auth.htpasswd``: users and bcrypt password hashes in an Apache-style
file, checked with HTTP Basic authentication. An authenticated user may do
everything.

- Only bcrypt entries (``$2y$``, ``$2b$``, ``$2a$``; ``htpasswd -B``) are
  accepted; any other scheme is refused when the file is loaded, naming the
  line. The file is loaded at start-up (a bad file stops the start) and
  re-read when its inode, size or modification time changes; a file that
  turns bad later refuses every request with 503 until it is fixed (it
  never falls back to the previous users: a removed user must stay out).
- bcrypt is slow on purpose, so checks (and the stat/re-read before them)
  run in a bounded thread pool; the reactor never waits for them. At most
  ``max_pending`` checks wait at once; beyond that the answer is 429.
- An unknown user is checked against a dummy hash of the file's usual cost,
  so it takes as long as a wrong password.
- A successful (user, password, stored hash) is remembered for
  ``cache_seconds`` under a keyed hash of the three, so docker's burst of
  requests with the same credentials runs bcrypt once. A changed or removed
  entry changes the key, so a cached success never outlives its entry.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import bcrypt
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from registry import errors
from registry.auth.basic import MalformedCredentials, parse_basic, split_authorization
from registry.auth.interfaces import Access, AuthChallenge, Credentials, IAccessController, Identity, unauthorized
from registry.auth.scopes import quote_param
from registry.errors import RegistryError

log = Logger(namespace="registry.auth.htpasswd")

BCRYPT_RE = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
BCRYPT_MAX_PASSWORD = 72
DEFAULT_MAXTHREADS = 4
DEFAULT_MAX_PENDING = 64
DEFAULT_CACHE_SECONDS = 60.0
CACHE_ENTRIES = 1024
#: ``Basic`` credentials of an empty user name and password (``base64(":")``).
EMPTY_BASIC = b"Og=="


class HtpasswdError(ValueError):
    """The htpasswd file cannot be used; the message names the file and line."""


def _scheme_of(hashed: bytes) -> str:
    if hashed.startswith(b"$apr1$"):
        return "Apache MD5 ($apr1$)"
    if hashed.startswith(b"{SHA}"):
        return "SHA-1 ({SHA})"
    if hashed.startswith(b"$1$"):
        return "MD5-crypt ($1$)"
    if hashed.startswith(b"$5$") or hashed.startswith(b"$6$"):
        return "SHA-crypt ($5$/$6$)"
    if hashed.startswith(b"$2"):
        return "malformed bcrypt"
    return "crypt or plain-text"


def parse_htpasswd(data: bytes, path: str) -> dict[str, bytes]:
    """``{user: bcrypt hash}`` from an htpasswd file's bytes. Blank lines and
    ``#`` comments are skipped. Raises ``HtpasswdError`` naming ``path`` and
    the line for a line without ``user:hash``, a duplicate user or a hash
    that is not bcrypt."""
    entries: dict[str, bytes] = {}
    for number, raw in enumerate(data.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user_bytes, sep, hashed = line.partition(b":")
        where = f"{path} line {number}"
        if not sep or not user_bytes or not hashed:
            raise HtpasswdError(f"{where}: expected 'user:bcrypt-hash'")
        try:
            user = user_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise HtpasswdError(f"{where}: the user name is not UTF-8") from None
        if not BCRYPT_RE.match(hashed):
            raise HtpasswdError(
                f"{where}: user {user!r} has a {_scheme_of(hashed)} password hash; only bcrypt"
                " ($2y$/$2b$/$2a$) is accepted: re-create the entry with 'htpasswd -B'"
            )
        cost = int(BCRYPT_RE.match(hashed).group(1))  # type: ignore[union-attr]
        if not 4 <= cost <= 31:
            raise HtpasswdError(f"{where}: user {user!r} has bcrypt cost {cost}; it must be 4..31")
        if user in entries:
            raise HtpasswdError(f"{where}: user {user!r} appears twice")
        entries[user] = hashed
    return entries


def _usual_cost(entries: dict[str, bytes]) -> int:
    costs = collections.Counter(int(h[4:6]) for h in entries.values())
    if not costs:
        return 10
    return max(costs.items(), key=lambda kv: (kv[1], kv[0]))[0]


@dataclass
class _Loaded:
    signature: tuple[int, int, int, int]
    entries: dict[str, bytes] | None
    dummy: bytes | None
    error: HtpasswdError | None


class HtpasswdFile:
    """The file's current entries, re-read when it changes on disk. Its
    methods block (stat, read, bcrypt): call them from a pool thread, or at
    start-up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._loaded: _Loaded | None = None

    def _signature(self) -> tuple[int, int, int, int]:
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)

    def current(self) -> tuple[dict[str, bytes], bytes]:
        """(entries, dummy hash). Raises ``HtpasswdError`` when the file is
        missing, unreadable or invalid."""
        with self._lock:
            try:
                signature = self._signature()
            except OSError as e:
                raise HtpasswdError(f"{self.path}: cannot stat the htpasswd file: {e.strerror}") from None
            loaded = self._loaded
            if loaded is None or loaded.signature != signature:
                loaded = self._load(signature, loaded)
                self._loaded = loaded
                if loaded.error is None:
                    log.info("loaded {count} users from {path}", count=len(loaded.entries or {}), path=self.path)
                else:
                    log.error("htpasswd file unusable, refusing every login: {error}", error=str(loaded.error))
            if loaded.error is not None:
                raise loaded.error
            assert loaded.entries is not None and loaded.dummy is not None
            return loaded.entries, loaded.dummy

    def _load(self, signature: tuple[int, int, int, int], previous: _Loaded | None) -> _Loaded:
        try:
            with open(self.path, "rb") as f:
                data = f.read()
            entries = parse_htpasswd(data, self.path)
        except OSError as e:
            return _Loaded(signature, None, None, HtpasswdError(f"{self.path}: cannot read the htpasswd file: {e.strerror}"))
        except HtpasswdError as e:
            return _Loaded(signature, None, None, e)
        cost = _usual_cost(entries)
        dummy = previous.dummy if previous is not None and previous.dummy is not None else None
        if dummy is None or int(dummy[4:6]) != cost:
            dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))
        return _Loaded(signature, entries, dummy, None)


class _SuccessCache:
    """Successful checks keyed by an HMAC (per-process key) of user,
    password and stored hash; expiring, bounded. Thread-safe."""

    def __init__(self, ttl: float, clock: Callable[[], float], size: int = CACHE_ENTRIES) -> None:
        self._ttl = ttl
        self._clock = clock
        self._size = size
        self._key = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[bytes, float] = collections.OrderedDict()

    def key(self, user: str, password: bytes, stored: bytes) -> bytes:
        msg = b"\0".join([user.encode("utf-8"), hashlib.sha256(password).digest(), stored])
        return hmac.new(self._key, msg, hashlib.sha256).digest()

    def hit(self, key: bytes) -> bool:
        if self._ttl <= 0:
            return False
        with self._lock:
            expiry = self._entries.get(key)
            if expiry is None:
                return False
            if expiry <= self._clock():
                del self._entries[key]
                return False
            return True

    def put(self, key: bytes) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[key] = self._clock() + self._ttl
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


@implementer(IAccessController)
class HtpasswdAccessController:
    """See the module docstring. ``realm`` goes in the Basic challenge;
    ``path`` is loaded now (raises ``ValueError`` naming
    ``auth.htpasswd.path`` if it cannot be used)."""

    kind = "htpasswd"

    def __init__(
        self,
        realm: str,
        path: str,
        reactor: Any = None,
        maxthreads: int = DEFAULT_MAXTHREADS,
        max_pending: int = DEFAULT_MAX_PENDING,
        cache_seconds: float = DEFAULT_CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.realm = realm
        self.file = HtpasswdFile(path)
        try:
            self.file.current()
        except HtpasswdError as e:
            raise ValueError(f"auth.htpasswd.path: {e}") from None
        self.www_authenticate = f"Basic realm={quote_param(realm)}"
        self.checks = 0  # bcrypt comparisons run, for tests and metrics
        self._checks_lock = threading.Lock()
        self._cache = _SuccessCache(cache_seconds, clock)
        self._max_pending = max_pending
        self._pending = 0
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=maxthreads, name="auth-htpasswd")
        self._closed = False
        reactor.callWhenRunning(self._pool.start)
        self._shutdown_trigger = reactor.addSystemEventTrigger("during", "shutdown", self._stop_pool)

    # -- lifecycle -----------------------------------------------------------

    def _stop_pool(self) -> None:
        if not self._closed:
            self._closed = True
            self._pool.stop()

    def close(self) -> Deferred[None]:
        if self._closed:
            return succeed(None)
        self._closed = True
        self._reactor.removeSystemEventTrigger(self._shutdown_trigger)
        pool = self._pool
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), pool.stop)

    # -- IAccessController ---------------------------------------------------

    def challenge(self, needed: Sequence[Access], credentials: Credentials | None = None) -> AuthChallenge:
        return unauthorized("authentication required", self.www_authenticate, needed)

    def authorize(self, credentials: Credentials, needed: Sequence[Access]) -> Deferred[Identity]:
        if credentials.authorization is None:
            return fail(self.challenge(needed))
        try:
            scheme, rest = split_authorization(credentials.authorization)
            if scheme != "basic":
                raise MalformedCredentials("this registry uses Basic authentication")
            if rest == EMPTY_BASIC:
                # skopeo and podman (containers/image) send "Basic Og==", an
                # empty user and password, when they hold no credentials for
                # the registry: that is no login, not a malformed one.
                return fail(self.challenge(needed))
            user, password = parse_basic(rest)
        except MalformedCredentials as e:
            return fail(unauthorized(str(e), self.www_authenticate, needed))
        if self._closed:
            return fail(RegistryError(errors.UNAVAILABLE, "the registry is shutting down"))
        if self._pending >= self._max_pending:
            return fail(
                RegistryError(
                    errors.TOOMANYREQUESTS,
                    "too many password checks in progress; retry shortly",
                    headers={"Retry-After": "1"},
                )
            )
        self._pending += 1
        d = deferToThreadPool(self._reactor, self._pool, self._check, user, password)

        def done(result: object) -> object:
            self._pending -= 1
            return result

        def judged(ok: bool) -> Identity:
            if not ok:
                log.info("failed login for {user!r} from {peer}", user=user, peer=credentials.peer)
                raise unauthorized("incorrect user name or password", self.www_authenticate, needed)
            return Identity(user)

        def unusable(f: Failure) -> Failure:
            f.trap(HtpasswdError)
            return Failure(
                RegistryError(
                    errors.UNAVAILABLE,
                    "the registry's password file cannot be used; its administrator finds the reason in the log",
                )
            )

        d.addBoth(done)
        return d.addCallbacks(judged, unusable)

    def _check(self, user: str, password: bytes) -> bool:
        """In a pool thread: True when ``password`` is ``user``'s."""
        entries, dummy = self.file.current()
        stored = entries.get(user)
        key = self._cache.key(user, password, stored or b"")
        if stored is not None and self._cache.hit(key):
            return True
        with self._checks_lock:
            self.checks += 1
        too_long = len(password) > BCRYPT_MAX_PASSWORD
        try:
            ok = bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored if stored is not None else dummy)
        except ValueError:
            ok = False
        if ok and stored is not None and not too_long:
            self._cache.put(key)
            return True
        return False


__all__ = ["HtpasswdAccessController", "HtpasswdError", "HtpasswdFile", "parse_htpasswd"]
