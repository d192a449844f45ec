"""Request ids: one per request, so a push can be followed from the client
through the access log to the webhook that hears about it.

An incoming ``X-Request-Id`` is kept when it is well formed (1 to 128
characters from a conservative set: letters, digits and ``-._:+=/``; what
proxies and load balancers put there, never anything that could break a log
line or a header); otherwise the registry makes one, shaped like a UUID4
(as Distribution's are).  The id goes back in the response's
``X-Request-Id``.

Made ids cost no syscall: each process draws 60 random bits once (again in
a forked child) for the first half and counts in the second half (from a
random start), so ids are unique across requests, worker processes and
restarts without reading ``os.urandom`` per request.
"""

from __future__ import annotations

import itertools
import os
import re

__all__ = ["REQUEST_ID_HEADER", "choose_request_id", "new_request_id"]

REQUEST_ID_HEADER = b"X-Request-Id"

_WELL_FORMED = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}$")

_MASK60 = (1 << 60) - 1
_VARIANT = 0x8 << 60  # RFC 4122 variant bits, top of the second half
_prefix = ""
_counter: itertools.count[int] = itertools.count()


def _reseed() -> None:
    """Draw this process's random half and counter start."""
    global _prefix, _counter
    raw = int.from_bytes(os.urandom(16), "big")
    first = (raw >> 64) & ~(0xF << 12) | (0x4 << 12)  # version 4 nibble
    h = f"{first:016x}"
    _prefix = f"{h[:8]}-{h[8:12]}-{h[12:16]}-"
    _counter = itertools.count(raw & _MASK60)


_reseed()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed)


def new_request_id() -> str:
    """A fresh request id (UUID4-shaped, unique per process and request)."""
    h = f"{_VARIANT | (next(_counter) & _MASK60):016x}"
    return f"{_prefix}{h[:4]}-{h[4:]}"


def choose_request_id(incoming: bytes | None) -> str:
    """The client's id when well formed, else a new one."""
    if incoming is not None:
        incoming = incoming.strip()
        if _WELL_FORMED.match(incoming):
            return incoming.decode("ascii")
    return new_request_id()
