"""Tests for registry.logs: level filtering, text and JSON lines, and the access log
of real requests served by a real Site on 127.0.0.1."""

from __future__ import annotations

import io
import json
import re
import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import LogPublisher, Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from registry.config import LogConfig
from registry.logs import ACCESS_NAMESPACE, format_json_event, log_request, make_observer, setup_logging

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def capture(**log_config: Any) -> tuple[LogPublisher, io.StringIO]:
    publisher = LogPublisher()
    out = io.StringIO()
    setup_logging(LogConfig(**log_config), out=out, publisher=publisher)
    return publisher, out


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_json_line_has_time_level_namespace_message_and_fields() -> None:
    publisher, out = capture(formatter="json")
    Logger(namespace="registry.test", observer=publisher).info(
        "pushed {count} blobs to {repository}", count=3, repository="a/b", raw=b"\xff", tags={"x"}
    )
    assert out.getvalue().count("\n") == 1
    (line,) = json_lines(out)
    assert TIME_RE.match(line.pop("time"))
    assert line == {
        "level": "info",
        "namespace": "registry.test",
        "message": "pushed 3 blobs to a/b",
        "count": 3,
        "repository": "a/b",
        "raw": "\\xff",
        "tags": ["x"],
    }


def test_json_static_fields_and_logstash_layout() -> None:
    publisher, out = capture(formatter="logstash", fields={"service": "registry", "repository": "static"})
    Logger(namespace="n", observer=publisher).warn("w {repository}", repository="dynamic")
    (line,) = json_lines(out)
    assert TIME_RE.match(line["@timestamp"]) and line["@version"] == "1" and "time" not in line
    assert (line["level"], line["service"], line["repository"], line["message"]) == (
        "warn", "registry", "dynamic", "w dynamic")


def test_level_threshold() -> None:
    for level, expected in [
        ("debug", ["debug", "info", "warn", "error", "critical"]),
        ("info", ["info", "warn", "error", "critical"]),
        ("warn", ["warn", "error", "critical"]),
        ("error", ["error", "critical"]),
    ]:
        publisher, out = capture(level=level, formatter="json")
        log = Logger(namespace="n", observer=publisher)
        for method in (log.debug, log.info, log.warn, log.error, log.critical):
            method("m")
        assert [line["level"] for line in json_lines(out)] == expected


def test_text_line_format() -> None:
    publisher, out = capture()
    Logger(namespace="registry.x", observer=publisher).error("disk {state}", state="full")
    text = out.getvalue()
    m = re.match(r"^(\S+) error \[registry\.x\] disk full\n$", text)
    assert m and TIME_RE.match(m.group(1)), text


def test_text_lines_carry_the_static_fields() -> None:
    # log.fields go on every line, in text too (Distribution's logrus text
    # formatter writes them as key=value after the message).
    publisher, out = capture(fields={"service": "registry", "environment": "staging eu"})
    log = Logger(namespace="registry.x", observer=publisher)
    log.info("started")
    log.warn("disk {state}", state="full")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith('] started service=registry environment="staging eu"'), lines[0]
    assert lines[1].endswith('] disk full service=registry environment="staging eu"'), lines[1]


def test_failures_carry_their_traceback() -> None:
    for formatter in ("text", "json"):
        publisher, out = capture(formatter=formatter)
        log = Logger(namespace="n", observer=publisher)
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("while {doing}", doing="dividing")
        text = out.getvalue()
        if formatter == "json":
            (line,) = json_lines(out)
            assert line["level"] == "critical" and line["message"] == "while dividing"
            assert "ZeroDivisionError" in line["traceback"]
        else:
            assert "while dividing" in text and "ZeroDivisionError" in text and "Traceback" in text


def test_unserialisable_field_does_not_lose_the_line() -> None:
    line = json.loads(format_json_event({"log_time": time.time(), "log_format": "x", "odd": {(1, 2): "tuple key"}}))
    assert line["message"] == "x" and "tuple key" in line["odd"]


