"""The wire protocol of out-of-process storage drivers.

An executable ``registry-storage-<name>`` serves one ``IStorageDriver`` over
Twisted AMP on its stdin/stdout (``registry.storage.remote.server``);
``registry.storage.drivers.outofprocess`` is the client that spawns it
(through ``registry.storage.remote.supervisor``). This module holds what both
ends share: the protocol version, the AMP commands and the encoding of values
and errors. It imports nothing of either end.

Conversation
------------
1. The client sends ``Hello(major, minor)``; the server answers with its own
   ``major``/``minor``, its driver name and pid. The client refuses a server
   whose major differs or whose minor is older than its own.
2. The client sends ``Configure(params)``: the driver parameters as a JSON
   object (the same dict ``create_driver`` would get in-process). The server
   builds its driver; bad parameters come back as a typed error.
3. Driver calls. Readers and writers are *handles* (integers) in the server,
   released by ``CloseHandle``/``Commit``/``Cancel`` or when the connection is
   lost (the server then closes every open reader and writer, keeping written
   bytes for a later append, and exits).

Sizes
-----
AMP limits every value to 65535 bytes. ``LargeBytes`` spreads a byte string
over several keys of one box (``data`` holds the count, ``data.0``…
``data.N`` the frames of at most ``FRAME_BYTES``), so whole-object calls
(``get_content``/``put_content``) and list/walk answers of any size fit in one
command. Streams move in bounded pieces: one ``Read`` answer or ``Write``
argument carries at most ``STREAM_BYTES``; the client pipelines a few of them.

Errors
------
Every command declares one error, ``StorageFault``, whose description is a
JSON object ``{"kind": ..., "path": ..., "driver": ..., ...}``; it is rebuilt
into the same typed ``StorageError`` on the other side (``PathNotFoundError``
stays ``PathNotFoundError``). Anything else the driver raises crosses as
``DriverError``.

Commands on one handle run strictly in the order they arrived (AMP dispatches
each box as it arrives; ``remote.server.DriverServer`` queues per handle), which is what
lets the client pipeline reads and writes.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.protocols import amp

from registry.storage.driver import (
    DriverError,
    FileInfo,
    InvalidOffsetError,
    InvalidPathError,
    PathNotFoundError,
    StorageError,
)

#: Protocol version. Bump the minor for additions a newer server may offer
#: (an older client ignores them); bump the major for anything incompatible.
PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0

#: Largest single AMP value we send (AMP's hard limit is 65535).
FRAME_BYTES = 60 * 1024
#: Largest payload of one ``Read`` answer or one ``Write`` command.
STREAM_BYTES = 8 * FRAME_BYTES


# --- values -----------------------------------------------------------------


class LargeBytes(amp.Argument):
    """A byte string of any length, spread over several keys of one box.

    ``name`` carries the number of frames as ASCII digits and ``name.<i>``
    the i-th frame (at most ``FRAME_BYTES`` each).
    """

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        count = int(strings[name])
        if count == 1:
            value = strings[name + b".0"]
        else:
            value = b"".join(strings[b"%s.%d" % (name, i)] for i in range(count))
        objects[str(name, "ascii")] = value

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        # Any bytes-like value (a memoryview is framed without a copy first).
        value = objects[str(name, "ascii")]
        if len(value) <= FRAME_BYTES:
            strings[name] = b"1"
            strings[name + b".0"] = value if isinstance(value, bytes) else bytes(value)
            return
        view = memoryview(value).cast("B")
        count = 0
        for start in range(0, len(view), FRAME_BYTES):
            # A view, not a copy: AmpBox.serialize joins the frames into the
            # wire bytes at once (synchronously, while ``value`` is alive).
            strings[b"%s.%d" % (name, count)] = view[start : start + FRAME_BYTES]  # type: ignore[assignment]  # typed bytes; join takes views
            count += 1
        strings[name] = b"%d" % count


class JSONValue(LargeBytes):
    """Any JSON-serialisable value, carried as ``LargeBytes`` of UTF-8 JSON."""

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        super().fromBox(name, strings, objects, proto)
        key = str(name, "ascii")
        objects[key] = json.loads(objects[key])

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any], proto: Any) -> None:
        key = str(name, "ascii")
        encoded = dict(objects)
        encoded[key] = json.dumps(objects[key], separators=(",", ":")).encode("utf-8")
        super().toBox(name, strings, encoded, proto)


def fileinfo_to_json(info: FileInfo) -> dict[str, Any]:
    """Encode a ``FileInfo`` as a JSON object (pure)."""
    return {"path": info.path, "size": info.size, "mod_time": info.mod_time, "is_dir": info.is_dir}


def fileinfo_from_json(obj: dict[str, Any]) -> FileInfo:
    """Decode ``fileinfo_to_json``'s output (pure)."""
    return FileInfo(
        path=str(obj["path"]), size=int(obj["size"]), mod_time=float(obj["mod_time"]), is_dir=bool(obj["is_dir"])
    )


