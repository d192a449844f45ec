"""Tests for registry.config: Distribution's keys, REGISTRY_* overrides, errors, warnings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import pytest

from registry.config import (
    DEFAULT_CONFIG_YAML,
    Config,
    ConfigError,
    UploadPurgingConfig,
    load_config,
    load_config_file,
    parse_addr,
    parse_go_duration,
)

BASE = "/srv/base"


def load(text: str | None, env: dict[str, str] | None = None) -> Config:
    return load_config(text, env or {}, base_dir=BASE)


MINIMAL = """\
version: 0.1
storage:
  filesystem:
    rootdirectory: /data
"""

# A realistic Distribution config.yml: the keys this registry implements and
# many it does not (auth, notifications, redis, health, cache, debug, ...).
DISTRIBUTION_CONFIG = """\
version: 0.1
log:
  accesslog:
    disabled: false
  level: debug
  formatter: json
  fields:
    service: registry
    environment: staging
  hooks:
    - type: mail
      disabled: true
      levels:
        - panic
storage:
  filesystem:
    rootdirectory: /var/lib/registry
    maxthreads: 100
  delete:
    enabled: true
  cache:
    blobdescriptor: redis
  maintenance:
    uploadpurging:
      enabled: true
      age: 168h
      interval: 24h
      dryrun: false
    readonly:
      enabled: false
  redirect:
    disable: false
auth:
  htpasswd:
    realm: basic-realm
    path: /path/to/htpasswd
middleware:
  registry:
    - name: ARegistryMiddleware
      options:
        foo: bar
reporting:
  bugsnag:
    apikey: bugsnagapikey
http:
  addr: localhost:5000
  prefix: /my/nested/registry/
  host: https://myregistryaddress.org:5000
  secret: asecretforlocaldevelopment
  relativeurls: false
  draintimeout: 60s
  tls:
    certificate: /path/to/x509/public
    key: /path/to/x509/private
    clientcas:
      - /path/to/ca.pem
    minimumtls: tls1.2
  debug:
    addr: localhost:5001
    prometheus:
      enabled: true
      path: /metrics
  headers:
    X-Content-Type-Options: [nosniff]
    Strict-Transport-Security: max-age=31536000
  http2:
    disabled: false
notifications:
  events:
    includereferences: true
  endpoints:
    - name: alistener
      disabled: false
      url: https://my.listener.com/event
      headers: {Authorization: [Bearer <your token>]}
      timeout: 1s
      threshold: 10
      backoff: 1s
redis:
  addr: localhost:6379
  password: asecret
  db: 0
  dialtimeout: 10ms
  pool:
    maxidle: 16
health:
  storagedriver:
    enabled: true
    interval: 10s
    threshold: 3
proxy:
  remoteurl: https://registry-1.docker.io
validation:
  manifests:
    urls:
      allow:
        - ^https?://([^/]+\\.)*example\\.com/
catalog:
  maxentries: 100