# --- the access log against a real server ------------------------------------


class Endpoint(Resource):
    """Answers with a fixed status and body, and logs the request when it has finished."""

    isLeaf = True

    def __init__(self, publisher: LogPublisher, status: int, body: bytes, fields: dict[str, Any]) -> None:
        super().__init__()
        self.logger = Logger(namespace=ACCESS_NAMESPACE, observer=publisher)
        self.status = status
        self.body = body
        self.fields = fields
        self.logged: Deferred[None] = Deferred()

    def render(self, request: Request) -> int:
        started = time.monotonic()

        def finished(_: object) -> None:
            log_request(request, time.monotonic() - started, self.fields, logger=self.logger)
            self.logged.callback(None)

        request.notifyFinish().addBoth(finished)
        request.setResponseCode(self.status)
        request.write(self.body)
        request.finish()
        return NOT_DONE_YET


@inlineCallbacks
def serve_one(resource: Endpoint, path: str, **kwargs: Any) -> Any:
    site = Site(resource)
    site.log = lambda request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        response = yield treq.request(
            kwargs.pop("method", "GET"), f"http://127.0.0.1:{port.getHost().port}{path}", **kwargs
        )
        yield response.content()
        yield resource.logged
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_access_log_json_real_request() -> None:
    publisher, out = capture(formatter="json")
    fields = {"repository": "library/alpine", "upload_id": "u-1", "digest": "sha256:" + "a" * 64, "status": "clash"}
    resource = Endpoint(publisher, 201, b"hello", fields)
    yield serve_one(resource, "/v2/library/alpine/blobs/uploads/u-1?digest=sha256%3Aaa", method="PUT",
                    data=b"xyz", headers={"User-Agent": "docker/27.0 test"})
    (line,) = json_lines(out)
    assert line["namespace"] == ACCESS_NAMESPACE and line["level"] == "info"
    assert line["method"] == "PUT"
    assert line["path"] == "/v2/library/alpine/blobs/uploads/u-1"
    assert line["query"] == "digest=sha256%3Aaa"
    assert line["status"] == 201
    assert line["bytes_sent"] == 5
    assert line["remote_addr"] == "127.0.0.1"
    assert line["user_agent"] == "docker/27.0 test"
    assert line["protocol"] == "HTTP/1.1"
    assert isinstance(line["duration_s"], float) and line["duration_s"] >= 0
    assert (line["repository"], line["upload_id"], line["digest"]) == (
        "library/alpine", "u-1", "sha256:" + "a" * 64)
    assert line["extra_status"] == "clash"
    assert line["message"].startswith("PUT /v2/library/alpine/blobs/uploads/u-1 201 5B ")


@pytest_twisted.inlineCallbacks
def test_access_log_text_real_request_and_server_errors() -> None:
    publisher, out = capture()
    resource = Endpoint(publisher, 503, b"", {"repository": "a/b"})
    yield serve_one(resource, "/v2/a/b/blobs/x", headers={"User-Agent": "curl/8"})
    text = out.getvalue()
    assert re.match(
        r'^\S+ error \[registry\.access\] GET /v2/a/b/blobs/x 503 0B \d+\.\d{3}s 127\.0\.0\.1 "curl/8" repository=a/b\n$',
        text,
    ), text


@pytest_twisted.inlineCallbacks
def test_access_log_can_be_disabled() -> None:
    publisher, out = capture(accesslog_disabled=True)
    resource = Endpoint(publisher, 200, b"ok", {})
    yield serve_one(resource, "/v2/")
    Logger(namespace="other", observer=publisher).info("still here")
    assert "registry.access" not in out.getvalue()
    assert "still here" in out.getvalue()


def test_make_observer_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    observer = make_observer(LogConfig(formatter="json"))
    publisher = LogPublisher(observer)
    Logger(namespace="n", observer=publisher).info("to stdout")
    assert json.loads(capsys.readouterr().out)["message"] == "to stdout"
