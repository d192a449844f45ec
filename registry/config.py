"""Registry configuration: CNCF Distribution's YAML keys plus ``REGISTRY_*`` overrides.

A user must be able to point this registry at an existing Distribution
``config.yml``.  This module turns such a document (or the embedded default)
and an environment mapping into a frozen :class:`Config`:

1. The YAML is parsed into a plain tree (``storage: inmemory`` is accepted as
   shorthand for ``storage: {inmemory: {}}``, as Distribution does).
2. Environment overrides are applied the way Distribution's
   ``configuration/parser.go`` documents them: a variable
   ``REGISTRY_<A>_<B>_<C>`` replaces ``a.b.c``; path components match existing
   keys case-insensitively and new keys are created lower-cased; variables
   are applied in lexical order, so ``REGISTRY_STORAGE=s3`` (which replaces
   the whole ``storage`` section) comes before ``REGISTRY_STORAGE_S3_REGION``;
   each value is parsed as a YAML scalar (string-typed keys keep the text
   verbatim, so ``REGISTRY_HTTP_SECRET=0123`` stays ``"0123"``).
3. The merged tree is validated.  A wrong value raises :class:`ConfigError`
   naming the key and the value (and the variable, when one set it); a key
   this registry does not know, or knows from Distribution but does not
   implement, only adds a warning naming the full dotted key to
   :attr:`Config.warnings`.

Everything here is pure: no I/O except :func:`load_config_file`, which reads
one file.  Relative filesystem root directories resolve against the working
directory (or ``base_dir``).
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    from registry.tls import TLSSettings

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "Config",
    "AuthConfig",
    "ConfigError",
    "HTTPConfig",
    "LogConfig",
    "StorageConfig",
    "UIConfig",
    "UploadPurgingConfig",
    "GCConfig",
    "ValidationConfig",
    "load_config",
    "load_config_file",
    "parse_addr",
    "parse_go_duration",
]

#: The configuration used when no ``--config`` is given: filesystem storage
#: under ``./var/registry`` (made absolute at load time), loopback port 5000.
DEFAULT_CONFIG_YAML = """\
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: ./var/registry
  delete:
    enabled: false
http:
  addr: 127.0.0.1:5000
