"""Request ids: one per request, so a push can be followed from the client
through the access log to the webhook that hears about it.

An incoming ``X-Request-Id`` is kept when it is well formed (1 to 128
characters from a conservative set: letters, digits and ``-._:+=/``; what
proxies and load balancers put there, never anything that could break a log
line or a header); otherwise the registry makes one (a UUID4, as
Distribution does).  The id goes back in the response's ``X-Request-Id``.
"""

from __future__ import annotations

import re
import uuid

__all__ = ["REQUEST_ID_HEADER", "choose_request_id", "new_request_id"]

REQUEST_ID_HEADER = b"X-Request-Id"

_WELL_FORMED = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}$")


def new_request_id() -> str:
    """A fresh request id."""
    return str(uuid.uuid4())


def choose_request_id(incoming: bytes | None) -> str:
    """The client's id when well formed, else a new one."""
    if incoming is not None:
        incoming = incoming.strip()
        if _WELL_FORMED.match(incoming):
            return incoming.decode("ascii")
    return new_request_id()
