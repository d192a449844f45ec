"""Measured speed-ups of the out-of-process pipes, kept in one place.

Both rely on Twisted internals; ``tests/storage/test_remote_fastpipe.py``
pins what they rely on, so a Twisted upgrade that changes it fails there
instead of corrupting streams. End to end, ``scripts/bench_outofprocess.py``
(256 MiB, filesystem child) shows the effects named below (no figures of it
were recorded). Each mechanism alone, ``scripts/bench_fastpipe.py`` (one
run, interleaved, three rounds, CPU seconds; 2026-11-29, a 2-core machine
at load 15): the tuned pipe read costs 0.15-0.29x the CPU of Twisted's
reader for 256 MiB, and ``FrameParsingAMP`` parses 2000 boxes of 60 KiB in
0.21-0.25x the CPU of ``amp.AMP``'s parser.

* ``tune_pipe_reader``: read 1 MiB per wakeup from a pipe instead of
  Twisted's 8 KiB (and ask for a 1 MiB pipe buffer). Without it both
  processes spend about twice the CPU per byte and streams run at half the
  speed. ``tune_child_pipes`` (the parent's side: the process transport's
  ``pipes``) and ``tune_stdio`` (the child's side: ``StandardIO``'s
  private ``_reader``) are the only places that find those readers.
* ``FrameParsingAMP``: AMP's box parser without the second copy of every
  byte. Saves about 15% of the CPU per byte on the receiving side.
"""

from __future__ import annotations

import errno
import fcntl
import os
from typing import Any

from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.protocols import amp

# --- pipes ------------------------------------------------------------------

#: Bytes read from a pipe per wakeup (Twisted's default is 8 KiB, which costs
#: a syscall and a buffer copy per 8 KiB of a 60 KiB frame).
PIPE_READ_BYTES = 1 << 20
#: Pipe capacity asked for with F_SETPIPE_SZ (Linux; 64 KiB by default).
PIPE_CAPACITY = 1 << 20


def enlarge_pipe(fd: int) -> None:
    """Ask the kernel for a ``PIPE_CAPACITY`` pipe buffer; ignore refusal."""
    setsz = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setsz is None:
        return
    try:
        fcntl.fcntl(fd, setsz, PIPE_CAPACITY)
    except OSError:
        pass


def tune_pipe_reader(reader: Any) -> None:
    """Make a ``twisted.internet.process.ProcessReader`` read
    ``PIPE_READ_BYTES`` per wakeup, and enlarge its pipe."""
    fd = reader.fileno()
    enlarge_pipe(fd)

    def doRead() -> Any:
        try:
            data = os.read(fd, PIPE_READ_BYTES)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        reader.dataReceived(data)
        return None

    reader.doRead = doRead


def tune_child_pipes(transport: Any) -> bool:
    """The parent's side: tune the reader of a child's stdout (fd 1) and
    enlarge its stdin pipe (fd 0). Twisted's POSIX process transport keeps
    them in ``pipes`` (child fd -> reader or writer), which ``IProcessTransport``
    does not declare. Returns False (nothing tuned) where there is no such
    attribute."""
    pipes = getattr(transport, "pipes", None)
    if not isinstance(pipes, dict):
        return False
    if 1 in pipes:
        tune_pipe_reader(pipes[1])
    if 0 in pipes:
        enlarge_pipe(pipes[0].fileno())
    return True


def tune_stdio(stdio: Any) -> bool:
    """The child's side: tune the reader of ``StandardIO``'s stdin, which
    Twisted keeps in the private ``_reader`` (a ``ProcessReader``). Returns
    False (nothing tuned) where there is no such reader."""
    reader = getattr(stdio, "_reader", None)
    if reader is None or not callable(getattr(reader, "fileno", None)):
        return False
    tune_pipe_reader(reader)
    return True


# --- box parsing -------------------------------------------------------------


class FrameParsingAMP(amp.AMP):
    """``amp.AMP`` with a box parser that copies each key and value once.

    ``Int16StringReceiver.dataReceived`` concatenates every incoming chunk
    to the unparsed rest and then slices each string out of the result: two
    copies of every byte. This parser slices strings straight out of the
    chunk and only carries the one string split across two chunks. Boxes,
    states and limits are AMP's own (``stringReceived``/``MAX_LENGTH``).
    """

    _carry: bytearray | None = None

    def dataReceived(self, data: bytes) -> None:
        if self.innerProtocol is not None or self._locked:
            super().dataReceived(data)
            return
        n = len(data)
        pos = 0
        carry = self._carry
        if carry:
            # Finish the string that the previous chunk left incomplete.
            if len(carry) < 2:
                take = min(2 - len(carry), n)
                carry += data[:take]
                pos = take
                if len(carry) < 2:
                    return
            length = (carry[0] << 8) | carry[1]
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            need = 2 + length - len(carry)
            if n - pos < need:
                carry += data[pos:]
                return
            carry += data[pos : pos + need]
            pos += need
            self._carry = None
            self.stringReceived(bytes(carry[2:]))
        while n - pos >= 2:
            length = (data[pos] << 8) | data[pos + 1]
            if length > self.MAX_LENGTH:
                self.lengthLimitExceeded(length)
                return
            start = pos + 2
            stop = start + length
            if stop > n:
                break
            pos = stop
            self.stringReceived(data[start:stop])
        if pos < n:
            self._carry = bytearray(data[pos:])