"""

#: Environment variable naming the configuration file (as in Distribution);
#: it is not an override and is skipped by the override parser.
CONFIGURATION_PATH_ENV = "REGISTRY_CONFIGURATION_PATH"

_ENV_PREFIX = "REGISTRY_"
_LOG_LEVELS = ("debug", "info", "warn", "error")
_LOG_FORMATTERS = ("text", "json", "logstash")
_HTTP_NETS = ("tcp", "tcp4", "tcp6", "unix")


class ConfigError(ValueError):
    """A configuration value that stops start-up.

    ``str()`` names the dotted key and the offending value, and the
    environment variable when the value came from one.
    """

    def __init__(self, key: str, value: object, message: str, source: str | None = None) -> None:
        super().__init__(key, value, message)
        self.key = key
        self.value = value
        self.message = message
        self.source = source

    def __str__(self) -> str:
        text = f"invalid configuration: {self.key} = {self.value!r}: {self.message}"
        if self.source:
            text += f" (set by environment variable {self.source})"
        return text


# --- value parsers ----------------------------------------------------------


_ADDR_RE = re.compile(r"^(?:\[(?P<v6>[^\]]*)\]|(?P<host>[^:\[\]]*)):(?P<port>[^:]*)$")
_HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")


def parse_addr(addr: str) -> tuple[str, int]:
    """Split Distribution's ``host:port`` / ``[v6]:port`` / ``:port`` form.

    Returns ``(host, port)`` with ``host == ""`` meaning all interfaces.
    Raises ``ValueError`` saying what is wrong.
    """
    m = _ADDR_RE.match(addr)
    if m is None:
        raise ValueError('expected "host:port", "[ipv6]:port" or ":port"')
    port_text = m.group("port")
    if not port_text.isdigit() or not (0 <= int(port_text) <= 65535):
        raise ValueError(f"the port must be a number from 0 to 65535, not {port_text!r}")
    if m.group("v6") is not None:
        host = m.group("v6")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host = m.group("host") or ""
        if host and not _HOSTNAME_RE.match(host):
            raise ValueError(f"{host!r} is not a host name or IPv4 address")
    return host, int(port_text)


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "\u03bcs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Parse a Go ``time.Duration`` string (``"168h"``, ``"1h30m"``, ``"0"``) into seconds.

    Raises ``ValueError`` for anything Go's ``time.ParseDuration`` would reject
    (a bare number other than 0, an unknown unit, an empty string).
    """
    s = text.strip()
    sign = 1.0
    if s[:1] in ("+", "-"):
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total = 0.0
    pos = 0
    while pos < len(s):
        m = _DURATION_PART_RE.match(s, pos)
        if m is None:
            raise ValueError(f'invalid duration {text!r}: expected e.g. "90s", "1h30m", "168h"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return sign * total


# --- readers (one per kind of declared key) -------------------------------------


def _read_string(loader: _Loader, dotted: str, spec: Key) -> str | None:
    key = dotted
    if loader._get(dotted) is None:
        key = next((alias for alias in spec.aliases if loader._get(alias) is not None), dotted)
    value = loader._str(key, None) or None
    if value is None:
        if spec.required:
            raise loader._error(key, loader._get(key), "required")
        return spec.default
    if spec.choices:
        value = value.lower()
        if value not in spec.choices:
            raise loader._error(key, loader._get(key), f"must be one of {', '.join(spec.choices)}")
    if spec.check is not None:
        try:
            value = spec.check(value)
        except ValueError as e:
            raise loader._error(key, loader._get(key), str(e)) from None
    return value


def _read_bool(loader: _Loader, dotted: str, spec: Key) -> bool:
    return loader._bool(dotted, spec.default)


def _read_duration(loader: _Loader, dotted: str, spec: Key) -> float:
    text = loader._str(dotted, spec.default)
    try:
        return parse_go_duration(text or "")
    except ValueError as e:
        raise loader._error(dotted, loader._get(dotted), str(e)) from None


def _read_mapping(loader: _Loader, dotted: str, spec: Key) -> dict[str, Any]:
    return {str(k): v for k, v in loader._mapping(dotted).items()}


def _read_strings(loader: _Loader, dotted: str, spec: Key) -> tuple[str, ...]:
    value = loader._get(dotted)
    if value is None or value == "":
        return tuple(spec.default or ())
    if isinstance(value, str):
        # One value, or several separated by commas (an environment override).
        return tuple(v.strip() for v in value.split(",") if v.strip())
    if isinstance(value, list) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise loader._error(dotted, value, "must be a list of strings")


def _read_int(loader: _Loader, dotted: str, spec: Key) -> int:
    value = loader._get(dotted)
    if value is None:
        return int(spec.default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise loader._error(dotted, value, "must be a whole number, 0 or more")
    return value


def _read_section_list(loader: _Loader, dotted: str, spec: Key) -> tuple[Any, ...]:
    # ``notifications.endpoints``, ``health.http``: a list of sections, each
    # read like a section at ``<dotted>.<index>``.
    assert spec.section is not None
    value = loader._get(dotted)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise loader._error(dotted, value, "must be a list")
    return tuple(loader._section(spec.section, f"{dotted}.{i}") for i in range(len(value)))


def _read_section(loader: _Loader, dotted: str, spec: Key) -> Any:
    assert spec.section is not None
    if not spec.required and loader._get(dotted) is None:
        return None
    return loader._section(spec.section, dotted)


# --- declarations ------------------------------------------------------------
#
# Each configuration section is one frozen dataclass; each field that comes
# from the YAML carries a :class:`Key` in its metadata (made by the helpers
# below) saying its dotted key relative to the section, how it is read and
# checked, and its default.  The loader walks these declarations generically:
# the same declarations give the set of known keys (unknown-key warnings),
# the string-typed keys (environment overrides keep their text), defaults and
# validation.  Keys of Distribution this registry does not implement are
# listed in the section's ``IGNORED`` (a warning names them).  A section may
# define ``checked(self, check)`` for rules between its fields.
#
# Adding a section, e.g. ``auth.htpasswd: {realm, path}``:
#
#     @dataclass(frozen=True)
#     class HtpasswdConfig:
#         realm: str = string("Registry Realm")
#         path: str = string(None, required=True)
#
#     @dataclass(frozen=True)
#     class AuthConfig:
#         htpasswd: HtpasswdConfig | None = section(HtpasswdConfig, optional=True)
#
# and ``auth: AuthConfig = section(AuthConfig)`` in :class:`Config` (dropping
# ``"auth"`` from ``Config.IGNORED``).

_Reader = Callable[["_Loader", str, "Key"], Any]


@dataclass(frozen=True)
class Key:
    """How one configuration key is declared (a dataclass field's metadata)."""

    #: Dotted key relative to the section (default: the field's name).
    key: str | None
    read: _Reader
    default: Any = None
    #: ``str``: an environment override keeps its text verbatim.
    is_string: bool = False
    #: A nested section's dataclass (its keys are declared there).
    section: type | None = None
    #: A mapping whose keys are free-form (no warnings for them).
    open: bool = False
    #: Other absolute dotted keys read when this one is absent (deprecated names).
    aliases: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    check: Callable[[Any], Any] | None = None
    #: A string that must be given; a section that is always built (not
    #: ``optional``: absent means all defaults).
    required: bool = False


def _meta(key: Key, default: Any = MISSING, default_factory: Any = MISSING) -> Any:
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"config": key})
    return field(default=default, metadata={"config": key})


def string(
    default: str | None,
    *,
    key: str | None = None,
    choices: tuple[str, ...] = (),
    check: Callable[[str], str] | None = None,
    aliases: tuple[str, ...] = (),
    required: bool = False,
) -> Any:
    """A string key; ``choices`` are matched case-insensitively (the value is
    lower-cased); ``check`` returns the value to keep or raises ``ValueError``
    with the message; an empty string counts as absent."""
    return _meta(
        Key(key, _read_string, default, is_string=True, choices=choices, check=check, aliases=aliases, required=required),
        default,
    )


def boolean(default: bool, *, key: str | None = None) -> Any:
    """A ``true``/``false`` key."""
    return _meta(Key(key, _read_bool, default), default)


def duration(default: str, *, key: str | None = None) -> Any:
    """A Go duration (``"168h"``), kept as seconds."""
    return _meta(Key(key, _read_duration, default, is_string=True), parse_go_duration(default))


def strings(*, key: str | None = None) -> Any:
    """A list of strings (a single string is a list of one; commas separate
    values given by an environment variable)."""
    return _meta(Key(key, _read_strings, (), is_string=True), ())


def mapping(*, key: str | None = None, read: _Reader | None = None) -> Any:
    """A mapping with free-form keys (``log.fields``); ``read`` converts it."""
    return _meta(Key(key, read or _read_mapping, open=True), default_factory=dict)


