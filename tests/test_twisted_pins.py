"""Twisted internals the registry relies on, pinned: each test fails loudly
if a Twisted upgrade changes what the code reaches for, instead of the code
silently losing what it gets from it.

The other pins live beside their modules: the request line
(``RegistryChannel.request_line``: ``tests/test_http_channel.py``) and the
out-of-process pipes (``registry.storage.remote.fastpipe``:
``tests/storage/test_remote_fastpipe.py``).
"""

from __future__ import annotations

import inspect
import signal
import socket
from typing import Any

import pytest_twisted
from twisted.application import app
from twisted.internet import reactor
from twisted.internet.interfaces import _ISupportsExitSignalCapturing
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from registry.http import RegistryRequest, RegistrySite
from registry.workers import ACCEPTS_PER_WAKEUP, AdoptedEndpoint, _stopped_cleanly
from tests.test_http_channel import RecordingRoot


# --- registry.workers: one accept per wake-up (``numberAccepts``) ------------------


class _Counting(Factory):
    def __init__(self) -> None:
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        p = Protocol()
        self.built.append(p)
        return p


async def _accepted_per_read(adopt: bool) -> list[int]:
    """Queue three connections on a listening socket, then let the port
    read three times: how many connections each read accepted."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.setblocking(False)
    factory = _Counting()
    if adopt:
        port: Any = await AdoptedEndpoint(reactor, listener.fileno()).listen(factory)
    else:
        port = reactor.adoptStreamPort(listener.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    clients = [socket.create_connection(listener.getsockname()) for _ in range(3)]
    counts = []
    try:
        # No await in between: the reactor does not read the port itself.
        for _ in range(3):
            before = len(factory.built)
            port.doRead()
            counts.append(len(factory.built) - before)
    finally:
        for p in factory.built:
            assert p.transport is not None
            p.transport.abortConnection()  # type: ignore[attr-defined]
        for c in clients:
            c.close()
        await port.stopListening()
        listener.close()
    return counts


@pytest_twisted.ensureDeferred
async def test_an_adopted_port_accepts_one_connection_per_wakeup() -> None:
    # Twisted's port takes every queued connection in one read, up to its
    # numberAccepts; the workers' port is held to ACCEPTS_PER_WAKEUP, so
    # that the next connection goes to another worker.
    assert await _accepted_per_read(adopt=False) == [3, 0, 0]
    assert ACCEPTS_PER_WAKEUP == 1
    assert await _accepted_per_read(adopt=True) == [1, 1, 1], (
        "twisted.internet.tcp.Port no longer reads numberAccepts: registry.workers._one_accept_per_wakeup "
        "must be adapted"
    )


# --- registry.workers: exit status 0 after a handled SIGTERM (``_exitSignal``) -----


def test_a_handled_sigterm_clears_the_signal_twistd_would_re_raise() -> None:
    from twisted.internet.selectreactor import SelectReactor

    other = SelectReactor()
    try:
        # The reactor keeps the signal that stopped it in _exitSignal ...
        assert _ISupportsExitSignalCapturing.providedBy(other)
        other.sigTerm(signal.SIGTERM)
        assert other._exitSignal == signal.SIGTERM
        # ... which twistd reads after the reactor stops, to kill itself with it.
        assert "reactor._exitSignal" in inspect.getsource(app.ApplicationRunner.startReactor)
        _stopped_cleanly(other)
        assert other._exitSignal is None
        # Any other signal is left for twistd.
        other.sigInt(signal.SIGINT)
        _stopped_cleanly(other)
        assert other._exitSignal == signal.SIGINT
    finally:
        other.removeReader(other.waker)
        other.waker.connectionLost(None)  # type: ignore[arg-type]


# --- registry.http: Request._disconnected --------------------------------------------


def test_a_request_knows_its_client_went_away() -> None:
    # RegistryRequest.gone (and the web page's check) read Twisted's private
    # Request._disconnected, set when the connection is lost.
    channel = RegistrySite(RecordingRoot()).buildProtocol(None)
    assert channel is not None
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
    request = channel.requests[-1]  # type: ignore[attr-defined]
    assert isinstance(request, RegistryRequest)
    assert request._disconnected is False and not request.gone
    channel.connectionLost(Exception("gone"))
    assert request._disconnected is True and request.gone


# --- registry.tap: where twistd would have logged ---------------------------------


def _twistd_destination(parent: dict[str, Any], stdout: Any) -> tuple[Any, bool]:
    """Where twistd's own observer writes for ``parent`` (its options):
    ``stdout``, the path of a log file, or ``None`` for syslog; and whether
    it made SIGUSR1 rotate the log."""
    import os
    import sys

    from twisted.scripts._twistd_unix import UnixAppLogger

    if parent.get("syslog"):
        return None, False
    saved_stdout, saved_usr1 = sys.stdout, signal.getsignal(signal.SIGUSR1)
    sys.stdout = stdout
    try:
        observer = UnixAppLogger(parent)._getLogObserver()
        rotates = signal.getsignal(signal.SIGUSR1) != saved_usr1
    finally:
        sys.stdout = saved_stdout
        signal.signal(signal.SIGUSR1, saved_usr1)
    observer({"log_format": "probe", "log_time": 0, "log_level": None, "log_namespace": "pin"})
    if "probe" in stdout.getvalue():
        return stdout, rotates
    path = os.path.abspath(parent.get("logfile") or "twistd.log")
    with open(path) as f:
        assert "probe" in f.read(), path
    return path, rotates


def test_the_tap_logs_where_twistd_would(tmp_path: Any, monkeypatch: Any) -> None:
    # registry.tap._log_output keeps twistd's rules for the log destination
    # (it writes its own formats there, so it needs the stream, which twistd
    # only builds inside its text observer); this compares them case by case.
    import io
    import types

    from twisted.python.logfile import LogFile

    from registry.tap import _log_output

    monkeypatch.chdir(tmp_path)
    cases = [
        {"nodaemon": True, "logfile": None},
        {"nodaemon": True, "logfile": "-"},
        {"nodaemon": True, "logfile": str(tmp_path / "given.log")},
        {"nodaemon": False, "logfile": None},
        {"nodaemon": False, "logfile": str(tmp_path / "daemon.log")},
        {"nodaemon": True, "logfile": None, "syslog": True},
    ]
    saved_usr1 = signal.getsignal(signal.SIGUSR1)
    try:
        for parent in cases:
            stdout = io.StringIO()
            monkeypatch.setattr("sys.stdout", stdout)
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            ours = _log_output(types.SimpleNamespace(parent=parent))  # type: ignore[arg-type]
            ours_rotate = bool(signal.getsignal(signal.SIGUSR1))
            monkeypatch.undo()
            monkeypatch.chdir(tmp_path)
            signal.signal(signal.SIGUSR1, signal.SIG_DFL)
            theirs, theirs_rotate = _twistd_destination(parent, stdout)
            # Where a log file is written, SIGUSR1 rotates it (its default
            # action would end the process).
            assert ours_rotate == theirs_rotate, parent
            if theirs is None or theirs is stdout:
                assert ours is theirs, parent
            else:
                assert isinstance(ours, LogFile), parent
                assert ours.path == theirs, parent
                ours.close()
    finally:
        signal.signal(signal.SIGUSR1, saved_usr1)


@pytest_twisted.ensureDeferred
async def test_sigusr1_rotates_the_tap_log_file(tmp_path: Any) -> None:
    import os
    import types

    from twisted.internet.task import deferLater

    from registry.tap import _log_output

    path = tmp_path / "registry.log"
    saved_usr1 = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        log_file: Any = _log_output(types.SimpleNamespace(parent={"nodaemon": False, "logfile": str(path)}))  # type: ignore[arg-type]
        log_file.write("before\n")
        log_file.flush()
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(200):
            if (tmp_path / "registry.log.1").exists():
                break
            await deferLater(reactor, 0.01, lambda: None)
        assert (tmp_path / "registry.log.1").read_text() == "before\n"
        log_file.write("after\n")
        log_file.flush()
        assert path.read_text() == "after\n"
        log_file.close()
    finally:
        signal.signal(signal.SIGUSR1, saved_usr1)
