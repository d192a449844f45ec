"""Tests for registry.tap and the twistd plugin: options, endpoint strings, the
service listening for real on 127.0.0.1 (plain and TLS), and ``twistd`` itself
run as a subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import pytest_twisted
import treq
from twisted.application.service import Application, IService
from twisted.internet import reactor, ssl
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.internet.endpoints import UNIXClientEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from registry.bench.servers import free_port
from registry.app import Listener, RegistryApplication
from registry.config import Config, HTTPConfig
from registry.tap import Options, RegistryService, endpoint_description, makeService

REPO = Path(__file__).resolve().parent.parent
TWISTD = Path(sys.executable).parent / "twistd"


def write_config(path: Path, root: Path, port: int, extra: str = "") -> Path:
    path.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n{extra}"
    )
    return path


def parse(args: list[str], environ: dict[str, str] | None = None) -> Options:
    options = Options(environ=environ or {})
    options.parseOptions(args)
    return options


class StandIn:
    """A tiny application factory: one main listener whose site answers
    ``{}`` at ``/v2/``; remembers the config it got."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def __call__(self, config: Config, reactor_: Any, *, listen: str | None = None, access: Any = None) -> RegistryApplication:
        self.configs.append(config)
        v2 = Resource()
        v2.putChild(b"", Data(b"{}", "application/json"))
        root = Resource()
        root.putChild(b"v2", v2)
        site = Site(root)
        site.log = lambda request: None  # type: ignore[method-assign]
        return RegistryApplication(root, [Listener("main", listen or endpoint_description(config.http), site)])


# --- options -----------------------------------------------------------------


def test_no_options_uses_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    options = parse([])
    config: Config = options["registry_config"]
    assert config.http.addr == "127.0.0.1:5000"
    assert config.storage.params["rootdirectory"] == str(tmp_path / "var" / "registry")
    assert options["listen"] is None and options["config"] is None