def section(cls: type, *, key: str | None = None, optional: bool = False) -> Any:
    """A nested section; ``optional``: None when the key is absent."""
    spec = Key(key, _read_section, section=cls, required=not optional)
    if optional:
        return _meta(spec, None)
    return _meta(spec, default_factory=cls)


def integer(default: int, *, key: str | None = None) -> Any:
    """A whole number, 0 or more."""
    return _meta(Key(key, _read_int, default), default)


def section_list(cls: type, *, key: str | None = None) -> Any:
    """A list of sections (``notifications.endpoints``); each element's keys
    are declared by ``cls``; absent: an empty tuple."""
    return _meta(Key(key, _read_section_list, section=cls), ())


def custom(read: _Reader, default: Any = None, *, key: str | None = None, is_string: bool = False) -> Any:
    """A key with its own reader (``version``, ``http.headers``)."""
    return _meta(Key(key, read, default, is_string=is_string), default)


class Checker:
    """Given to a section's ``checked``: errors that name the key, its value
    and the variable that set it."""

    def __init__(self, loader: _Loader, path: str) -> None:
        self._loader = loader
        self._path = path

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def raw(self, name: str) -> Any:
        """The section's key ``name`` as written (after overrides)."""
        return self._loader._get(self.key(name))

    def warn(self, name: str, message: str) -> None:
        """Add a warning about the section's key ``name`` to ``Config.warnings``."""
        self._loader.warnings.append(f"configuration key {self.key(name)}: {message}")

    def error(self, name: str, message: str) -> ConfigError:
        """A ConfigError for the section's key ``name`` with its raw value."""
        dotted = self.key(name)
        return self._loader._error(dotted, self._loader._get(dotted), message)


@dataclass(frozen=True)
class LogConfig:
    """``log.*``: the level threshold, the output format and static fields."""

    IGNORED: ClassVar[tuple[str, ...]] = ("hooks", "reportcaller")

    level: str = string("info", choices=_LOG_LEVELS, aliases=("loglevel",))
    formatter: str = string("text", choices=_LOG_FORMATTERS)
    fields: Mapping[str, Any] = mapping()
    accesslog_disabled: bool = boolean(False, key="accesslog.disabled")


@dataclass(frozen=True)
class UploadPurgingConfig:
    """``storage.maintenance.uploadpurging``: durations in seconds."""

    enabled: bool = boolean(True)
    age: float = duration("168h")
    interval: float = duration("24h")
    dryrun: bool = boolean(False)


@dataclass(frozen=True)
class GCConfig:
    """``storage.maintenance.gc`` (this registry's key): scheduled garbage
    collection in the server (``registry.storage.gcservice``); durations in
    seconds."""

    enabled: bool = boolean(False)
    interval: float = duration("24h")
    grace: float = duration("1h")
    deleteuntagged: bool = boolean(False)
    dryrun: bool = boolean(False)

    def checked(self, check: Checker) -> GCConfig:
        if self.interval <= 0:
            raise check.error("interval", 'must be a positive duration, e.g. "24h"')
        if self.grace < 0:
            raise check.error("grace", 'cannot be negative (e.g. "1h"; "0s" only when nothing pushes meanwhile)')
        return self


@dataclass(frozen=True)
class StorageConfig:
    """``storage.*``: the one driver with its raw parameters, plus registry switches.

    Every key of ``storage`` that is not declared here (or ignored) names the
    driver; the loader picks it (``driver``, ``params``)."""

    IGNORED: ClassVar[tuple[str, ...]] = ("cache.blobdescriptorsize",)

    driver: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    delete_enabled: bool = boolean(False, key="delete.enabled")
    readonly: bool = boolean(False, key="maintenance.readonly.enabled")
    #: ``storage.redirect.disable``: serve blob GETs through the registry even
    #: when the driver can sign a URL (S3).
    redirect_disable: bool = boolean(False, key="redirect.disable")
    uploadpurging: UploadPurgingConfig = section(UploadPurgingConfig, key="maintenance.uploadpurging")
    gc: GCConfig = section(GCConfig, key="maintenance.gc")
    #: ``storage.cache.blobdescriptor``: cache blob sizes and repository
    #: links in ``redis`` (shared; needs the ``redis`` section) or
    #: ``inmemory`` (this process); None: no cache (registry.storage.cache).
    cache_blobdescriptor: str | None = string(None, key="cache.blobdescriptor", choices=("redis", "inmemory"))


@dataclass(frozen=True)
class RedisConfig:
    """``redis.*``: the Redis server shared by the instances (upload locks,
    the blob-descriptor cache); durations in seconds."""

    IGNORED: ClassVar[tuple[str, ...]] = ("tls", "username", "sentinelmastername", "addrs", "clientname")

    addr: str = string(None, required=True)
    password: str | None = string(None)
    db: int = integer(0)
    dialtimeout: float = duration("5s")
    readtimeout: float = duration("5s")
    writetimeout: float = duration("5s")
    pool_maxidle: int = integer(16, key="pool.maxidle")
    pool_maxactive: int = integer(64, key="pool.maxactive")
    pool_idletimeout: float = duration("300s", key="pool.idletimeout")

    def checked(self, check: Checker) -> RedisConfig:
        try:
            parse_addr(self.addr)
        except ValueError as e:
            raise check.error("addr", str(e)) from None
        return self


def _check_host(host: str) -> str:
    parts = urlsplit(host)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ValueError('must be an absolute http(s) URL such as "https://registry.example.com"')
    return host.rstrip("/")


def _check_prefix(prefix: str) -> str:
    if not prefix.startswith("/"):
        raise ValueError('must begin with "/", e.g. "/registry/"')
    return prefix if prefix.endswith("/") else prefix + "/"