"""


# --- defaults and a full Distribution file ----------------------------------


def test_embedded_default() -> None:
    config = load(None)
    assert config.version == "0.1"
    assert config.storage.driver == "filesystem"
    assert config.storage.params == {"rootdirectory": os.path.join(BASE, "var/registry")}
    assert config.storage.delete_enabled is False
    assert config.storage.readonly is False
    assert config.storage.uploadpurging == UploadPurgingConfig(enabled=True, age=168 * 3600, interval=24 * 3600, dryrun=False)
    assert config.http.addr == "127.0.0.1:5000"
    assert config.http.net == "tcp"
    assert config.http.host is None
    assert config.http.secret is None
    assert config.http.prefix == "/"
    assert config.http.tls_certificate is None and config.http.tls_key is None
    assert config.log.level == "info" and config.log.formatter == "text"
    assert config.warnings == []
    assert config.raw["storage"]["filesystem"]["rootdirectory"] == "./var/registry"


def test_default_root_is_absolute_from_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(None, {})
    assert config.storage.params["rootdirectory"] == str(tmp_path / "var" / "registry")
    assert DEFAULT_CONFIG_YAML.startswith("version: 0.1")


def test_distribution_config_works_with_warnings_for_the_rest() -> None:
    config = load(DISTRIBUTION_CONFIG)
    assert config.log.level == "debug"
    assert config.log.formatter == "json"
    assert dict(config.log.fields) == {"service": "registry", "environment": "staging"}
    assert config.log.accesslog_disabled is False
    assert config.storage.driver == "filesystem"
    assert config.storage.params == {"rootdirectory": "/var/lib/registry", "maxthreads": 100}
    assert config.storage.delete_enabled is True
    assert config.storage.readonly is False
    assert config.storage.redirect_disable is False
    assert config.storage.uploadpurging == UploadPurgingConfig(enabled=True, age=168 * 3600, interval=24 * 3600, dryrun=False)
    assert config.http.addr == "localhost:5000"
    assert config.http.prefix == "/my/nested/registry/"
    assert config.http.host == "https://myregistryaddress.org:5000"
    assert config.http.secret == "asecretforlocaldevelopment"
    assert config.http.tls_certificate == "/path/to/x509/public"
    assert config.http.tls_key == "/path/to/x509/private"
    assert config.http.tls_clientcas == ("/path/to/ca.pem",)
    assert config.http.tls_minimumtls == "tls1.2"
    assert config.auth.htpasswd is not None and config.auth.token is None
    assert config.auth.controller_params() == {"htpasswd": {"realm": "basic-realm", "path": "/path/to/htpasswd"}}
    assert config.http.headers == {
        "X-Content-Type-Options": ["nosniff"],
        "Strict-Transport-Security": ["max-age=31536000"],
    }
    # redis and storage.cache are implemented (shared upload locks, the blob-descriptor cache).
    assert config.storage.cache_blobdescriptor == "redis"
    assert config.redis is not None
    assert (config.redis.addr, config.redis.password, config.redis.db) == ("localhost:6379", "asecret", 0)
    assert (config.redis.dialtimeout, config.redis.readtimeout, config.redis.pool_maxidle) == (0.01, 5.0, 16)
    warned = {w.split(":")[0].removeprefix("configuration key ") for w in config.warnings}
    assert warned == {
        "log.hooks",
        "middleware",
        "reporting",
        "http.draintimeout",
        "http.http2",
        "validation.manifests.urls",  # validation itself is implemented (verifylayers)
        "catalog",
    }
    assert all("not supported by this registry; ignored" in w for w in config.warnings)
    assert config.proxy.remoteurl == "https://registry-1.docker.io"


def test_every_supported_key() -> None:
    config = load(
        """\
version: "0.1"
log:
  level: WARN
  formatter: logstash
  fields: {service: r}
  accesslog: {disabled: true}
storage:
  s3:
    region: us-east-1
    bucket: b
  delete: {enabled: true}
  maintenance:
    readonly: {enabled: true}
    uploadpurging: {enabled: false, age: 1h30m, interval: 10m, dryrun: true}
http:
  net: tcp6
  addr: "[::1]:6000"
  host: http://reg.example/
  secret: "s3cret"
  prefix: /reg
  relativeurls: true
  tls: {certificate: c.pem, key: k.pem}
  headers: {X-A: one, X-B: [two, three]}
