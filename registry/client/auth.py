"""Credentials and the registry authentication schemes: pure parts.

* :func:`parse_challenges` reads ``WWW-Authenticate`` header values into
  :class:`Challenge` objects (``Bearer realm=..,service=..,scope=..`` or
  ``Basic realm=..``), quoted strings and escapes included.
* :class:`Credentials` is a user name and password, or an identity (refresh)
  token; :func:`load_auth_file` / :func:`credentials_for` find them in a
  docker ``config.json`` or a containers ``auth.json``.
* :class:`TokenCache` keeps Bearer tokens per (realm, service, scopes) with
  their expiry, so a token is reused until shortly before it expires.

The network side (asking the token server) is in :mod:`registry.client.transport`.
"""

from __future__ import annotations

import base64
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

from registry.client.errors import AuthenticationError

# auth-param = token "=" ( token / quoted-string ); RFC 7235.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
# Bare values are read leniently (up to the next comma), as registries send
# unquoted URLs.
_PARAM_RE = re.compile(rf'\s*({_TOKEN})\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))\s*(,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN})(?:\s+|$)")


@dataclass(frozen=True)
class Challenge:
    """One authentication challenge: its scheme (lower case) and parameters
    (names lower case)."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


def parse_challenges(values: Iterable[str]) -> list[Challenge]:
    """Parse ``WWW-Authenticate`` header values into challenges. Pure.

    Several challenges may share one value (``Basic realm="a", Bearer
    realm="b"``); malformed text ends the parse of that value, keeping what
    was read before it.
    """
    challenges: list[Challenge] = []
    for value in values:
        position = 0
        while position < len(value):
            while position < len(value) and value[position] in " ,":
                position += 1
            scheme_match = _SCHEME_RE.match(value, position)
            if not scheme_match:
                break
            scheme = scheme_match.group(1).lower()
            position = scheme_match.end()
            params: dict[str, str] = {}
            while position < len(value):
                # A token followed by whitespace and no "=" starts the next challenge.
                param_match = _PARAM_RE.match(value, position)
                if not param_match:
                    break
                name, quoted, bare = param_match.group(1), param_match.group(2), param_match.group(3)
                params[name.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
                position = param_match.end()
            challenges.append(Challenge(scheme, params))
            if position < len(value) and not _SCHEME_RE.match(value, position):
                break
    return challenges


@dataclass(frozen=True)
class Credentials:
    """A user name and password, or an identity token (an OAuth2 refresh token)."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    @classmethod
    def parse(cls, text: str) -> "Credentials":
        """``USER:PASS`` (skopeo's ``--creds``); the password may contain ``:``.
        ``USER`` alone means an empty password."""
        username, _, password = text.partition(":")
        if not username:
            raise ValueError("credentials must be USER:PASSWORD with a non-empty user name")
        return cls(username, password)

    def basic_header(self) -> str:
        """The ``Authorization`` value of Basic authentication."""
        raw = f"{self.username}:{self.password}".encode("utf-8")
        return "Basic " + base64.b64encode(raw).decode("ascii")


def default_auth_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where credentials are looked for when no file is named, in order:
    ``$REGISTRY_AUTH_FILE``, ``$XDG_RUNTIME_DIR/containers/auth.json``,
    ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``."""
    env = os.environ if environ is None else environ
    files = []
    if env.get("REGISTRY_AUTH_FILE"):
        files.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        files.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    docker_config = env.get("DOCKER_CONFIG")
    if docker_config:
        files.append(Path(docker_config) / "config.json")
    elif env.get("HOME"):
        files.append(Path(env["HOME"]) / ".docker" / "config.json")
    return files


def _normalise_key(key: str) -> str:
    """``https://host:5000/v1/`` -> ``host:5000`` (docker's legacy key spellings)."""
    key = re.sub(r"^[a-z]+://", "", key.strip())
    return key.split("/", 1)[0].lower()


def parse_auth_config(document: object, source: str = "auth file") -> dict[str, Credentials]:
    """Credentials per registry host from a docker ``config.json`` or
    containers ``auth.json`` document (``{"auths": {host: {"auth": b64} |
    {"username", "password"} | {"identitytoken"}}}``). Pure.

    Raises :class:`AuthenticationError` naming the entry that is malformed.
    """
    if not isinstance(document, dict):
        raise AuthenticationError(f"{source}: expected a JSON object with an 'auths' object")
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise AuthenticationError(f"{source}: 'auths' must be an object")
    found: dict[str, Credentials] = {}
    for key, entry in auths.items():
        if not isinstance(entry, dict):
            raise AuthenticationError(f"{source}: auths[{key!r}] must be an object")
        username = str(entry.get("username", "") or "")
        password = str(entry.get("password", "") or "")
        if entry.get("auth"):
            try:
                decoded = base64.b64decode(str(entry["auth"]), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                raise AuthenticationError(f"{source}: auths[{key!r}].auth is not base64 of USER:PASSWORD") from None
            username, sep, password = decoded.partition(":")
            if not sep:
                raise AuthenticationError(f"{source}: auths[{key!r}].auth is not base64 of USER:PASSWORD")
        identity = str(entry.get("identitytoken", "") or "")
        if username or identity:
            found[_normalise_key(key)] = Credentials(username, password, identity)
    return found


def load_auth_file(path: Path) -> dict[str, Credentials]:
    """Read ``path`` (see :func:`parse_auth_config`); a missing file has no credentials."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise AuthenticationError(f"cannot read auth file {path}: {error.strerror}") from None
    try:
        document = json.loads(text)
    except ValueError as error:
        raise AuthenticationError(f"auth file {path} is not valid JSON: {error}") from None
    return parse_auth_config(document, str(path))


def credentials_for(host: str, files: Iterable[Path]) -> Credentials | None:
    """The first credentials for ``host`` (``name[:port]``) in ``files``."""
    wanted = host.lower()
    for path in files:
        entries = load_auth_file(path)
        if wanted in entries:
            return entries[wanted]
        if wanted in ("docker.io", "registry-1.docker.io", "index.docker.io"):
            for alias in ("index.docker.io", "docker.io", "registry-1.docker.io"):
                if alias in entries:
                    return entries[alias]
    return None


def merge_scopes(scopes: Iterable[str]) -> list[str]:
    """One scope per resource with the union of its actions, sorted. Pure.

    ``["repository:a:pull", "repository:a:push,pull"]`` -> ``["repository:a:pull,push"]``.
    """
    actions: dict[tuple[str, str], set[str]] = {}
    for scope in scopes:
        kind, _, rest = scope.partition(":")
        name, _, wanted = rest.rpartition(":")
        if not kind or not name:
            continue
        actions.setdefault((kind, name), set()).update(a for a in wanted.split(",") if a)
    return [f"{kind}:{name}:{','.join(sorted(acts))}" for (kind, name), acts in sorted(actions.items())]


@dataclass
class Token:
    """A Bearer token and the monotonic time it stops being usable."""

    value: str
    expires_at: float


# A token this close to its expiry is fetched anew instead of used.
EXPIRY_MARGIN = 5.0
# Lifetime when the token server does not say (the token spec's default).
DEFAULT_EXPIRES_IN = 60


class TokenCache:
    """Bearer tokens per ``(realm, service, scopes)``; ``clock`` gives seconds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens: dict[tuple[str, str, tuple[str, ...]], Token] = {}

    @staticmethod
    def key(realm: str, service: str, scopes: Iterable[str]) -> tuple[str, str, tuple[str, ...]]:
        return (realm, service, tuple(sorted(set(scopes))))

    def get(self, key: tuple[str, str, tuple[str, ...]]) -> str | None:
        """The cached token for ``key`` if it is not about to expire."""
        token = self._tokens.get(key)
        if token is None:
            return None
        if self._clock() >= token.expires_at - EXPIRY_MARGIN:
            del self._tokens[key]
            return None
        return token.value

    def put(self, key: tuple[str, str, tuple[str, ...]], value: str, expires_in: float) -> None:
        self._tokens[key] = Token(value, self._clock() + expires_in)

    def discard(self, key: tuple[str, str, tuple[str, ...]]) -> None:
        self._tokens.pop(key, None)


def parse_token_response(body: bytes, realm: str) -> tuple[str, float]:
    """``(token, expires_in)`` from a token server's JSON answer. Pure.

    Accepts ``token`` or ``access_token``; ``expires_in`` defaults to 60 s
    when missing or not a positive number, as the token spec says.
    """
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AuthenticationError(f"token server {realm} answered something that is not JSON") from None
    if not isinstance(document, dict):
        raise AuthenticationError(f"token server {realm} answered JSON that is not an object")
    token = document.get("token") or document.get("access_token")
    if not isinstance(token, str) or not token:
        raise AuthenticationError(f"token server {realm} answered no token")
    expires_in = document.get("expires_in", DEFAULT_EXPIRES_IN)
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or expires_in <= 0:
        expires_in = DEFAULT_EXPIRES_IN
    return token, float(expires_in)