def _read_headers(loader: _Loader, dotted: str, spec: Key) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for name, values in loader._mapping(dotted).items():
        key = f"{dotted}.{name}"
        if isinstance(values, (str, int, float)) and not isinstance(values, bool):
            values = [values]
        if (
            not isinstance(name, str)
            or not isinstance(values, list)
            or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values)
        ):
            raise loader._error(key, values, "must be a header value or a list of header values")
        headers[name] = [str(v) for v in values]
    return headers


def _check_debug_path(path: str) -> str:
    if not path.startswith("/"):
        raise ValueError('must begin with "/", e.g. "/metrics"')
    return path


@dataclass(frozen=True)
class PrometheusConfig:
    """``http.debug.prometheus``: the metrics page on the debug listener."""

    enabled: bool = boolean(False)
    path: str = string("/metrics", check=_check_debug_path)


@dataclass(frozen=True)
class DebugConfig:
    """``http.debug``: the debug listener (off without ``addr``): health
    and, when enabled, Prometheus metrics."""

    IGNORED: ClassVar[tuple[str, ...]] = ("tls",)

    addr: str | None = string(None)
    prometheus: PrometheusConfig = section(PrometheusConfig)

    def checked(self, check: Checker) -> DebugConfig:
        if self.addr is not None:
            try:
                parse_addr(self.addr)
            except ValueError as e:
                raise check.error("addr", str(e)) from None
        return self