"""
    )
    assert (config.log.level, config.log.formatter) == ("warn", "logstash")
    assert dict(config.log.fields) == {"service": "r"}
    assert config.log.accesslog_disabled is True
    assert config.storage.driver == "s3"
    assert config.storage.params == {"region": "us-east-1", "bucket": "b"}
    assert config.storage.delete_enabled is True
    assert config.storage.readonly is True
    assert config.storage.uploadpurging == UploadPurgingConfig(enabled=False, age=5400, interval=600, dryrun=True)
    assert config.http.net == "tcp6"
    assert config.http.addr == "[::1]:6000"
    assert config.http.host == "http://reg.example"
    assert config.http.secret == "s3cret"
    assert config.http.prefix == "/reg/"
    assert config.http.relativeurls is True
    assert (config.http.tls_certificate, config.http.tls_key) == ("c.pem", "k.pem")
    assert config.http.headers == {"X-A": ["one"], "X-B": ["two", "three"]}
    assert config.warnings == []


def test_storage_shorthand_and_null_driver_params() -> None:
    assert load("version: 0.1\nstorage: inmemory\n").storage.driver == "inmemory"
    config = load("version: 0.1\nstorage:\n  inmemory:\n  delete:\n    enabled: yes\n")
    assert (config.storage.driver, config.storage.params, config.storage.delete_enabled) == ("inmemory", {}, True)


def test_relative_and_home_root_directories() -> None:
    rel = load("version: 0.1\nstorage: {filesystem: {rootdirectory: data/reg}}\n")
    assert rel.storage.params["rootdirectory"] == "/srv/base/data/reg"
    home = load("version: 0.1\nstorage: {filesystem: {rootdirectory: ~/reg}}\n")
    assert home.storage.params["rootdirectory"] == os.path.expanduser("~/reg")


def test_deprecated_loglevel_and_precedence() -> None:
    assert load(MINIMAL + "loglevel: debug\n").log.level == "debug"
    assert load(MINIMAL + "loglevel: debug\nlog: {level: error}\n").log.level == "error"


def test_file_without_http_section_uses_loopback_5000() -> None:
    config = load(MINIMAL)
    assert config.http.addr == "127.0.0.1:5000"
    assert config.storage.params == {"rootdirectory": "/data"}


def test_load_config_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text(MINIMAL + "http: {addr: ':7000'}\n")
    config = load_config_file(path, {"REGISTRY_LOG_LEVEL": "error"})
    assert (config.http.addr, config.log.level) == (":7000", "error")
    with pytest.raises(OSError):
        load_config_file(tmp_path / "missing.yml", {})
    bad = tmp_path / "bad.yml"
    bad.write_text("version: 0.1\nstorage: [\n")
    with pytest.raises(ConfigError) as e:
        load_config_file(bad, {})
    assert str(bad) in str(e.value) and "not valid YAML" in str(e.value)


# --- environment overrides ---------------------------------------------------

Getter = Callable[[Config], Any]

OVERRIDES: list[tuple[str, str, Getter, Any]] = [
    ("REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY", "/x", lambda c: c.storage.params["rootdirectory"], "/x"),
    ("REGISTRY_HTTP_ADDR", "127.0.0.1:6000", lambda c: c.http.addr, "127.0.0.1:6000"),
    ("REGISTRY_HTTP_ADDR", ":5001", lambda c: c.http.addr, ":5001"),
    ("REGISTRY_STORAGE_DELETE_ENABLED", "true", lambda c: c.storage.delete_enabled, True),
    ("REGISTRY_STORAGE_DELETE_ENABLED", "True", lambda c: c.storage.delete_enabled, True),
    ("REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED", "true", lambda c: c.storage.readonly, True),
    ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "2h", lambda c: c.storage.uploadpurging.age, 7200),
    ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED", "false",
     lambda c: c.storage.uploadpurging.enabled, False),
    ("REGISTRY_LOG_LEVEL", "debug", lambda c: c.log.level, "debug"),
    ("REGISTRY_LOG_FORMATTER", "json", lambda c: c.log.formatter, "json"),
    ("REGISTRY_LOG_FIELDS_SERVICE", "registry", lambda c: dict(c.log.fields), {"service": "registry"}),
    ("REGISTRY_LOG_ACCESSLOG_DISABLED", "true", lambda c: c.log.accesslog_disabled, True),
    ("REGISTRY_HTTP_HOST", "https://r.example", lambda c: c.http.host, "https://r.example"),
    ("REGISTRY_HTTP_SECRET", "0123", lambda c: c.http.secret, "0123"),  # text kept, not YAML octal
    ("REGISTRY_HTTP_SECRET", "true", lambda c: c.http.secret, "true"),
    ("REGISTRY_HTTP_PREFIX", "/r/", lambda c: c.http.prefix, "/r/"),
    ("REGISTRY_HTTP_RELATIVEURLS", "true", lambda c: c.http.relativeurls, True),
    ("REGISTRY_VERSION", "0.1", lambda c: c.version, "0.1"),
    ("REGISTRY_STORAGE", "inmemory", lambda c: (c.storage.driver, c.storage.params), ("inmemory", {})),
]


@pytest.mark.parametrize("name,value,get,expected", OVERRIDES)
def test_override(name: str, value: str, get: Getter, expected: Any) -> None:
    config = load(None, {name: value})
    assert get(config) == expected
    assert config.warnings == []


def test_tls_overrides_need_both() -> None:
    with pytest.raises(ConfigError) as e:
        load(None, {"REGISTRY_HTTP_TLS_CERTIFICATE": "/c"})
    assert "http.tls.key" in str(e.value)
    config = load(None, {"REGISTRY_HTTP_TLS_CERTIFICATE": "/c", "REGISTRY_HTTP_TLS_KEY": "/k"})
    assert (config.http.tls_certificate, config.http.tls_key) == ("/c", "/k")


def test_unix_socket_override() -> None:
    config = load(None, {"REGISTRY_HTTP_NET": "unix", "REGISTRY_HTTP_ADDR": "/run/registry.sock"})
    assert (config.http.net, config.http.addr) == ("unix", "/run/registry.sock")


def test_storage_switch_is_applied_before_its_parameters() -> None:
    # A dict keeps insertion order: give the specific variable first on purpose.
    env = {"REGISTRY_STORAGE_S3_REGION": "eu-west-1", "REGISTRY_STORAGE": "s3"}
    config = load(MINIMAL + "  delete: {enabled: true}\n", env)
    assert config.storage.driver == "s3"
    assert config.storage.params == {"region": "eu-west-1"}
    # As in Distribution, REGISTRY_STORAGE replaces the whole storage section.
    assert config.storage.delete_enabled is False
    config = load(MINIMAL, {**env, "REGISTRY_STORAGE_DELETE_ENABLED": "true"})
    assert config.storage.delete_enabled is True


def test_override_matches_existing_keys_case_insensitively() -> None:
    text = "version: 0.1\nstorage:\n  s3:\n    regionEndpoint: http://a\n"
    config = load(text, {"REGISTRY_STORAGE_S3_REGIONENDPOINT": "http://b"})
    assert config.storage.params == {"regionEndpoint": "http://b"}


def test_override_fills_a_null_section_and_adds_params() -> None:
    text = "version: 0.1\nstorage:\n  filesystem:\n"
    config = load(text, {"REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": "/y", "REGISTRY_STORAGE_FILESYSTEM_MAXTHREADS": "50"})
    assert config.storage.params == {"rootdirectory": "/y", "maxthreads": 50}


def test_override_values_are_yaml_scalars_and_land_in_raw() -> None:
    config = load(None, {"REGISTRY_STORAGE_FILESYSTEM_MAXTHREADS": "30", "REGISTRY_LOG_FIELDS_LIST": "[a, b]"})
    assert config.storage.params["maxthreads"] == 30
    assert config.log.fields["list"] == ["a", "b"]
    assert config.raw["storage"]["filesystem"]["maxthreads"] == 30


def test_configuration_path_variable_is_not_an_override() -> None:
    config = load(None, {"REGISTRY_CONFIGURATION_PATH": "/etc/registry.yml", "OTHER": "1"})
    assert config.warnings == []


def test_unknown_override_warns_with_key_and_variable() -> None:
    # (redis is implemented now; reporting is a Distribution section this registry ignores)
    config = load(None, {"REGISTRY_HTTP_ADRESS": ":1", "REGISTRY_REPORTING_BUGSNAG_APIKEY": "k", "REGISTRY__X": "1"})
    assert "configuration key http.adress: unknown key; ignored (set by environment variable REGISTRY_HTTP_ADRESS)" in config.warnings
    assert any(w.startswith("configuration key reporting: not supported") and "REGISTRY_REPORTING_BUGSNAG_APIKEY" in w
               for w in config.warnings)
    assert any("REGISTRY__X" in w for w in config.warnings)
    assert config.http.addr == "127.0.0.1:5000"


def test_unknown_file_keys_warn_with_full_dotted_key() -> None:
    config = load(MINIMAL + "  delete: {enable: true}\nhttp: {adress: x, tls: {cert: y}}\nfoo: 1\n7: seven\n")
    assert config.warnings == [
        "configuration key storage.delete.enable: unknown key; ignored",
        "configuration key http.adress: unknown key; ignored",
        "configuration key http.tls.cert: unknown key; ignored",
        "configuration key foo: unknown key; ignored",
        "configuration key 7: unknown key; ignored",
    ]
    assert config.storage.delete_enabled is False


# --- invalid values ------------------------------------------------------------

INVALID: list[tuple[str, str, object]] = [
    # (document, key named, value named)
    ("storage: inmemory\n", "version", None),
    ("version: 0.2\nstorage: inmemory\n", "version", 0.2),
    ("version: 1\nstorage: inmemory\n", "version", 1),
    ("version: abc\nstorage: inmemory\n", "version", "abc"),
    (MINIMAL + "log: {level: verbose}\n", "log.level", "verbose"),
    (MINIMAL + "loglevel: loud\n", "loglevel", "loud"),
    (MINIMAL + "log: {formatter: xml}\n", "log.formatter", "xml"),
    (MINIMAL + "log: {fields: [a]}\n", "log.fields", ["a"]),
    (MINIMAL + "log: {accesslog: {disabled: nope}}\n", "log.accesslog.disabled", "nope"),
    (MINIMAL + "log: verbose\n", "log", "verbose"),
    ("version: 0.1\n", "storage", None),
    ("version: 0.1\nstorage: {delete: {enabled: true}}\n", "storage", {"delete": {"enabled": True}}),
    ("version: 0.1\nstorage: {filesystem: {}, s3: {}}\n", "storage", ["filesystem", "s3"]),
    ("version: 0.1\nstorage: [filesystem]\n", "storage", ["filesystem"]),
    ("version: 0.1\nstorage: {filesystem: /data}\n", "storage.filesystem", "/data"),
    ("version: 0.1\nstorage: {filesystem: {rootdirectory: ''}}\n", "storage.filesystem.rootdirectory", ""),
    (MINIMAL + "  delete: {enabled: maybe}\n", "storage.delete.enabled", "maybe"),
    (MINIMAL + "  delete: true\n", "storage.delete", True),
    (MINIMAL + "  maintenance: {readonly: {enabled: 1}}\n", "storage.maintenance.readonly.enabled", 1),
    (MINIMAL + "  maintenance: {uploadpurging: {age: 7 days}}\n", "storage.maintenance.uploadpurging.age", "7 days"),
    (MINIMAL + "  maintenance: {uploadpurging: {interval: 24}}\n", "storage.maintenance.uploadpurging.interval", 24),
    (MINIMAL + "  maintenance: {uploadpurging: {dryrun: sure}}\n", "storage.maintenance.uploadpurging.dryrun", "sure"),
    (MINIMAL + "http: {addr: localhost}\n", "http.addr", "localhost"),
    (MINIMAL + "http: {addr: ':http'}\n", "http.addr", ":http"),
    (MINIMAL + "http: {addr: '1.2.3.4:70000'}\n", "http.addr", "1.2.3.4:70000"),
    (MINIMAL + "http: {addr: '[nothex]:5000'}\n", "http.addr", "[nothex]:5000"),
    (MINIMAL + "http: {addr: 'bad host:5000'}\n", "http.addr", "bad host:5000"),
    (MINIMAL + "http: {addr: 5000}\n", "http.addr", 5000),
    (MINIMAL + "http: {net: udp}\n", "http.net", "udp"),
    (MINIMAL + "http: {net: unix}\n", "http.addr", None),
    (MINIMAL + "http: {host: registry.example.com}\n", "http.host", "registry.example.com"),
    (MINIMAL + "http: {host: 'ftp://r.example'}\n", "http.host", "ftp://r.example"),
    (MINIMAL + "http: {prefix: registry/}\n", "http.prefix", "registry/"),
    (MINIMAL + "http: {secret: [a]}\n", "http.secret", ["a"]),
    (MINIMAL + "http: {relativeurls: sometimes}\n", "http.relativeurls", "sometimes"),
    (MINIMAL + "http: {tls: {certificate: /c}}\n", "http.tls.key", None),
    (MINIMAL + "http: {tls: {key: /k}}\n", "http.tls.certificate", None),
    (MINIMAL + "http: {tls: /c}\n", "http.tls", "/c"),
    (MINIMAL + "http: {headers: {X-A: {a: b}}}\n", "http.headers.X-A", {"a": "b"}),
    ("- version\n", "(document)", "<embedded default>"),
    ("version: [\n", "(document)", "<embedded default>"),
]


@pytest.mark.parametrize("text,key,value", INVALID)
def test_invalid_value_names_key_and_value(text: str, key: str, value: object) -> None:
    with pytest.raises(ConfigError) as e:
        load(text)
    assert e.value.key == key
    assert e.value.value == value
    message = str(e.value)
    assert f"{key} = {value!r}" in message
    assert e.value.source is None


@pytest.mark.parametrize(
    "name,value,key",
    [
        ("REGISTRY_HTTP_ADDR", "nope", "http.addr"),
        ("REGISTRY_LOG_LEVEL", "loud", "log.level"),
        ("REGISTRY_STORAGE_DELETE_ENABLED", "perhaps", "storage.delete.enabled"),
        ("REGISTRY_VERSION", "0.3", "version"),
        ("REGISTRY_LOG_LEVEL", "[unclosed", "log.level"),
        ("REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_AGE", "soon", "storage.maintenance.uploadpurging.age"),
    ],
)
def test_invalid_override_names_the_variable(name: str, value: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, {name: value})
    message = str(e.value)
    assert key in message and value in message
    assert f"(set by environment variable {name})" in message


def test_invalid_value_inside_a_section_replaced_by_a_variable() -> None:
    with pytest.raises(ConfigError) as e:
        load(None, {"REGISTRY_STORAGE": "{filesystem: {}, s3: {}}"})
    assert e.value.key == "storage" and e.value.source == "REGISTRY_STORAGE"


# --- helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "addr,expected",
    [
        ("127.0.0.1:5000", ("127.0.0.1", 5000)),
        (":5000", ("", 5000)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:443", ("::1", 443)),
        ("[::]:80", ("::", 80)),
        ("registry-1.example.com:65535", ("registry-1.example.com", 65535)),
    ],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected


@pytest.mark.parametrize("addr", ["", "5000", "::1:5000", "host:", "host:-1", "host:65536", "[::1]", "-bad:1", "a_b:1"])
def test_parse_addr_rejects(addr: str) -> None:
    with pytest.raises(ValueError):
        parse_addr(addr)


@pytest.mark.parametrize(
    "text,seconds",
    [("0", 0.0), ("168h", 604800.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("10ms", 0.01), ("2us", 2e-6),
     ("-1m", -60.0), ("3\u00b5s", 3e-6)],
)
def test_parse_go_duration(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "h", "1h 30m", "1.2.3s", "-"])
def test_parse_go_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_go_duration(text)


def test_override_list_elements_by_index() -> None:
    text = MINIMAL + "notifications:\n  endpoints:\n    - name: a\n      url: http://a\n"
    env = {
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_0_URL": "http://changed",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_1_NAME": "b",
        "REGISTRY_NOTIFICATIONS_ENDPOINTS_5_NAME": "too far",
    }
    config = load(text, env)
    assert config.raw["notifications"]["endpoints"] == [
        {"name": "a", "url": "http://changed"},
        {"name": "b"},
    ]
    assert any("REGISTRY_NOTIFICATIONS_ENDPOINTS_5_NAME" in w and "no element 5" in w for w in config.warnings)


# --- declaring a section ---------------------------------------------------------


def test_a_new_section_is_one_declaration() -> None:
    """The shape ``auth.htpasswd: {realm, path}`` will take: declared once, it
    gets defaults, validation, env overrides kept as text, and key warnings."""
    from dataclasses import dataclass

    from registry.config import ConfigError, _Loader, _schema_of, _string_keys_of, section, string

    @dataclass(frozen=True)
    class HtpasswdConfig:
        realm: str = string("Registry Realm")
        path: str = string(None, required=True)

    @dataclass(frozen=True)
    class AuthConfig:
        IGNORED = ("token",)
        htpasswd: HtpasswdConfig | None = section(HtpasswdConfig, optional=True)

    assert _schema_of(AuthConfig) == {"htpasswd": {"realm": "leaf", "path": "leaf"}, "token": "ignored"}
    assert _string_keys_of(AuthConfig, "auth.") == {"auth.htpasswd.realm", "auth.htpasswd.path"}

    def read(tree: dict[str, Any], env: dict[str, str] | None = None) -> tuple[AuthConfig, list[str]]:
        loader = _Loader(tree, env or {}, BASE)
        loader.string_keys = frozenset(_string_keys_of(AuthConfig, "auth."))
        loader._apply_environment()
        loader._check_keys(loader.tree.get("auth", {}), _schema_of(AuthConfig), ["auth"])
        return loader._section(AuthConfig, "auth"), loader.warnings

    assert read({}) == (AuthConfig(htpasswd=None), [])
    config, warnings = read({"auth": {"htpasswd": {"path": "/etc/htpasswd"}, "token": {}, "x": 1}})
    assert config.htpasswd == HtpasswdConfig(realm="Registry Realm", path="/etc/htpasswd")
    assert warnings == [
        "configuration key auth.token: not supported by this registry; ignored",
        "configuration key auth.x: unknown key; ignored",
    ]
    config, _ = read({"auth": {"htpasswd": {"path": "/p"}}}, {"REGISTRY_AUTH_HTPASSWD_REALM": "0123"})
    assert config.htpasswd is not None and config.htpasswd.realm == "0123"
    with pytest.raises(ConfigError) as e:
        read({"auth": {"htpasswd": {"realm": "r"}}})
    assert (e.value.key, e.value.value) == ("auth.htpasswd.path", None)
    with pytest.raises(ConfigError) as e:
        read({"auth": {"htpasswd": "yes"}})
    assert (e.value.key, e.value.value, e.value.message) == ("auth.htpasswd", "yes", "must be a mapping")


# --- auth and TLS ---------------------------------------------------------------


def test_auth_sections_from_file_and_environment() -> None:
    config = load(None, {"REGISTRY_AUTH_HTPASSWD_PATH": "/etc/registry/htpasswd", "REGISTRY_AUTH_HTPASSWD_REALM": "0123"})
    assert config.warnings == []
    assert config.auth.controller_params() == {"htpasswd": {"realm": "0123", "path": "/etc/registry/htpasswd"}}
    token = load(MINIMAL + "auth:\n  token:\n    realm: https://auth/token\n    service: reg\n    issuer: iss\n"
                 "    rootcertbundle: /b.pem\n    autoredirect: true\n    signingalgorithms: [ES256, RS256]\n")
    assert token.auth.controller_params() == {"token": {
        "realm": "https://auth/token", "service": "reg", "issuer": "iss", "rootcertbundle": "/b.pem",
        "autoredirect": True, "signingalgorithms": ["ES256", "RS256"]}}
    assert load(None).auth.controller_params() == {}


@pytest.mark.parametrize(
    "text, key, message",
    [
        ("auth:\n  htpasswd:\n    realm: r\n", "auth.htpasswd.path", "required"),
        ("auth:\n  token:\n    realm: r\n    service: s\n    issuer: i\n", "auth.token.rootcertbundle", "required"),
        ("auth:\n  htpasswd: {path: /p}\n  token: {realm: r, service: s, issuer: i, jwks: /j}\n", "auth.token",
         "exactly one access controller"),
        ("http:\n  addr: :5000\n  tls:\n    clientcas: [/ca.pem]\n", "http.tls.clientcas", "needs http.tls.certificate"),
        ("http:\n  addr: :5000\n  tls: {certificate: /c, key: /k, minimumtls: ssl3}\n", "http.tls.minimumtls", "must be one of"),
        ("http:\n  addr: :5000\n  tls: {certificate: /c, key: /k, ciphersuites: [TLS_RC4]}\n", "http.tls.ciphersuites",
         "unknown or unsupported cipher suite"),
    ],
)
def test_auth_and_tls_mistakes_name_the_key(text: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(MINIMAL + text)
    assert info.value.key == key
    assert message in str(info.value)


def test_tls_settings() -> None:
    config = load(MINIMAL + "http:\n  addr: :5000\n  tls:\n    certificate: /c\n    key: /k\n    clientcas: [/a, /b]\n"
                  "    minimumtls: TLS1.3\n    ciphersuites: [TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256]\n")
    settings = config.http.tls_settings()
    assert settings is not None
    assert (settings.certificate, settings.key, settings.clientcas, settings.minimumtls, settings.ciphersuites) == (
        "/c", "/k", ("/a", "/b"), "tls1.3", ("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",))
    assert load(None).http.tls_settings() is None
    env = load(None, {"REGISTRY_HTTP_TLS_CERTIFICATE": "/c", "REGISTRY_HTTP_TLS_KEY": "/k",
                      "REGISTRY_HTTP_TLS_CLIENTCAS": "/a,/b"}).http.tls_settings()
    assert env is not None and env.clientcas == ("/a", "/b")



@pytest.mark.parametrize("version", ["tls1.0", "tls1.1"])
def test_a_minimum_below_tls12_is_allowed_with_a_warning(version: str) -> None:
    config = load(MINIMAL + f"http:\n  addr: :5000\n  tls:\n    certificate: /c\n    key: /k\n    minimumtls: {version}\n")
    assert config.http.tls_minimumtls == version
    [warning] = config.warnings
    assert warning.startswith("configuration key http.tls.minimumtls: ")
    assert "deprecated (RFC 8996)" in warning and "set tls1.2" in warning
    for fine in ("tls1.2", "tls1.3"):
        assert load(MINIMAL + f"http:\n  addr: :5000\n  tls:\n    certificate: /c\n    key: /k\n    minimumtls: {fine}\n").warnings == []

def test_redis_and_cache_keys() -> None:
    config = load(
        """\
