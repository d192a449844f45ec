"""Logging for the registry: one ``twisted.logger`` observer, text or JSON, and the access log.

:func:`make_observer` builds the observer the configuration asks for
(``log.level`` threshold, ``log.formatter`` text / json / logstash,
``log.fields`` added to every line -- keys of a JSON line, ``key=value``
after a text line's message, as Distribution's logrus formatters put them
--, ``log.accesslog.disabled``).  Under
``twistd`` the tap installs it as the application's log observer, replacing
twistd's own; elsewhere :func:`setup_logging` adds it to a publisher.

:func:`log_request` emits one event per finished HTTP request in the
``registry.access`` namespace, carrying method, path, status, bytes sent,
duration, client address, user agent and whatever the handler adds
(repository, upload id, blob digest...).  In JSON every structured field is a
key of the line's object; in text the access message itself lists them.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from typing import IO, Any, Mapping

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogPublisher,
    Logger,
    PredicateResult,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import provider

from registry.config import LogConfig

__all__ = [
    "ACCESS_NAMESPACE",
    "format_json_event",
    "format_text_event",
    "log_request",
    "make_observer",
    "setup_logging",
]

#: Namespace of the one-event-per-request access log.
ACCESS_NAMESPACE = "registry.access"

#: Severity order of twisted.logger's levels (its constants are not instances
#: of ``LogLevel`` and carry no public ordering).
_PRIORITY = {
    LogLevel.debug: 0,
    LogLevel.info: 1,
    LogLevel.warn: 2,
    LogLevel.error: 3,
    LogLevel.critical: 4,
}
_THRESHOLDS = {"debug": 0, "info": 1, "warn": 2, "error": 3}

#: Keys the top of a JSON line owns, and legacy ``twisted.python.log`` keys
#: that duplicate what those already say.
_RESERVED = frozenset(
    {"time", "level", "namespace", "message", "traceback", "@timestamp", "@version"}
)
_LEGACY = frozenset({"message", "isError", "system", "format", "time", "failure"})

#: The fields log_request sets itself; extra fields may not replace them.
_ACCESS_FIELDS = (
    "method",
    "path",
    "query",
    "protocol",
    "status",
    "bytes_sent",
    "duration_s",
    "remote_addr",
    "user_agent",
)

_access_log = Logger(namespace=ACCESS_NAMESPACE)


def _timestamp(event: LogEvent) -> str:
    when = datetime.fromtimestamp(event.get("log_time", 0.0), tz=timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _level_name(event: LogEvent) -> str:
    level = event.get("log_level")
    return str(level.name) if level is not None and level in _PRIORITY else "info"


def _message(event: LogEvent) -> str:
    text = formatEvent(event)
    failure = event.get("log_failure")
    if not text and failure is not None:
        text = failure.getErrorMessage()
    return text


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def format_json_event(
    event: LogEvent, static_fields: Mapping[str, Any] | None = None, logstash: bool = False
) -> str:
    """One JSON object and a newline: time, level, namespace, message, and
    every structured field of ``event`` (``log_*`` bookkeeping excluded).

    ``static_fields`` (``log.fields``) come first so an event's own field of
    the same name wins.  With ``logstash`` the time is ``@timestamp`` and
    ``@version`` is ``1``, as Distribution's logstash formatter writes them.
    """
    line: dict[str, Any] = {}
    if logstash:
        line["@timestamp"] = _timestamp(event)
        line["@version"] = "1"
    else:
        line["time"] = _timestamp(event)
    line["level"] = _level_name(event)
    line["namespace"] = event.get("log_namespace", "-")
    line["message"] = _message(event)
    failure = event.get("log_failure")
    if failure is not None:
        line["traceback"] = failure.getTraceback()
    for source in (static_fields or {}), event:
        for key, value in source.items():
            key = str(key)
            if key.startswith("log_") or key in _RESERVED or (source is event and key in _LEGACY):
                continue
            line[key] = value
    try:
        text = json.dumps(line, default=_jsonable, ensure_ascii=False)
    except (TypeError, ValueError):  # e.g. a dict with tuple keys inside a field
        text = json.dumps({k: v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)
                           for k, v in line.items()}, ensure_ascii=False)
    return text + "\n"


def _text_field(key: object, value: object) -> str:
    text = _printable(value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value))
    if not text or any(c in text for c in ' "=\\'):
        text = json.dumps(text, ensure_ascii=False)
    return f" {_printable(str(key))}={text}"


def format_text_event(event: LogEvent, static_fields: Mapping[str, Any] | None = None) -> str:
    """``<time> <level> [<namespace>] <message>``, then `` key=value`` per
    static field (``log.fields``; a value with a space, quote or ``=`` is
    quoted) and a newline, then a traceback when the event carries a
    failure."""
    fields = "".join(_text_field(k, v) for k, v in (static_fields or {}).items())
    text = (
        f"{_timestamp(event)} {_level_name(event):<5} "
        f"[{event.get('log_namespace', '-')}] {_message(event)}{fields}\n"
    )
    failure = event.get("log_failure")
    if failure is not None:
        text += failure.getTraceback()
        if not text.endswith("\n"):
            text += "\n"
    return text


def make_observer(log_config: LogConfig, out: IO[Any] | None = None) -> ILogObserver:
    """The observer ``log_config`` asks for, writing lines to ``out`` (default stdout).

    Events below ``log_config.level`` are dropped; so is the access log when
    ``log_config.accesslog_disabled``.
    """
    threshold = _THRESHOLDS[log_config.level]
    formatter = log_config.formatter
    static_fields = dict(log_config.fields)

    def format_event(event: LogEvent) -> str:
        if formatter == "text":
            return format_text_event(event, static_fields)
        return format_json_event(event, static_fields, logstash=formatter == "logstash")

    @provider(ILogFilterPredicate)
    def wanted(event: LogEvent) -> PredicateResult:
        if _PRIORITY.get(event.get("log_level"), 1) < threshold:
            return PredicateResult.no
        if log_config.accesslog_disabled and event.get("log_namespace") == ACCESS_NAMESPACE:
            return PredicateResult.no
        return PredicateResult.maybe

    return FilteringLogObserver(FileLogObserver(out if out is not None else sys.stdout, format_event), [wanted])


def setup_logging(
    log_config: LogConfig, out: IO[Any] | None = None, publisher: LogPublisher | None = None
) -> ILogObserver:
    """Add :func:`make_observer`'s observer to ``publisher`` (default: the
    global one) and return it, so the caller can ``removeObserver`` it."""
    observer = make_observer(log_config, out)
    (publisher if publisher is not None else globalLogPublisher).addObserver(observer)
    return observer


def _printable(text: str) -> str:
    """Escape control characters so one request stays one text line."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _decode(value: bytes | str | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    return _printable(value)