@dataclass(frozen=True)
class HTTPConfig:
    """``http.*``: where to listen and how the registry names itself."""

    IGNORED: ClassVar[tuple[str, ...]] = (
        "tls.letsencrypt",
        "draintimeout",
        "http2",
    )

    #: ``host:port``; with ``net: unix`` a socket path (then required).
    addr: str = string("127.0.0.1:5000")
    #: ``tcp`` (also ``tcp4``/``tcp6``) or ``unix`` (then ``addr`` is a path).
    net: str = string("tcp", choices=_HTTP_NETS)
    #: External base URL (``scheme://host[:port][/path]``), no trailing slash.
    host: str | None = string(None, check=_check_host)
    secret: str | None = string(None)
    #: Path prefix before ``v2/``; always begins and ends with ``/``.
    prefix: str = string("/", check=_check_prefix)
    relativeurls: bool = boolean(False)
    #: ``http.workers``: processes serving the one listening socket (this
    #: registry's key); 0 (the default) means one per CPU core, 1 a single
    #: process as before (registry.workers).
    workers: int = integer(0)
    tls_certificate: str | None = string(None, key="tls.certificate")
    tls_key: str | None = string(None, key="tls.key")
    #: CA certificate files whose client certificates are accepted (mutual TLS).
    tls_clientcas: tuple[str, ...] = strings(key="tls.clientcas")
    tls_minimumtls: str = string("tls1.2", key="tls.minimumtls", choices=("tls1.0", "tls1.1", "tls1.2", "tls1.3"))
    #: Go's names of the TLS 1.2 cipher suites to offer (empty: OpenSSL's defaults).
    tls_ciphersuites: tuple[str, ...] = strings(key="tls.ciphersuites")
    #: ``http.headers``: extra response headers, each a list of values.
    headers: dict[str, list[str]] = mapping(read=_read_headers)
    debug: DebugConfig = section(DebugConfig)

    def checked(self, check: Checker) -> HTTPConfig:
        if self.net == "unix":
            if check.raw("addr") in (None, ""):
                raise check.error("addr", "must be a socket path when http.net is unix")
        else:
            try:
                # An empty addr is an error here, not the default.
                parse_addr("" if check.raw("addr") == "" else self.addr)
            except ValueError as e:
                raise check.error("addr", str(e)) from None
        if self.tls_certificate and not self.tls_key:
            raise check.error("tls.key", "required when http.tls.certificate is set")
        if self.tls_key and not self.tls_certificate:
            raise check.error("tls.certificate", "required when http.tls.key is set")
        if self.tls_clientcas and not self.tls_certificate:
            raise check.error("tls.clientcas", "needs http.tls.certificate and http.tls.key (mutual TLS is TLS)")
        if self.tls_certificate and self.tls_minimumtls in ("tls1.0", "tls1.1"):
            check.warn(
                "tls.minimumtls",
                f"{self.tls_minimumtls} lets clients use TLS 1.0/1.1, which are deprecated (RFC 8996) and "
                "open to known attacks; set tls1.2 (the default) unless a client that cannot do better needs it",
            )
        from registry.tls import GO_CIPHER_SUITES, TLS13_SUITES

        for suite in self.tls_ciphersuites:
            if suite not in GO_CIPHER_SUITES and suite not in TLS13_SUITES:
                raise check.error(
                    "tls.ciphersuites",
                    f"unknown or unsupported cipher suite {suite!r}; use Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                )
        return self

    def tls_settings(self) -> "TLSSettings | None":
        """The TLS listener settings, or None for plain HTTP."""
        from registry.tls import TLSSettings

        if not (self.tls_certificate and self.tls_key):
            return None
        return TLSSettings(
            certificate=self.tls_certificate,
            key=self.tls_key,
            clientcas=self.tls_clientcas,
            minimumtls=self.tls_minimumtls,
            ciphersuites=self.tls_ciphersuites,
        )


@dataclass(frozen=True)
class HtpasswdConfig:
    """``auth.htpasswd``: Basic authentication against a bcrypt htpasswd file."""

    realm: str = string("Registry Realm")
    path: str = string(None, required=True)


@dataclass(frozen=True)
class TokenConfig:
    """``auth.token``: Docker's token authentication (JWTs from a token server)."""

    realm: str = string(None, required=True)
    service: str = string(None, required=True)
    issuer: str = string(None, required=True)
    rootcertbundle: str | None = string(None)
    jwks: str | None = string(None)
    autoredirect: bool = boolean(False)
    autoredirectpath: str | None = string(None)
    signingalgorithms: tuple[str, ...] = strings()

    def checked(self, check: Checker) -> TokenConfig:
        if not self.rootcertbundle and not self.jwks:
            raise check.error("rootcertbundle", "required (or auth.token.jwks): the keys that sign tokens")
        return self


@dataclass(frozen=True)
class AuthConfig:
    """``auth``: at most one access controller; none means open access."""

    IGNORED: ClassVar[tuple[str, ...]] = ("silly",)

    htpasswd: HtpasswdConfig | None = section(HtpasswdConfig, optional=True)
    token: TokenConfig | None = section(TokenConfig, optional=True)

    def checked(self, check: Checker) -> AuthConfig:
        if self.htpasswd is not None and self.token is not None:
            raise check.error("token", "configure exactly one access controller (auth.htpasswd or auth.token), not both")
        return self

    def controller_params(self) -> dict[str, dict[str, Any]]:
        """``{name: params}`` of the configured controller (empty: none)."""
        from dataclasses import asdict

        if self.htpasswd is not None:
            return {"htpasswd": asdict(self.htpasswd)}
        if self.token is not None:
            params = {k: v for k, v in asdict(self.token).items() if v not in (None, ())}
            if "signingalgorithms" in params:
                params["signingalgorithms"] = list(params["signingalgorithms"])
            return {"token": params}
        return {}


def _check_remoteurl(value: str) -> str:
    from registry.proxy.upstream import split_remote_url

    split_remote_url(value)
    return value.strip().rstrip("/")


@dataclass(frozen=True)
class ProxyConfig:
    """``proxy``: run as a pull-through cache of ``remoteurl`` (Distribution's
    keys). ``username``/``password`` are the cache's own credentials at the
    upstream (Basic or token authentication), never given to clients. ``ttl``
    is how long a cached tag is served before it is checked again with the
    upstream (manifests by digest and blobs are kept for good); ``0`` checks
    every time. (Distribution reads ``ttl`` as the expiry of cached content.)"""

    remoteurl: str | None = string(None, check=_check_remoteurl)
    username: str | None = string(None)
    password: str | None = string(None)
    ttl: float = duration("5m")

    def checked(self, check: Checker) -> ProxyConfig:
        if self.password and not self.username:
            raise check.error("username", "required when proxy.password is set")
        return self


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError('must be an absolute http(s) URL such as "https://hooks.example.com/registry"')
    return url


@dataclass(frozen=True)
class StorageDriverHealthConfig:
    """``health.storagedriver``: a periodic stat of the storage root."""

    enabled: bool = boolean(False)
    interval: float = duration("10s")
    #: Consecutive failures before the check reports unhealthy (0: the first).
    threshold: int = integer(0)


@dataclass(frozen=True)
class FileHealthConfig:
    """``health.file[]``: unhealthy while the file exists (a maintenance switch)."""

    file: str = string(None, required=True)
    interval: float = duration("10s")


@dataclass(frozen=True)
class HTTPHealthConfig:
    """``health.http[]``: a HEAD request to ``uri`` must answer ``statuscode``."""

    uri: str = string(None, required=True, check=_check_http_url)
    headers: dict[str, list[str]] = mapping(read=_read_headers)
    statuscode: int = integer(200)
    timeout: float = duration("3s")
    interval: float = duration("10s")
    threshold: int = integer(0)


@dataclass(frozen=True)
class TCPHealthConfig:
    """``health.tcp[]``: a TCP connection to ``addr`` must open."""

    addr: str = string(None, required=True)
    timeout: float = duration("3s")
    interval: float = duration("10s")
    threshold: int = integer(0)

    def checked(self, check: Checker) -> TCPHealthConfig:
        try:
            host, _ = parse_addr(self.addr)
        except ValueError as e:
            raise check.error("addr", str(e)) from None
        if not host:
            raise check.error("addr", "needs a host to connect to")
        return self


@dataclass(frozen=True)
class HealthConfig:
    """``health``: the checks ``GET /debug/health`` reports."""

    storagedriver: StorageDriverHealthConfig = section(StorageDriverHealthConfig)
    file: tuple[FileHealthConfig, ...] = section_list(FileHealthConfig)
    http: tuple[HTTPHealthConfig, ...] = section_list(HTTPHealthConfig)
    tcp: tuple[TCPHealthConfig, ...] = section_list(TCPHealthConfig)
    #: This registry's key: also answer ``GET <http.prefix>debug/health`` on
    #: the main listener (no authentication, as on the debug listener), for
    #: load balancers that can only probe the port they send traffic to.
    mainlistener: bool = boolean(False)


@dataclass(frozen=True)
class IgnoreConfig:
    """``notifications.endpoints[].ignore``: events not sent to the endpoint."""

    mediatypes: tuple[str, ...] = strings()
    actions: tuple[str, ...] = strings()


@dataclass(frozen=True)
class EndpointConfig:
    """``notifications.endpoints[]``: one webhook (defaults are Distribution's)."""

    name: str = string(None, required=True)
    #: None: the endpoint is not used (a warning says so).
    url: str | None = string(None, check=_check_http_url)
    headers: dict[str, list[str]] = mapping(read=_read_headers)
    timeout: float = duration("1s")
    #: Consecutive failed deliveries before the endpoint backs off.
    threshold: int = integer(10)
    backoff: float = duration("1s")
    ignoredmediatypes: tuple[str, ...] = strings()
    ignore: IgnoreConfig = section(IgnoreConfig)
    disabled: bool = boolean(False)


@dataclass(frozen=True)
class EventsConfig:
    """``notifications.events``."""

    includereferences: bool = boolean(False)


@dataclass(frozen=True)
class NotificationsConfig:
    """``notifications``: webhooks told of pushes, pulls, mounts and deletes."""

    endpoints: tuple[EndpointConfig, ...] = section_list(EndpointConfig)
    events: EventsConfig = section(EventsConfig)

    def checked(self, check: Checker) -> NotificationsConfig:
        names = [e.name for e in self.endpoints]
        for name in names:
            if names.count(name) > 1:
                raise check.error("endpoints", f"two endpoints are named {name!r}; names must be unique")
        for i, endpoint in enumerate(self.endpoints):
            if endpoint.url is None and not endpoint.disabled:
                check.warn(f"endpoints.{i}.url", f"missing; endpoint {endpoint.name!r} is not used")
        return self


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1 << 10, "m": 1000**2, "mb": 1000**2, "mib": 1 << 20,
               "g": 1000**3, "gb": 1000**3, "gib": 1 << 30, "t": 1000**4, "tb": 1000**4, "tib": 1 << 40}