version: 0.1
storage:
  inmemory: {}
  cache: {blobdescriptor: INMEMORY}
redis:
  addr: 127.0.0.1:6380
  db: 3
  readtimeout: 2s
  writetimeout: 1s
  pool: {maxidle: 2, maxactive: 8, idletimeout: 60s}
"""
    )
    assert config.storage.cache_blobdescriptor == "inmemory"
    assert config.redis is not None
    assert (config.redis.db, config.redis.readtimeout, config.redis.writetimeout) == (3, 2.0, 1.0)
    assert (config.redis.pool_maxidle, config.redis.pool_maxactive, config.redis.pool_idletimeout) == (2, 8, 60.0)
    assert config.warnings == []
    assert load("version: 0.1\nstorage: inmemory\n").redis is None
    with pytest.raises(ConfigError, match="redis.addr"):
        load("version: 0.1\nstorage: inmemory\nredis: {db: 1}\n")
    with pytest.raises(ConfigError, match="redis.db.*whole number"):
        load("version: 0.1\nstorage: inmemory\nredis: {addr: 'x:1', db: many}\n")
    with pytest.raises(ConfigError, match="storage.cache.blobdescriptor.*one of"):
        load("version: 0.1\nstorage: {inmemory: {}, cache: {blobdescriptor: memcached}}\n")
    env = load("version: 0.1\nstorage: inmemory\n", {"REGISTRY_REDIS_ADDR": "127.0.0.1:7000", "REGISTRY_REDIS_DB": "2"})
    assert env.redis is not None and (env.redis.addr, env.redis.db) == ("127.0.0.1:7000", 2)