# --- errors -----------------------------------------------------------------


class StorageFault(Exception):
    """The one AMP error of every command; its text is an encoded StorageError."""


def error_to_json(exc: BaseException, default_driver: str) -> str:
    """Encode ``exc`` (typed or not) as the JSON text of a ``StorageFault``."""
    if isinstance(exc, PathNotFoundError):
        obj: dict[str, Any] = {"kind": "path_not_found", "path": exc.path}
    elif isinstance(exc, InvalidPathError):
        obj = {"kind": "invalid_path", "path": exc.path, "reason": exc.reason}
    elif isinstance(exc, InvalidOffsetError):
        obj = {"kind": "invalid_offset", "path": exc.path, "offset": exc.offset}
    elif isinstance(exc, DriverError):
        obj = {"kind": "driver", "detail": exc.detail}
    else:
        obj = {"kind": "driver", "detail": f"{type(exc).__name__}: {exc}"}
    driver = exc.driver if isinstance(exc, StorageError) and exc.driver else default_driver
    obj["driver"] = driver
    return json.dumps(obj)


def error_from_json(text: str, default_driver: str) -> StorageError:
    """Rebuild the typed ``StorageError`` that ``error_to_json`` encoded.

    Text that is not such an encoding becomes a ``DriverError`` quoting it.
    """
    try:
        obj = json.loads(text)
        kind = obj["kind"]
        driver = str(obj.get("driver") or default_driver)
        if kind == "path_not_found":
            return PathNotFoundError(str(obj["path"]), driver)
        if kind == "invalid_path":
            return InvalidPathError(str(obj["path"]), driver, str(obj.get("reason", "")))
        if kind == "invalid_offset":
            return InvalidOffsetError(str(obj["path"]), int(obj["offset"]), driver)
        if kind == "driver":
            return DriverError(driver, str(obj["detail"]))
    except (ValueError, KeyError, TypeError):
        pass
    return DriverError(default_driver, f"undecodable error from driver process: {text!r}")


# --- commands ---------------------------------------------------------------

_ERRORS: dict[type[Exception], bytes] = {StorageFault: b"STORAGE"}


class _Command(amp.Command):
    errors = _ERRORS


class Hello(_Command):
    """Version handshake. Answered before ``Configure``."""

    arguments = [(b"major", amp.Integer()), (b"minor", amp.Integer())]
    response = [
        (b"major", amp.Integer()),
        (b"minor", amp.Integer()),
        (b"driver", amp.Unicode()),
        (b"pid", amp.Integer()),
    ]


class Configure(_Command):
    """Build the driver from JSON parameters; answers with its name."""

    arguments = [(b"params", JSONValue())]
    response = [(b"driver", amp.Unicode())]


class GetContent(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"data", LargeBytes())]


class PutContent(_Command):
    arguments = [(b"path", amp.Unicode()), (b"data", LargeBytes())]
    response = []


class PutScratch(_Command):
    """``put_content(path, data, durable=False)``."""

    arguments = [(b"path", amp.Unicode()), (b"data", LargeBytes())]
    response = []


class OpenReader(_Command):
    arguments = [(b"path", amp.Unicode()), (b"offset", amp.Integer())]
    response = [(b"handle", amp.Integer())]


class OpenWriter(_Command):
    arguments = [(b"path", amp.Unicode()), (b"append", amp.Boolean())]
    response = [(b"handle", amp.Integer()), (b"size", amp.Integer())]


class Read(_Command):
    """Up to ``max_bytes`` (capped at ``STREAM_BYTES``) from a reader; b"" at EOF."""

    arguments = [(b"handle", amp.Integer()), (b"max_bytes", amp.Integer())]
    response = [(b"data", LargeBytes())]


class Write(_Command):
    """Append ``data`` (at most ``STREAM_BYTES``) to a writer; answered once written."""

    arguments = [(b"handle", amp.Integer()), (b"data", LargeBytes())]
    response = []


class CloseHandle(_Command):
    """Close a reader, or close a writer keeping its bytes for an append."""

    arguments = [(b"handle", amp.Integer())]
    response = []


class Commit(_Command):
    arguments = [(b"handle", amp.Integer())]
    response = []


class Cancel(_Command):
    arguments = [(b"handle", amp.Integer())]
    response = []


class Stat(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"info", JSONValue())]


class List(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"paths", JSONValue())]


class Move(_Command):
    arguments = [(b"source", amp.Unicode()), (b"dest", amp.Unicode())]
    response = []


class Delete(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = []


class Walk(_Command):
    arguments = [(b"path", amp.Unicode())]
    response = [(b"infos", JSONValue())]


class RedirectURL(_Command):
    arguments = [(b"path", amp.Unicode()), (b"method", amp.Unicode())]
    response = [(b"url", amp.Unicode(optional=True))]
