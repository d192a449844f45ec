"""Out-of-process storage drivers: a driver served by a child process over AMP.

``OutOfProcessDriver`` implements ``IStorageDriver`` by forwarding every call
to a child process running ``registry-storage-<name>``. The parts live in
``registry.storage.remote``:

* ``wire``: the AMP commands, versions and the encoding of values and errors;
* ``supervisor``: spawning, handshake, restarts and stopping of the child
  (calls in flight when the child dies fail with ``DriverError`` naming the
  driver and how the child ended; readers and writers of the dead child fail
  the same way from then on; new calls get a fresh child);
* ``server``: the child side (``registry-storage-filesystem`` and
  ``registry-storage-inmemory`` console scripts);
* ``fastpipe``: the measured pipe and parser speed-ups.

Streams move in pieces of ``STREAM_BYTES`` (480 KiB, eight AMP values)
through the shared helpers of ``registry.storage.streams``: a reader is a
``ReadAhead`` over ``Read`` commands holding at most ``READ_AHEAD`` pieces
(prefetched or buffered); a writer is a ``GatheringWriter`` over ``Write``
commands whose ``write`` fires once no more than ``WRITE_WINDOW`` bytes are
unacknowledged by the child. Write errors of pipelined pieces surface on the
next ``write``, ``close`` or ``commit``; ``commit`` waits for every
acknowledgement and cancels instead of committing if any write failed.

``close()`` (part of the driver contract) stops the child; the application
calls it when it stops (``registry.storage.wrapper.DriverService``).

Factory hooks
-------------
``find_executable(name)`` locates ``registry-storage-<name>`` next to
``sys.executable`` (the venv's bin) or on ``PATH``. ``registry.storage.factory``
calls ``create(executable, name, params, reactor)`` for driver names it does
not know in-process but finds that way (``params`` go to the child as they
are), and ``create_explicit(params, reactor)`` for the name ``outofprocess``:
``{"executable": <path or driver name>, "params": {...}, "name": <label>}``.
This module does not import the factory.

Performance (see ``scripts/bench_outofprocess.py``): every byte crosses two
pipes' worth of Python; each side spends roughly 1.5-2.5 ms of CPU per MiB
(AMP framing, copies, syscalls), so streams run at a few hundred MB/s rather
than the in-process driver's page-cache speed.
"""

from __future__ import annotations

import builtins
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from twisted.internet.defer import Deferred, succeed
from twisted.protocols import amp
from zope.interface import implementer

from registry.storage.driver import FileInfo, IFileReader, IFileWriter, IStorageDriver
from registry.storage.remote import wire
from registry.storage.remote.supervisor import HANDSHAKE_TIMEOUT, ChildProtocol, ChildSupervisor
from registry.storage.streams import GatheringWriter, IPieceSink, IPieceSource, ReadAhead

#: Pieces a reader keeps in flight or buffered ahead of the caller.
READ_AHEAD = 8
#: Unacknowledged bytes after which a writer's ``write`` waits.
WRITE_WINDOW = 8 * wire.STREAM_BYTES

EXECUTABLE_PREFIX = "registry-storage-"


# --- locating executables ----------------------------------------------------


def find_executable(name: str) -> str | None:
    """Return the path of ``registry-storage-<name>``, or ``None``.

    Looks next to ``sys.executable`` first (a venv's ``bin``, where console
    scripts land even when the venv is not on ``PATH``), then on ``PATH``.
    """
    exe = EXECUTABLE_PREFIX + name
    beside = Path(sys.executable).parent / exe
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which(exe)


def create_outofprocess_driver(
    name: str, params: dict[str, Any], reactor: Any = None
) -> "OutOfProcessDriver | None":
    """Build the out-of-process driver for factory name ``name``.

    ``name == "outofprocess"``: ``params`` must hold ``executable`` (a path,
    or a driver name looked up with ``find_executable``) and may hold
    ``params`` (a dict sent to the child) and ``name`` (the driver name used
    in errors; default: derived from the executable). Otherwise returns
    ``None`` when no ``registry-storage-<name>`` exists, else a driver whose
    child gets ``params`` unchanged. Raises ``ValueError`` naming the
    parameter when ``params`` are malformed.
    """
    if name != "outofprocess":
        exe = find_executable(name)
        if exe is None:
            return None
        return OutOfProcessDriver(exe, params, name=name, reactor=reactor)
    unknown = set(params) - {"executable", "params", "name"}
    if unknown:
        raise ValueError(f"storage.outofprocess.{sorted(unknown)[0]}: unknown parameter")
    executable = params.get("executable")
    if not isinstance(executable, str) or not executable:
        raise ValueError("storage.outofprocess.executable: must be a non-empty string")
    child_params = params.get("params", {})
    if not isinstance(child_params, dict):
        raise ValueError("storage.outofprocess.params: must be a mapping")
    if os.sep not in executable:
        found = find_executable(executable) if not executable.startswith(EXECUTABLE_PREFIX) else shutil.which(executable)
        if found is None:
            raise ValueError(f"storage.outofprocess.executable: no {EXECUTABLE_PREFIX}{executable} found")
        executable = found
    elif not os.access(executable, os.X_OK):
        raise ValueError(f"storage.outofprocess.executable: {executable} is not an executable file")
    label = params.get("name")
    if label is None:
        base = os.path.basename(executable)
        label = base[len(EXECUTABLE_PREFIX) :] if base.startswith(EXECUTABLE_PREFIX) else base
    return OutOfProcessDriver(executable, child_params, name=str(label), reactor=reactor)