def log_request(
    request: Any, duration_s: float, fields: Mapping[str, Any] | None = None, logger: Logger | None = None
) -> None:
    """Emit the access-log event for a finished ``twisted.web`` request.

    ``fields`` adds what the handler knows (``repository``, ``upload_id``,
    ``digest``, ...); names that clash with the standard fields or start
    with ``log_`` are kept under ``extra_<name>``.  Responses with status 500
    and above are logged at error level, the rest at info.
    """
    uri = _decode(request.uri)
    path, _, query = uri.partition("?")
    address = request.getClientAddress()
    remote = getattr(address, "host", None) or getattr(address, "name", None) or str(address)
    status = int(request.code)
    event: dict[str, Any] = {
        "method": _decode(request.method),
        "path": path,
        "status": status,
        "bytes_sent": int(request.sentLength),
        "duration_s": round(float(duration_s), 6),
        "remote_addr": _decode(remote),
        "user_agent": _decode(request.getHeader(b"user-agent")),
        "protocol": _decode(request.clientproto),
    }
    if query:
        event["query"] = query
    extra_format = ""
    for key, value in (fields or {}).items():
        key = str(key)
        if key in event or key in _ACCESS_FIELDS or key.startswith("log_") or key in _RESERVED:
            key = f"extra_{key}"
        event[key] = value
        if key.isidentifier():
            extra_format += f" {key}={{{key}}}"
    log_format = (
        '{method} {path} {status} {bytes_sent}B {duration_s:.3f}s {remote_addr} "{user_agent}"' + extra_format
    )
    target = logger if logger is not None else _access_log
    level = LogLevel.error if status >= 500 else LogLevel.info
    target.emit(level, log_format, **event)