def _read_size(loader: _Loader, dotted: str, spec: Key) -> int:
    """A byte count: an integer, or a number with a unit (``"64GiB"``, ``"500MB"``)."""
    value = loader._get(dotted)
    if value is None:
        return int(spec.default)
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(value)) if isinstance(value, (str, int)) else None
    if m is None or m.group(2).lower() not in _SIZE_UNITS or int(m.group(1)) <= 0:
        raise loader._error(dotted, value, 'must be a positive size in bytes, e.g. 68719476736 or "64GiB"')
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]


@dataclass(frozen=True)
class ManifestValidationConfig:
    """``validation.manifests``: ``verifylayers`` (this registry's key)
    checks each layer's uncompressed digest against the config's
    ``rootfs.diff_ids`` on manifest PUT (``registry.storage.verify``);
    ``maxuncompressedlayersize`` bounds the bytes one layer may inflate to."""

    IGNORED: ClassVar[tuple[str, ...]] = ("urls", "indexes")

    verifylayers: bool = boolean(False)
    maxuncompressedlayersize: int = custom(_read_size, 64 << 30)


@dataclass(frozen=True)
class ValidationConfig:
    """``validation``: what a manifest PUT checks beyond the spec."""

    IGNORED: ClassVar[tuple[str, ...]] = ("enabled", "disabled")

    manifests: ManifestValidationConfig = section(ManifestValidationConfig)


_LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost")