def create(executable: str, name: str, params: Any, reactor: Any = None) -> "OutOfProcessDriver":
    """The hook ``registry.storage.factory`` calls for a driver ``name`` it
    found as the executable ``executable``: a driver whose child gets
    ``params`` unchanged (they must be JSON-serialisable)."""
    return OutOfProcessDriver(executable, dict(params), name=name, reactor=reactor)


def create_explicit(params: Any, reactor: Any = None) -> "OutOfProcessDriver":
    """``DriverFactory`` of the factory name ``outofprocess`` (params:
    ``executable``, optional ``params`` and ``name``); raises ``ValueError``
    naming the parameter."""
    driver = create_outofprocess_driver("outofprocess", dict(params), reactor)
    assert driver is not None
    return driver


# --- readers and writers ------------------------------------------------------


@implementer(IPieceSource)
class _RemotePieces:
    """``Read`` commands on a reader handle in the child (sequential)."""

    def __init__(self, supervisor: ChildSupervisor, child: ChildProtocol, handle: int) -> None:
        self._supervisor = supervisor
        self._child = child
        self._handle = handle

    def fetch(self, offset: int, size: int) -> Deferred[bytes]:
        d = self._supervisor.call(self._child, wire.Read, handle=self._handle, max_bytes=size)
        return d.addCallback(lambda response: response["data"])

    def close(self) -> Deferred[None]:
        if self._child.ended is not None:
            return succeed(None)  # the child's death released the handle
        d = self._supervisor.call(self._child, wire.CloseHandle, handle=self._handle)
        return d.addCallback(lambda _: None)


def open_reader(supervisor: ChildSupervisor, child: ChildProtocol, handle: int) -> IFileReader:
    """A reader over ``handle``: ``READ_AHEAD`` pieces of ``STREAM_BYTES``."""
    source = _RemotePieces(supervisor, child, handle)
    return ReadAhead(source, wire.STREAM_BYTES, depth=READ_AHEAD, positional=False)


@implementer(IPieceSink)
class _RemoteSink:
    """``Write`` commands on a writer handle in the child. The child runs
    commands on one handle in order; every piece is framed synchronously
    inside ``callRemote`` (so the views it is given need not outlive it)."""

    def __init__(self, supervisor: ChildSupervisor, child: ChildProtocol, handle: int) -> None:
        self._supervisor = supervisor
        self._child = child
        self._handle = handle

    def send(self, piece: Any) -> Deferred[None]:
        data = piece[0] if len(piece) == 1 else b"".join(piece)
        d = self._supervisor.call(self._child, wire.Write, handle=self._handle, data=data)
        return d.addCallback(lambda _: None)

    def _finish(self, command: type[amp.Command], keep_on_death: bool) -> Deferred[None]:
        if keep_on_death and self._child.ended is not None:
            return succeed(None)  # the child's death released the handle
        d = self._supervisor.call(self._child, command, handle=self._handle)
        return d.addCallback(lambda _: None)

    def close(self) -> Deferred[None]:
        return self._finish(wire.CloseHandle, True)

    def commit(self) -> Deferred[None]:
        return self._finish(wire.Commit, False)

    def cancel(self) -> Deferred[None]:
        return self._finish(wire.Cancel, True)

    # A failed write must never be followed by committing what the child has.
    abort = cancel


def open_writer(supervisor: ChildSupervisor, child: ChildProtocol, handle: int, size: int) -> IFileWriter:
    """A writer over ``handle``: ``STREAM_BYTES`` pieces, ``WRITE_WINDOW`` unacknowledged."""
    sink = _RemoteSink(supervisor, child, handle)
    return GatheringWriter(sink, wire.STREAM_BYTES, window_bytes=WRITE_WINDOW, size=size)


# --- the driver ---------------------------------------------------------------


