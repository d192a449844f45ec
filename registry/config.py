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
from dataclasses import dataclass, field
from typing import Any, Mapping
from urllib.parse import urlsplit

import yaml

__all__ = [
    "DEFAULT_CONFIG_YAML",
    "Config",
    "ConfigError",
    "HTTPConfig",
    "LogConfig",
    "StorageConfig",
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
#: Keys under ``storage`` that configure the registry, not the driver.
_STORAGE_SECTIONS = frozenset({"delete", "maintenance", "cache", "redirect"})
_UPLOADPURGING_DEFAULTS: dict[str, Any] = {
    "enabled": True,
    "age": "168h",
    "interval": "24h",
    "dryrun": False,
}


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


@dataclass(frozen=True)
class LogConfig:
    """``log.*``: the level threshold, the output format and static fields."""

    level: str = "info"
    formatter: str = "text"
    fields: Mapping[str, Any] = field(default_factory=dict)
    accesslog_disabled: bool = False


@dataclass(frozen=True)
class StorageConfig:
    """``storage.*``: the one driver with its raw parameters, plus registry switches."""

    driver: str
    params: dict[str, Any]
    delete_enabled: bool = False
    readonly: bool = False
    #: Distribution's keys (``enabled``, ``age``, ``interval``, ``dryrun``);
    #: missing ones filled with Distribution's defaults, durations validated
    #: (convert with :func:`parse_go_duration`).
    uploadpurging: dict[str, Any] = field(default_factory=lambda: dict(_UPLOADPURGING_DEFAULTS))


@dataclass(frozen=True)
class HTTPConfig:
    """``http.*``: where to listen and how the registry names itself."""

    addr: str = "127.0.0.1:5000"
    #: ``tcp`` (also ``tcp4``/``tcp6``) or ``unix`` (then ``addr`` is a path).
    net: str = "tcp"
    #: External base URL (``scheme://host[:port][/path]``), no trailing slash.
    host: str | None = None
    secret: str | None = None
    #: Path prefix before ``v2/``; always begins and ends with ``/``.
    prefix: str = "/"
    relativeurls: bool = False
    tls_certificate: str | None = None
    tls_key: str | None = None
    #: ``http.headers``: extra response headers, each a list of values.
    headers: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """The validated configuration; :attr:`raw` is the merged tree."""

    version: str
    log: LogConfig
    storage: StorageConfig
    http: HTTPConfig
    raw: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


# --- the key tree: what is known, implemented, ignored --------------------

_LEAF = "leaf"  # an implemented scalar key
_OPEN = "open"  # an implemented mapping whose keys are free-form
_IGNORED = "ignored"  # a Distribution key this registry does not implement

_Schema = dict[str, Any]

_SCHEMA: _Schema = {
    "version": _LEAF,
    "loglevel": _LEAF,  # deprecated in Distribution in favour of log.level
    "log": {
        "level": _LEAF,
        "formatter": _LEAF,
        "fields": _OPEN,
        "accesslog": {"disabled": _LEAF},
        "hooks": _IGNORED,
        "reportcaller": _IGNORED,
    },
    # "storage" is checked by _check_storage_keys: its driver key is open.
    "http": {
        "addr": _LEAF,
        "net": _LEAF,
        "host": _LEAF,
        "prefix": _LEAF,
        "secret": _LEAF,
        "relativeurls": _LEAF,
        "headers": _OPEN,
        "tls": {
            "certificate": _LEAF,
            "key": _LEAF,
            "clientcas": _IGNORED,
            "minimumtls": _IGNORED,
            "ciphersuites": _IGNORED,
            "letsencrypt": _IGNORED,
        },
        "draintimeout": _IGNORED,
        "debug": _IGNORED,
        "http2": _IGNORED,
    },
    "auth": _IGNORED,
    "middleware": _IGNORED,
    "reporting": _IGNORED,
    "notifications": _IGNORED,
    "redis": _IGNORED,
    "health": _IGNORED,
    "catalog": _IGNORED,
    "proxy": _IGNORED,
    "compatibility": _IGNORED,
    "validation": _IGNORED,
    "policy": _IGNORED,
}

_STORAGE_SCHEMA: _Schema = {
    "delete": {"enabled": _LEAF},
    "maintenance": {
        "readonly": {"enabled": _LEAF},
        "uploadpurging": {"enabled": _LEAF, "age": _LEAF, "interval": _LEAF, "dryrun": _LEAF},
    },
    "cache": _IGNORED,
    "redirect": _IGNORED,
}

#: Keys whose value is a string: an environment override keeps its text.
_STRING_KEYS = frozenset(
    {
        "version",
        "loglevel",
        "log.level",
        "log.formatter",
        "http.addr",
        "http.net",
        "http.host",
        "http.prefix",
        "http.secret",
        "http.tls.certificate",
        "http.tls.key",
        "storage.filesystem.rootdirectory",
    }
)


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

    # -- overrides --

    def load(self) -> Config:
        if isinstance(self.tree.get("storage"), str):
            self.tree["storage"] = {self.tree["storage"]: {}}
        self._apply_environment()
        self._check_keys(self.tree, _SCHEMA, [])
        config = Config(
            version=self._version(),
            log=self._log(),
            storage=self._storage(),
            http=self._http(),
            raw=copy.deepcopy(self.tree),
            warnings=self.warnings,
        )
        return config

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
        if dotted in _STRING_KEYS and value is not None and not isinstance(value, str):
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
            if path == [] and key == "storage":
                if isinstance(value, dict):
                    self._check_storage_keys(value)
                continue
            spec = schema.get(key) if isinstance(key, str) else None
            if spec is None:
                self._warn_key(dotted, "unknown key")
            elif spec == _IGNORED:
                self._warn_key(dotted, "not supported by this registry")
            elif isinstance(spec, dict) and isinstance(value, dict):
                self._check_keys(value, spec, [*path, key])

    def _check_storage_keys(self, storage: Mapping[Any, Any]) -> None:
        for key, value in storage.items():
            if key in _STORAGE_SECTIONS:
                spec = _STORAGE_SCHEMA[key]
                if spec == _IGNORED:
                    self._warn_key(f"storage.{key}", "not supported by this registry")
                elif isinstance(value, dict):
                    self._check_keys(value, spec, ["storage", key])

    # -- typed getters --

    def _get(self, path: str) -> Any:
        node: Any = self.tree
        for part in path.split("."):
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

    # -- sections --

    def _version(self) -> str:
        value = self._get("version")
        if value is None:
            raise self._error("version", None, 'missing; this registry reads version "0.1"')
        if isinstance(value, float):
            text = repr(value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            text = str(value)
        else:
            raise self._error("version", value, 'must be "MAJOR.MINOR", e.g. "0.1"')
        m = re.fullmatch(r"(\d+)\.(\d+)", text.strip())
        if m is None:
            raise self._error("version", value, 'must be "MAJOR.MINOR", e.g. "0.1"')
        if (int(m.group(1)), int(m.group(2))) != (0, 1):
            raise self._error("version", value, 'unsupported version; this registry reads "0.1"')
        return "0.1"

    def _log(self) -> LogConfig:
        self._mapping("log")
        level_key = "log.level" if self._get("log.level") is not None else "loglevel"
        level = (self._str(level_key, "info") or "info").lower()
        if level not in _LOG_LEVELS:
            raise self._error(level_key, self._get(level_key), f"must be one of {', '.join(_LOG_LEVELS)}")
        formatter = (self._str("log.formatter", "text") or "text").lower()
        if formatter not in _LOG_FORMATTERS:
            raise self._error(
                "log.formatter", self._get("log.formatter"), f"must be one of {', '.join(_LOG_FORMATTERS)}"
            )
        fields = self._mapping("log.fields")
        self._mapping("log.accesslog")
        return LogConfig(
            level=level,
            formatter=formatter,
            fields={str(k): v for k, v in fields.items()},
            accesslog_disabled=self._bool("log.accesslog.disabled", False),
        )

    def _storage(self) -> StorageConfig:
        storage = self._get("storage")
        if storage is None:
            raise self._error(
                "storage", None, "no storage driver configured (e.g. storage.filesystem.rootdirectory)"
            )
        if not isinstance(storage, dict):
            raise self._error("storage", storage, "must be a driver name or a mapping")
        drivers = [k for k in storage if k not in _STORAGE_SECTIONS]
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

        self._mapping("storage.delete")
        self._mapping("storage.maintenance")
        self._mapping("storage.maintenance.readonly")
        purging = self._mapping("storage.maintenance.uploadpurging")
        uploadpurging = dict(_UPLOADPURGING_DEFAULTS)
        uploadpurging.update({str(k): v for k, v in purging.items()})
        for key in ("enabled", "dryrun"):
            self._bool(f"storage.maintenance.uploadpurging.{key}", False)
        for key in ("age", "interval"):
            dotted = f"storage.maintenance.uploadpurging.{key}"
            text = self._str(dotted, _UPLOADPURGING_DEFAULTS[key])
            try:
                parse_go_duration(text or "")
            except ValueError as e:
                raise self._error(dotted, self._get(dotted), str(e)) from None
            uploadpurging[key] = text
        return StorageConfig(
            driver=driver,
            params=params,
            delete_enabled=self._bool("storage.delete.enabled", False),
            readonly=self._bool("storage.maintenance.readonly.enabled", False),
            uploadpurging=uploadpurging,
        )

    def _http(self) -> HTTPConfig:
        self._mapping("http")
        net = (self._str("http.net", "tcp") or "tcp").lower()
        if net not in _HTTP_NETS:
            raise self._error("http.net", self._get("http.net"), f"must be one of {', '.join(_HTTP_NETS)}")
        if net == "unix":
            addr = self._str("http.addr", None)
            if not addr:
                raise self._error("http.addr", self._get("http.addr"), "must be a socket path when http.net is unix")
        else:
            addr = self._str("http.addr", "127.0.0.1:5000") or ""
            try:
                parse_addr(addr)
            except ValueError as e:
                raise self._error("http.addr", self._get("http.addr"), str(e)) from None

        host = self._str("http.host", None) or None
        if host is not None:
            parts = urlsplit(host)
            if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
                raise self._error(
                    "http.host", host, 'must be an absolute http(s) URL such as "https://registry.example.com"'
                )
            host = host.rstrip("/")

        prefix = self._str("http.prefix", "/") or "/"
        if not prefix.startswith("/"):
            raise self._error("http.prefix", prefix, 'must begin with "/", e.g. "/registry/"')
        if not prefix.endswith("/"):
            prefix += "/"

        self._mapping("http.tls")
        cert = self._str("http.tls.certificate", None) or None
        key = self._str("http.tls.key", None) or None
        if cert and not key:
            raise self._error("http.tls.key", self._get("http.tls.key"), "required when http.tls.certificate is set")
        if key and not cert:
            raise self._error(
                "http.tls.certificate", self._get("http.tls.certificate"), "required when http.tls.key is set"
            )

        headers: dict[str, list[str]] = {}
        for name, values in self._mapping("http.headers").items():
            dotted = f"http.headers.{name}"
            if isinstance(values, (str, int, float)) and not isinstance(values, bool):
                values = [values]
            if (
                not isinstance(name, str)
                or not isinstance(values, list)
                or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values)
            ):
                raise self._error(dotted, values, "must be a header value or a list of header values")
            headers[name] = [str(v) for v in values]

        return HTTPConfig(
            addr=addr,
            net=net,
            host=host,
            secret=self._str("http.secret", None) or None,
            prefix=prefix,
            relativeurls=self._bool("http.relativeurls", False),
            tls_certificate=cert,
            tls_key=key,
            headers=headers,
        )