def test_config_file_and_environment_overrides(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", tmp_path / "data", 6001)
    config = parse(["--config", str(path)], {"REGISTRY_STORAGE_DELETE_ENABLED": "true"})["registry_config"]
    assert (config.http.addr, config.storage.delete_enabled) == ("127.0.0.1:6001", True)
    assert config.storage.params["rootdirectory"] == str(tmp_path / "data")


def test_configuration_path_variable_and_option_precedence(tmp_path: Path) -> None:
    a = write_config(tmp_path / "a.yml", tmp_path, 6002)
    b = write_config(tmp_path / "b.yml", tmp_path, 6003)
    env = {"REGISTRY_CONFIGURATION_PATH": str(a)}
    assert parse([], env)["registry_config"].http.addr == "127.0.0.1:6002"
    assert parse(["-c", str(b)], env)["registry_config"].http.addr == "127.0.0.1:6003"


@pytest.mark.parametrize(
    "args,env,expected",
    [
        (["--config", "/nonexistent/registry.yml"], {}, "--config '/nonexistent/registry.yml': cannot read"),
        ([], {"REGISTRY_CONFIGURATION_PATH": "/nonexistent/r.yml"}, "REGISTRY_CONFIGURATION_PATH '/nonexistent/r.yml'"),
        ([], {"REGISTRY_HTTP_ADDR": "nowhere"}, "http.addr = 'nowhere'"),
        ([], {"REGISTRY_LOG_LEVEL": "chatty"}, "log.level = 'chatty'"),
        (["--listen", "bogus:1234"], {}, "--listen 'bogus:1234': not a valid server endpoint"),
        (["--listen", "tcp:notaport"], {}, "--listen 'tcp:notaport'"),
        ([], {"REGISTRY_HTTP_TLS_CERTIFICATE": "/nonexistent/c.pem", "REGISTRY_HTTP_TLS_KEY": "/nonexistent/k.pem"},
         "http.tls.certificate = '/nonexistent/c.pem': cannot read"),
        ([], {"REGISTRY_HTTP_NET": "unix", "REGISTRY_HTTP_ADDR": "/tmp/r.sock",
              "REGISTRY_HTTP_TLS_CERTIFICATE": "/etc/hostname", "REGISTRY_HTTP_TLS_KEY": "/etc/hostname"},
         "TLS on a unix socket is not supported"),
    ],
)
def test_usage_errors(args: list[str], env: dict[str, str], expected: str) -> None:
    with pytest.raises(usage.UsageError) as e:
        parse(args, env)
    assert expected in str(e.value)


def test_bad_config_file_names_file_key_and_value(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("version: 0.1\nstorage: {filesystem: {}, inmemory: {}}\n")
    with pytest.raises(usage.UsageError) as e:
        parse(["--config", str(path)])
    assert str(path) in str(e.value) and "storage = ['filesystem', 'inmemory']" in str(e.value)


def test_listen_replaces_addr() -> None:
    assert parse(["--listen", "tcp:0:interface=127.0.0.1"])["listen"] == "tcp:0:interface=127.0.0.1"


@pytest.mark.parametrize(
    "http,expected",
    [
        (HTTPConfig(addr="127.0.0.1:5000"), "tcp:5000:interface=127.0.0.1"),
        (HTTPConfig(addr=":5000"), "tcp:5000"),
        (HTTPConfig(addr="localhost:80"), "tcp:80:interface=localhost"),
        (HTTPConfig(addr="[::1]:5000"), "tcp6:5000:interface=\\:\\:1"),
        (HTTPConfig(addr=":5000", net="tcp6"), "tcp6:5000:interface=\\:\\:"),
        (HTTPConfig(addr="/run/a:b.sock", net="unix"), "unix:/run/a\\:b.sock"),
        (HTTPConfig(addr="0.0.0.0:443", tls_certificate="/c=1.pem", tls_key="C:\\k.pem"),
         "ssl:443:certKey=/c\\=1.pem:privateKey=C\\:\\\\k.pem:interface=0.0.0.0"),
    ],
)
def test_endpoint_description(http: HTTPConfig, expected: str) -> None:
    assert endpoint_description(http) == expected


# --- the service, listening for real ----------------------------------------------


@pytest_twisted.inlineCallbacks
def test_service_serves_the_site_on_http_addr(tmp_path: Path) -> None:
    port = free_port()
    stand_in = StandIn()
    options = parse([], {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "REGISTRY_STORAGE": "inmemory"})
    service = makeService(options, app_factory=stand_in)
    assert IService.providedBy(service)
    assert stand_in.configs == [options["registry_config"]]
    service.startService()
    try:
        listening = yield service.when_listening()
        assert listening.getHost().port == port
        response = yield treq.get(f"http://127.0.0.1:{port}/v2/")
        assert response.code == 200
        assert (yield response.content()) == b"{}"
    finally:
        yield service.stopService()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


@pytest_twisted.inlineCallbacks
def test_service_listen_option_wins() -> None:
    options = parse(["--listen", "tcp:0:interface=127.0.0.1"], {"REGISTRY_STORAGE": "inmemory"})
    service = makeService(options, app_factory=StandIn())
    service.startService()
    try:
        listening = yield service.when_listening()
        assert listening.getHost().port not in (0, 5000)
        response = yield treq.get(f"http://127.0.0.1:{listening.getHost().port}/v2/")
        assert response.code == 200
        yield response.content()
    finally:
        yield service.stopService()


@implementer(IAgentEndpointFactory)
class UnixSocketEndpoints:
    def __init__(self, path: Path) -> None:
        self.path = path

    def endpointForURI(self, uri: Any) -> UNIXClientEndpoint:
        return UNIXClientEndpoint(reactor, str(self.path))


@pytest_twisted.inlineCallbacks
def test_service_listens_on_a_unix_socket(tmp_path: Path) -> None:
    sock = tmp_path / "registry.sock"
    options = parse([], {"REGISTRY_HTTP_NET": "unix", "REGISTRY_HTTP_ADDR": str(sock), "REGISTRY_STORAGE": "inmemory"})
    service = makeService(options, app_factory=StandIn())
    service.startService()
    try:
        yield service.when_listening()
        assert sock.is_socket()
        client = treq.client.HTTPClient(Agent.usingEndpointFactory(reactor, UnixSocketEndpoints(sock)))
        response = yield client.get("http://registry/v2/")
        assert response.code == 200
        assert (yield response.content()) == b"{}"
    finally:
        yield service.stopService()


def test_service_refuses_to_start_when_the_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        options = parse([], {"REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}", "REGISTRY_STORAGE": "inmemory"})
        service = makeService(options, app_factory=StandIn())
        with pytest.raises(CannotListenError):
            service.privilegedStartService()
        failure = []
        service.when_listening().addErrback(failure.append)
        assert failure and failure[0].check(CannotListenError)


@pytest.fixture
def certificate(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    yield cert, key


@pytest_twisted.inlineCallbacks
def test_service_speaks_tls_when_configured(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    port = free_port()
    options = parse([], {
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
        "REGISTRY_STORAGE": "inmemory",
        "REGISTRY_HTTP_TLS_CERTIFICATE": str(cert),
        "REGISTRY_HTTP_TLS_KEY": str(key),
    })
    service = makeService(options, app_factory=StandIn())
    service.startService()
    try:
        yield service.when_listening()
        authority = ssl.Certificate.loadPEM(cert.read_bytes())
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=authority))
        client = treq.client.HTTPClient(agent)
        response = yield client.get(f"https://localhost:{port}/v2/")
        assert response.code == 200
        assert (yield response.content()) == b"{}"
        with pytest.raises(Exception):  # plain HTTP on the TLS port is not served
            plain = yield treq.get(f"http://127.0.0.1:{port}/v2/", timeout=5)
            yield plain.content()
    finally:
        yield service.stopService()


def test_service_becomes_the_application_log_observer() -> None:
    options = parse([], {"REGISTRY_STORAGE": "inmemory", "REGISTRY_LOG_FORMATTER": "json"})
    service = makeService(options, app_factory=StandIn())
    assert isinstance(service, RegistryService)
    application = Application("registry")
    service.setServiceParent(application)
    assert application.getComponent(ILogObserver) is service.observer
    assert service in list(IService(application))


# --- twistd, as a subprocess --------------------------------------------------------


def run_twistd(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(TWISTD), *args], cwd=cwd, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def test_twistd_lists_the_plugin(tmp_path: Path) -> None:
    result = run_twistd(["--help"], tmp_path)
    assert result.returncode == 0
    assert "registry" in result.stdout and "Container image registry" in result.stdout
    result = run_twistd(["registry", "--help"], tmp_path)
    assert result.returncode == 0 and "--config" in result.stdout and "--listen" in result.stdout


def test_twistd_refuses_an_invalid_configuration(tmp_path: Path) -> None:
    path = write_config(tmp_path / "c.yml", tmp_path / "data", free_port(), "  prefix: nope\n")
    result = run_twistd(["-n", "--pidfile=", "registry", "--config", str(path)], tmp_path)
    assert result.returncode != 0
    assert "http.prefix = 'nope'" in result.stdout + result.stderr
    result = run_twistd(["-n", "--pidfile=", "registry"], tmp_path, {"REGISTRY_HTTP_ADDR": "127.0.0.1:99999"})
    assert result.returncode != 0
    assert "http.addr = '127.0.0.1:99999'" in result.stdout + result.stderr
    assert "REGISTRY_HTTP_ADDR" in result.stdout + result.stderr


def wait_for_port(port: int, process: subprocess.Popen[str], deadline: float = 60.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            raise AssertionError(f"twistd exited with {process.returncode}: {process.stdout.read() if process.stdout else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listening on 127.0.0.1:{port}")


@pytest.mark.skipif(importlib.util.find_spec("registry.app") is None, reason="registry.app is not written yet")
def test_twistd_runs_the_registry(tmp_path: Path) -> None:
    port = free_port()
    root = tmp_path / "data"
    path = write_config(tmp_path / "config.yml", root, port, "log:\n  formatter: json\nreporting: {bugsnag: {apikey: k}}\n")
    process = subprocess.Popen(
        [str(TWISTD), "-n", "--pidfile=", "registry", "--config", str(path)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, process)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v2/ HTTP/1.1\r\nHost: localhost\r\nUser-Agent: tap-test\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := s.recv(65536):
                reply += chunk
        head = reply.split(b"\r\n\r\n", 1)[0].decode("latin-1").lower()
        assert head.startswith("http/1.1 200")
        assert "docker-distribution-api-version: registry/2.0" in head
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    # twistd's own text observer was replaced: every line is one JSON object.
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]
    assert lines and all(isinstance(line, dict) for line in lines), output
    assert any(line["namespace"] == "registry.tap" and "reporting" in line["message"] and line["level"] == "warn"
               for line in lines), output
    assert any(line["message"] == f"registry listening on 127.0.0.1:{port}" for line in lines), output
    access = [line for line in lines if line["namespace"] == "registry.access"]
    assert access and access[0]["path"] == "/v2/" and access[0]["status"] == 200, output
    assert access[0]["user_agent"] == "tap-test"
    messages = [line["message"] for line in lines if line["namespace"] == "registry.tap"]
    assert messages.index(f"registry listening on 127.0.0.1:{port}") > messages.index(
        "registry starting: storage driver filesystem, delete disabled, read-only no")


# --- the application object the tap runs --------------------------------------------


def test_make_application_wants_the_main_listener_and_purging() -> None:
    from twisted.application.internet import TimerService

    from registry.app import make_application
    from registry.http import RegistrySite

    config = parse([], {"REGISTRY_STORAGE": "inmemory", "REGISTRY_HTTP_ADDR": "127.0.0.1:6100"})["registry_config"]
    app = make_application(config, reactor)
    assert [(l.name, l.endpoint) for l in app.listeners] == [("main", "tcp:6100:interface=127.0.0.1")]
    site = app.listener("main").factory
    assert isinstance(site, RegistrySite) and site.root is app.root
    # The storage driver's lifecycle first (it stops last), then purging.
    from registry.storage.wrapper import DriverService

    assert len(app.services) == 2 and isinstance(app.services[0], DriverService)
    assert isinstance(app.services[1], TimerService) and app.services[1].step == 24 * 3600

    app = make_application(config, reactor, listen="tcp:0:interface=127.0.0.1")
    assert app.listener("main").endpoint == "tcp:0:interface=127.0.0.1"
    for env in ({"REGISTRY_STORAGE_MAINTENANCE_READONLY_ENABLED": "true"},
                {"REGISTRY_STORAGE_MAINTENANCE_UPLOADPURGING_ENABLED": "false"}):
        config = parse([], {"REGISTRY_STORAGE": "inmemory", **env})["registry_config"]
        assert [type(s) for s in make_application(config, reactor).services] == [DriverService]


@pytest_twisted.inlineCallbacks
def test_service_runs_the_application_services_before_its_listeners() -> Any:
    from twisted.application.service import Service

    started: list[str] = []

    class Recorder(Service):
        def startService(self) -> None:
            started.append("service")
            super().startService()

    stand_in = StandIn()

    def factory(config: Config, reactor_: Any, *, listen: str | None = None, access: Any = None) -> RegistryApplication:
        app = stand_in(config, reactor_, listen=listen)
        return RegistryApplication(app.root, app.listeners, [Recorder()])

    options = parse(["--listen", "tcp:0:interface=127.0.0.1"], {"REGISTRY_STORAGE": "inmemory"})
    service = makeService(options, app_factory=factory)
    children = list(service)
    assert isinstance(children[0], Recorder) and len(children) == 2
    service.startService()
    try:
        assert started == ["service"] and children[0].running
        listening: list[Any] = []
        service.when_listening().addCallback(listening.append)
        assert listening, "the main listener binds when the service starts"
    finally:
        yield service.stopService()
    assert not children[0].running


@pytest_twisted.inlineCallbacks
def test_services_stop_after_the_listeners_have_stopped() -> Any:
    from twisted.application.service import Service

    seen: list[bool] = []
    ports: list[Any] = []

    class Recorder(Service):
        def stopService(self) -> None:
            # The storage driver is such a service: nothing may still be
            # accepting requests when it closes.
            seen.append(bool(ports) and bool(getattr(ports[0], "disconnected", False)))
            super().stopService()

    stand_in = StandIn()

    def factory(config: Config, reactor_: Any, *, listen: str | None = None, access: Any = None) -> RegistryApplication:
        app = stand_in(config, reactor_, listen=listen)
        return RegistryApplication(app.root, app.listeners, [Recorder()])

    options = parse(["--listen", "tcp:0:interface=127.0.0.1"], {"REGISTRY_STORAGE": "inmemory"})
    service = makeService(options, app_factory=factory)
    service.startService()
    ports.append((yield service.when_listening()))
    yield service.stopService()
    assert seen == [True]