@implementer(IStorageDriver)
class OutOfProcessDriver:
    """``IStorageDriver`` served by a ``registry-storage-<name>`` child process.

    ``executable`` is run with ``args``, in ``env`` (default: this process's
    environment); ``params`` (JSON-serialisable) go to the child's driver in
    the ``Configure`` command; ``name`` names the driver in errors (default:
    the executable's name without ``registry-storage-``). The child is run by
    a ``ChildSupervisor`` (see ``registry.storage.remote.supervisor``).
    """

    def __init__(
        self,
        executable: str,
        params: dict[str, Any],
        name: str | None = None,
        reactor: Any = None,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.executable = executable
        self.params = dict(params)
        json.dumps(self.params)  # fail early on parameters that cannot cross the wire
        base = os.path.basename(executable)
        self.name: str = name or (base[len(EXECUTABLE_PREFIX) :] if base.startswith(EXECUTABLE_PREFIX) else base)
        self._supervisor = ChildSupervisor(
            executable, self.params, self.name, reactor, args=args, env=env, handshake_timeout=handshake_timeout
        )

    @property
    def child_pid(self) -> int | None:
        """The pid of the running child, or None."""
        return self._supervisor.child_pid

    @property
    def child_version(self) -> tuple[int, int] | None:
        """Protocol version of the running child, once the handshake is done."""
        return self._supervisor.child_version

    @property
    def restarts(self) -> int:
        """How often the child died and was restarted."""
        return self._supervisor.restarts

    def close(self) -> Deferred[None]:
        """Stop the child (see ``ChildSupervisor.close``); later calls fail
        with ``DriverError``."""
        return self._supervisor.close()

    def _call(self, command: type[amp.Command], **kwargs: Any) -> Deferred[tuple[ChildProtocol, dict[str, Any]]]:
        def call(child: ChildProtocol) -> Deferred[tuple[ChildProtocol, dict[str, Any]]]:
            return self._supervisor.call(child, command, **kwargs).addCallback(lambda r: (child, r))

        return self._supervisor.get_child().addCallback(call)

    def get_content(self, path: str) -> Deferred[bytes]:
        """Fire with the whole object; ``PathNotFoundError``, ``DriverError``."""
        return self._call(wire.GetContent, path=path).addCallback(lambda cr: cr[1]["data"])

    def put_content(self, path: str, data: bytes, durable: bool = True) -> Deferred[None]:
        """Store ``data`` atomically (one command, however large); a scratch
        put (``durable=False``) stays one in the child's driver."""
        command = wire.PutContent if durable else wire.PutScratch
        d = self._call(command, path=path, data=bytes(data))
        return d.addCallback(lambda _: None)

    def reader(self, path: str, offset: int = 0) -> Deferred[IFileReader]:
        """Fire with a read-ahead reader over a handle in the child."""
        d = self._call(wire.OpenReader, path=path, offset=offset)
        return d.addCallback(lambda cr: open_reader(self._supervisor, cr[0], int(cr[1]["handle"])))

    def writer(self, path: str, append: bool = False) -> Deferred[IFileWriter]:
        """Fire with a gathering, windowed writer over a handle in the child."""
        d = self._call(wire.OpenWriter, path=path, append=bool(append))
        return d.addCallback(lambda cr: open_writer(self._supervisor, cr[0], int(cr[1]["handle"]), int(cr[1]["size"])))

    def stat(self, path: str) -> Deferred[FileInfo]:
        """Fire with the ``FileInfo`` the child reports."""
        return self._call(wire.Stat, path=path).addCallback(lambda cr: wire.fileinfo_from_json(cr[1]["info"]))

    def list(self, path: str) -> Deferred[list[str]]:
        """Fire with the sorted child paths of directory ``path``."""
        return self._call(wire.List, path=path).addCallback(lambda cr: [str(p) for p in cr[1]["paths"]])

    def move(self, source: str, dest: str) -> Deferred[None]:
        """Move ``source`` to ``dest`` in the child."""
        return self._call(wire.Move, source=source, dest=dest).addCallback(lambda _: None)

    def delete(self, path: str) -> Deferred[None]:
        """Delete an object or tree in the child."""
        return self._call(wire.Delete, path=path).addCallback(lambda _: None)

    def walk(self, path: str) -> Deferred[builtins.list[FileInfo]]:
        """Fire with every ``FileInfo`` below ``path``."""
        return self._call(wire.Walk, path=path).addCallback(lambda cr: [wire.fileinfo_from_json(o) for o in cr[1]["infos"]])

    def redirect_url(self, path: str, method: str = "GET") -> Deferred[str | None]:
        """Fire with the child driver's redirect URL, or None."""
        return self._call(wire.RedirectURL, path=path, method=method).addCallback(lambda cr: cr[1]["url"])