def is_loopback_host(host: str) -> bool:
    """True for a listening host only this machine reaches: ``localhost``
    or a loopback address (127.0.0.0/8, ``::1``); False for all interfaces ("")."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen_interface(listen: str) -> str | None:
    """The ``interface=`` of a server endpoint string (``--listen``), unescaped."""
    m = re.search(r"(?:^|:)interface=((?:\\.|[^:])*)", listen)
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else None


@dataclass(frozen=True)
class UIConfig:
    """``ui``: the web page under ``<http.prefix>ui/`` on the main listener."""

    #: Unset: on when the main listener is loopback only (see ``active``).
    enabled: bool | None = custom(_read_bool, None)

    def active(self, http: HTTPConfig, listen: str | None = None) -> bool:
        """Whether to serve the page: ``ui.enabled`` when set, otherwise
        only when the registry listens on a loopback address (``http.addr``,
        or the ``interface`` of ``--listen`` when given)."""
        if self.enabled is not None:
            return self.enabled
        if listen is not None:
            interface = _listen_interface(listen)
            return interface is not None and is_loopback_host(interface)
        if http.net == "unix":
            return False
        try:
            host, _ = parse_addr(http.addr)
        except ValueError:
            return False
        return is_loopback_host(host)


def _read_version(loader: _Loader, dotted: str, spec: Key) -> str:
    value = loader._get(dotted)
    if value is None:
        raise loader._error(dotted, None, 'missing; this registry reads version "0.1"')
    if isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (str, int)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise loader._error(dotted, value, 'must be "MAJOR.MINOR", e.g. "0.1"')
    m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
    if m is None:
        raise loader._error(dotted, value, 'must be "MAJOR.MINOR", e.g. "0.1"')
    if (int(m.group(1)), int(m.group(2))) != (0, 1):
        raise loader._error(dotted, value, 'unsupported version; this registry reads "0.1"')
    return "0.1"


def _read_storage(loader: _Loader, dotted: str, spec: Key) -> StorageConfig:
    return loader._storage(dotted)


@dataclass(frozen=True)
class Config:
    """The validated configuration; :attr:`raw` is the merged tree."""

    IGNORED: ClassVar[tuple[str, ...]] = (
        "middleware",
        "reporting",
        "catalog",
        "compatibility",
        "policy",
    )

    version: str = custom(_read_version, "0.1", is_string=True)
    log: LogConfig = section(LogConfig)
    storage: StorageConfig = _meta(
        Key(None, _read_storage, section=StorageConfig, open=True), default_factory=StorageConfig
    )
    http: HTTPConfig = section(HTTPConfig)
    auth: AuthConfig = section(AuthConfig)
    proxy: ProxyConfig = section(ProxyConfig)
    notifications: NotificationsConfig = section(NotificationsConfig)
    health: HealthConfig = section(HealthConfig)
    validation: ValidationConfig = section(ValidationConfig)
    ui: UIConfig = section(UIConfig)
    #: ``redis``: None when absent (no shared locks, no Redis cache).
    redis: RedisConfig | None = section(RedisConfig, optional=True)
    raw: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


# --- the key tree: what is known, implemented, ignored --------------------

_LEAF = "leaf"  # an implemented scalar key
_OPEN = "open"  # an implemented mapping whose keys are free-form
_IGNORED = "ignored"  # a Distribution key this registry does not implement

#: A section's schema: key -> _LEAF / _OPEN / _IGNORED / nested schema; the
#: key ``_OPEN_SECTION`` present means undeclared keys are not warned about
#: (``storage``: they name the driver).
_Schema = dict[Any, Any]
_OPEN_SECTION = object()


def _spec(f: Field[Any]) -> Key | None:
    spec = f.metadata.get("config")
    return spec if isinstance(spec, Key) else None


def _insert(schema: _Schema, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = schema
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _schema_of(cls: type, root: _Schema | None = None, prefix: str = "") -> _Schema:
    schema: _Schema = {}
    root = schema if root is None else root
    for f in fields(cls):
        spec = _spec(f)
        if spec is None:
            continue
        key = spec.key or f.name
        if spec.section is not None:
            sub = _schema_of(spec.section, root, f"{prefix}{key}.")
            if spec.open:
                sub[_OPEN_SECTION] = True
            _insert(schema, key, sub)
        else:
            _insert(schema, key, _OPEN if spec.open else _LEAF)
        for alias in spec.aliases:
            _insert(root, alias, _LEAF)
    for key in getattr(cls, "IGNORED", ()):
        _insert(schema, key, _IGNORED)
    return schema


def _string_keys_of(cls: type, prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for f in fields(cls):
        spec = _spec(f)
        if spec is None:
            continue
        dotted = prefix + (spec.key or f.name)
        if spec.section is not None:
            keys |= _string_keys_of(spec.section, dotted + ".")
        elif spec.is_string:
            keys.add(dotted)
            keys.update(spec.aliases)
    return keys


_SCHEMA: _Schema = _schema_of(Config)

#: Keys whose value is a string: an environment override keeps its text.
_STRING_KEYS = frozenset(_string_keys_of(Config) | {"storage.filesystem.rootdirectory"})


# --- public entry points ---------------------------------------------------


def load_config(
    text: str | None,
    environ: Mapping[str, str],
    *,
    source: str = "<embedded default>",
    base_dir: str | None = None,
) -> Config:
    """Parse ``text`` (``None``: :data:`DEFAULT_CONFIG_YAML`), apply ``environ``'s
    ``REGISTRY_*`` overrides and validate.

    ``source`` names the document in YAML syntax errors; ``base_dir`` (default:
    the working directory) anchors a relative filesystem ``rootdirectory``.
    Raises :class:`ConfigError` for any invalid value.
    """
    if text is None:
        text = DEFAULT_CONFIG_YAML
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError("(document)", source, f"not valid YAML: {_one_line(e)}") from None
    if tree is None:
        tree = {}
    if not isinstance(tree, dict):
        raise ConfigError("(document)", source, "the top level must be a mapping of keys")
    loader = _Loader(tree, environ, base_dir if base_dir is not None else os.getcwd())
    return loader.load()


def load_config_file(
    path: str | os.PathLike[str], environ: Mapping[str, str], *, base_dir: str | None = None
) -> Config:
    """Read the YAML file at ``path`` and :func:`load_config` it.

    Raises ``OSError`` when the file cannot be read (the caller reports it)
    and :class:`ConfigError` for invalid content.
    """
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return load_config(text, environ, source=os.fspath(path), base_dir=base_dir)


# --- the loader ------------------------------------------------------------


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())


def _dotted(path: list[str]) -> str:
    return ".".join(path)


class _Loader:
    """Applies the overrides to one tree, then validates and builds a Config."""

    def __init__(self, tree: dict[Any, Any], environ: Mapping[str, str], base_dir: str) -> None:
        self.tree = copy.deepcopy(tree)
        self.environ = environ
        self.base_dir = base_dir
        self.warnings: list[str] = []
        #: dotted key -> environment variable that set it (or set a parent)
        self.sources: dict[str, str] = {}
        #: Keys whose override keeps its text (from the declarations).
        self.string_keys: frozenset[str] = _STRING_KEYS

    # -- overrides --

    def load(self) -> Config:
        if isinstance(self.tree.get("storage"), str):
            self.tree["storage"] = {self.tree["storage"]: {}}
        self._apply_environment()
        self._check_keys(self.tree, _SCHEMA, [])
        return self._section(Config, "", raw=copy.deepcopy(self.tree), warnings=self.warnings)

    def _apply_environment(self) -> None:
        names = sorted(
            name
            for name in self.environ
            if name.startswith(_ENV_PREFIX) and name != CONFIGURATION_PATH_ENV
        )
        for name in names:
            parts = name[len(_ENV_PREFIX) :].split("_")
            if any(p == "" for p in parts):
                self.warnings.append(
                    f"ignoring environment variable {name}: it does not name a configuration key"
                )
                continue
            self._override(name, [p.upper() for p in parts], self.environ[name])

    def _override(self, name: str, parts: list[str], payload: str) -> None:
        node: Any = self.tree
        path: list[str] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                # A list element by index; the index one past the end appends
                # (Distribution's rule for e.g. notifications.endpoints).
                if not part.isdigit() or int(part) > len(node):
                    self.warnings.append(
                        f"ignoring environment variable {name}: {_dotted(path)} has no element {part}"
                    )
                    return
                key: Any = int(part)
                if key == len(node):
                    node.append(None)
            else:
                key = next((k for k in node if isinstance(k, str) and k.upper() == part), part.lower())
            path.append(str(key))
            if last:
                node[key] = self._env_value(name, path, payload)
                if path == ["storage"] and isinstance(node[key], str):
                    node[key] = {node[key]: {}}
            else:
                child = node[key] if isinstance(node, list) else node.get(key)
                if not isinstance(child, (dict, list)):
                    child = {}
                    node[key] = child
                node = child
        dotted = _dotted(path)
        for k in [k for k in self.sources if k == dotted or k.startswith(dotted + ".")]:
            del self.sources[k]
        self.sources[dotted] = name

    def _env_value(self, name: str, path: list[str], payload: str) -> Any:
        dotted = _dotted(path)
        try:
            value = yaml.safe_load(payload) if payload.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(
                dotted, payload, f"not a valid YAML value: {_one_line(e)}", name
            ) from None
        if dotted in self.string_keys and value is not None and not isinstance(value, str):
            return payload.strip()
        return value

    # -- key checks --

    def _source_of(self, dotted: str) -> str | None:
        probe = dotted
        while True:
            if probe in self.sources:
                return self.sources[probe]
            if "." not in probe:
                return None
            probe = probe.rsplit(".", 1)[0]

    def _warn_key(self, dotted: str, what: str) -> None:
        source = self._source_of(dotted) or next(
            (v for k, v in sorted(self.sources.items()) if k.startswith(dotted + ".")), None
        )
        suffix = f" (set by environment variable {source})" if source else ""
        self.warnings.append(f"configuration key {dotted}: {what}; ignored{suffix}")

    def _check_keys(self, node: Mapping[Any, Any], schema: _Schema, path: list[str]) -> None:
        for key, value in node.items():
            dotted = _dotted([*path, str(key)])
            spec = schema.get(key) if isinstance(key, str) else None
            if spec is None:
                if _OPEN_SECTION not in schema:
                    self._warn_key(dotted, "unknown key")
            elif spec == _IGNORED:
                self._warn_key(dotted, "not supported by this registry")
            elif isinstance(spec, dict) and isinstance(value, dict):
                self._check_keys(value, spec, [*path, key])
            elif isinstance(spec, dict) and isinstance(value, list):
                # A list of sections: each element against the section's keys.
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        self._check_keys(item, spec, [*path, key, str(i)])

    # -- typed getters --

    def _get(self, path: str) -> Any:
        node: Any = self.tree
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit():
                # An element of a list of sections (``notifications.endpoints.0``).
                node = node[int(part)] if int(part) < len(node) else None
                continue
            if not isinstance(node, dict):
                return None
            node = node.get(part)
        return node

    def _error(self, key: str, value: object, message: str) -> ConfigError:
        return ConfigError(key, value, message, self._source_of(key))

    def _mapping(self, key: str) -> dict[Any, Any]:
        value = self._get(key)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._error(key, value, "must be a mapping")
        return value

    def _bool(self, key: str, default: bool) -> bool:
        value = self._get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._error(key, value, "must be a boolean (true or false)")
        return value

    def _str(self, key: str, default: str | None) -> str | None:
        value = self._get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self._error(key, value, "must be a string")
        return str(value)

    # -- the generic walk over the declarations --

    def _section(self, cls: type, path: str, **given: Any) -> Any:
        """Read the dataclass ``cls`` declared at ``path`` ("" for the top)."""
        if path:
            self._mapping(path)
        values = dict(given)
        for f in fields(cls):
            spec = _spec(f)
            if spec is None or f.name in values:
                continue
            key = spec.key or f.name
            dotted = f"{path}.{key}" if path else key
            self._parents(dotted)
            values[f.name] = spec.read(self, dotted, spec)
        obj = cls(**values)
        checked = getattr(obj, "checked", None)
        if checked is not None:
            obj = checked(Checker(self, path))
        return obj

    def _parents(self, dotted: str) -> None:
        """Each section above ``dotted`` must be a mapping (or absent)."""
        parts = dotted.split(".")
        for i in range(1, len(parts)):
            if not isinstance(self._get(".".join(parts[:i])), list):
                self._mapping(".".join(parts[:i]))

    def _storage(self, dotted: str) -> StorageConfig:
        storage = self._get(dotted)
        if storage is None:
            raise self._error(
                "storage", None, "no storage driver configured (e.g. storage.filesystem.rootdirectory)"
            )
        if not isinstance(storage, dict):
            raise self._error("storage", storage, "must be a driver name or a mapping")
        declared = _SCHEMA["storage"]
        drivers = [k for k in storage if k not in declared]
        if not drivers:
            raise self._error(
                "storage", storage, "no storage driver configured (e.g. storage.filesystem.rootdirectory)"
            )
        if len(drivers) > 1:
            raise self._error(
                "storage", sorted(map(str, drivers)), "exactly one storage driver must be configured"
            )
        driver = drivers[0]
        if not isinstance(driver, str) or not driver:
            raise self._error("storage", driver, "a storage driver name must be a string")
        params = self._mapping(f"storage.{driver}")
        params = {str(k): copy.deepcopy(v) for k, v in params.items()}
        if driver == "filesystem" and "rootdirectory" in params:
            root = self._str("storage.filesystem.rootdirectory", None)
            if not root:
                raise self._error(
                    "storage.filesystem.rootdirectory", params["rootdirectory"], "must be a non-empty path"
                )
            params["rootdirectory"] = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(root)))
        config: StorageConfig = self._section(StorageConfig, dotted, driver=driver, params=params)
        return config


